"""A head narrowed to the tokens it reads.

A ViT's head reads one token of its last block (``Gather(x, 0, axis=1)``: the class token),
but the ops between the target layer and that pick — the attention's output projection, the
residual adds, the second LayerNorm, the MLP, the final LayerNorm — work token by token. The
score depends on the other tokens' rows of those ops not at all, yet a backward through the
head as the graph writes it multiplies full (N, T, C) cotangents that are zero outside the
picked rows through every one of them (most of a ViT explanation's extra cost at batch 16).

:func:`narrow_head` copies the head with the pick moved up through the token-wise ops, as far
as every path from them to the score runs through the pick: the copy gathers the picked rows of
the tensors where the token-wise region starts, runs the region on those rows only and goes on
to the score as the head does. The gradient is taken through that copy; the explainer's scores
stay the model's own (the copy differs from the head only by the rounding of the same
arithmetic on fewer rows). Nothing is narrowed unless the graph shows it: one constant pick
on the token axis of a rank-3 tensor, every op above it token-wise by its type, attributes and
operand shapes.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnx_gradcam.autodiff.builder import head_nodes
from onnx_gradcam.graph import GraphInfo, attr

#: element-wise ops of one input: each output row is its input's row
UNARY = frozenset({"Erf", "Gelu", "Relu", "Sigmoid", "Tanh", "Sqrt", "Reciprocal", "Neg",
                   "Identity", "Exp", "Softplus", "HardSigmoid", "HardSwish", "Abs", "Elu",
                   "LeakyRelu", "Dropout"})
#: element-wise ops of two inputs (broadcasting)
BINARY = frozenset({"Add", "Sub", "Mul", "Div", "Pow"})
#: reductions that are token-wise over the last axis only
REDUCE = frozenset({"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin"})


def narrow_head(info: GraphInfo, activation: str, score: str, tag: str
                ) -> tuple[list[onnx.NodeProto], str] | None:
    """(nodes of the narrowed copy, its score) for the head ``activation`` → ``score``, or None
    where the graph gives no token-wise region above one constant token pick."""
    if info.opset < 13:  # the copy's Squeeze takes its axes as an input
        return None
    head = head_nodes(info, activation, score)
    picks = [(i, found) for i in head if (found := _pick(info, info.nodes[i])) is not None]
    if len(picks) != 1:
        return None
    [(pick, (kind, rows))] = picks
    in_head = set(head)
    region: set[int] = set()
    for i in reversed(head[:head.index(pick)]):  # consumers come first, in reverse order
        node = info.nodes[i]
        users = [c for o in node.output if o for c in info.consumers.get(o, []) if c in in_head]
        if (users and all(c in region or c == pick for c in users)
                and all(_rank(info, o) == 3 for o in node.output if o)
                and _tokenwise(info, node)):
            region.add(i)
    producer_in_region = {o for i in region for o in info.nodes[i].output}
    if info.nodes[pick].input[0] not in producer_in_region:
        return None
    nodes: list[onnx.NodeProto] = []
    rename: dict[str, str] = {}
    rows_name = f"ogc_narrow_rows{tag}"
    if kind == "gather":
        nodes.append(helper.make_node("Constant", [], [rows_name], value=rows))

    def narrowed(name: str) -> str:
        """A boundary tensor's picked rows (tensors without a token axis pass as they are)."""
        if name in rename:
            return rename[name]
        shape = info.shapes.get(name)
        if shape is None or len(shape) != 3 or shape[1] == 1:
            return name
        rename[name] = f"{name}{tag}"
        if kind == "gather":
            nodes.append(helper.make_node("Gather", [name, rows_name], [rename[name]], axis=1))
        else:
            node = onnx.NodeProto()
            node.CopyFrom(info.nodes[pick])
            node.input[0], node.output[0] = name, rename[name]
            node.name = f"{node.name}{tag}{len(rename)}"
            nodes.append(node)
        return rename[name]

    for i in head:
        if i not in region and i != pick and not any(x in rename for x in info.nodes[i].input):
            continue  # shared with the head: above the region, or beside it
        node = onnx.NodeProto()
        node.CopyFrom(info.nodes[i])
        node.name = f"{node.name}{tag}" if node.name else ""
        if i == pick:
            source = rename[node.input[0]]
            scalar = kind == "gather" and info.constant(node.input[1]).ndim == 0
            out = f"{node.output[0]}{tag}"
            if scalar:
                axes = f"ogc_narrow_axes{tag}"
                nodes.append(helper.make_node("Constant", [], [axes],
                                              value=numpy_helper.from_array(
                                                  np.array([1], np.int64))))
                nodes.append(helper.make_node("Squeeze", [source, axes], [out],
                                              name=f"ogc_narrow_squeeze{tag}"))
            else:
                nodes.append(helper.make_node("Identity", [source], [out],
                                              name=f"ogc_narrow_pick{tag}"))
            rename[node.output[0]] = out
            continue
        for j, name in enumerate(node.input):
            if name in rename:
                node.input[j] = rename[name]
            elif i in region and name:
                node.input[j] = narrowed(name)
        for j, name in enumerate(node.output):
            if name:
                rename[name] = node.output[j] = f"{name}{tag}"
        nodes.append(node)
    if score not in rename:
        return None
    return nodes, rename[score]


def _pick(info: GraphInfo, node: onnx.NodeProto) -> tuple[str, onnx.TensorProto | None] | None:
    """("gather", rows) or ("slice", None) where ``node`` picks constant tokens (axis 1) of a
    rank-3 tensor; None otherwise."""
    if not node.input or _rank(info, node.input[0]) != 3:
        return None
    if node.op_type == "Gather" and attr(node, "axis", 0) == 1:
        index = info.constant(node.input[1])
        if index is not None and index.ndim <= 1:
            return "gather", numpy_helper.from_array(np.atleast_1d(index).astype(np.int64))
    if node.op_type == "Slice" and len(node.input) >= 4:
        axes = info.constant(node.input[3])
        steps = info.constant(node.input[4]) if len(node.input) > 4 and node.input[4] else None
        starts, ends = info.constant(node.input[1]), info.constant(node.input[2])
        if (axes is not None and [int(a) % 3 for a in axes] == [1] and starts is not None
                and ends is not None and (steps is None or list(steps) == [1])):
            return "slice", None
    return None


def _tokenwise(info: GraphInfo, node: onnx.NodeProto) -> bool:
    """Whether each token's row of ``node``'s output depends on that token's rows alone (its
    other operands: weights, or broadcast over the tokens)."""
    op = node.op_type
    if node.domain not in ("", "ai.onnx"):
        return False
    if op in UNARY:
        return True
    if op in BINARY:
        return all(_rank(info, x) is not None and (_rank(info, x) <= 1 or _rank(info, x) == 3)
                   for x in node.input)
    if op == "LayerNormalization":
        return attr(node, "axis", -1) in (-1, 2) and all(
            _rank(info, x) == 1 for x in node.input[1:] if x)
    if op == "Softmax":
        return info.opset >= 13 and attr(node, "axis", -1) in (-1, 2)
    if op == "MatMul":
        return _rank(info, node.input[1]) == 2
    if op in REDUCE:
        axes = info.axes(node)
        return (axes is not None and [int(a) % 3 for a in axes] == [2]
                and attr(node, "keepdims", 1) == 1)
    return False


def _rank(info: GraphInfo, name: str) -> int | None:
    shape = info.shapes.get(name)
    return None if shape is None else len(shape)
