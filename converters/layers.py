"""Find the target layer in a TensorFlow GraphDef: the last conv activation before the scores.

"Last" means the largest longest-path depth from the inputs, so a side branch (Inception's
auxiliary head) never wins over the feature map that every path to the scores goes through.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from onnx_gradcam.errors import OnnxGradCamError

ACTIVATION_OPS = frozenset(
    {"Relu", "Relu6", "Elu", "Selu", "LeakyRelu", "Softplus", "Tanh", "Sigmoid", "Gelu", "Mish"}
)
CONV_OPS = frozenset({"Conv2D", "DepthwiseConv2dNative", "Conv2DBackpropInput", "Conv3D"})
FEATURE_OPS = frozenset({"BiasAdd", "FusedBatchNorm", "FusedBatchNormV3", "AddV2", "Add"})


def op_name(tensor: str) -> str:
    """``scope/op:0`` or ``^scope/op`` → ``scope/op``."""
    return tensor.lstrip("^").split(":")[0]


def tensor_name(name: str) -> str:
    """``scope/op`` → ``scope/op:0``; tensor names are returned unchanged."""
    return name if re.search(r":\d+$", name) else f"{name}:0"


@dataclass(frozen=True)
class GraphIndex:
    """Node lookup, op types and longest-path depths of the ancestors of the score tensor."""

    ops: dict[str, str]  # op name -> op type
    inputs: dict[str, list[str]]  # op name -> input op names (data and control)
    depth: dict[str, int]  # ancestors of the score op -> longest path length from a source


def index_graph(graph_def: object, score: str) -> GraphIndex:
    """Index ``graph_def`` (a ``tf.compat.v1.GraphDef``) for the ancestors of ``score``."""
    ops = {n.name: n.op for n in graph_def.node}
    inputs = {n.name: [op_name(i) for i in n.input] for n in graph_def.node}
    target = op_name(score)
    if target not in ops:
        raise OnnxGradCamError(f"score tensor {score!r} is not in the graph")
    depth: dict[str, int] = {}
    # iterative post-order DFS: depth = 1 + max depth of inputs
    stack: list[tuple[str, bool]] = [(target, False)]
    while stack:
        name, expanded = stack.pop()
        if name in depth:
            continue
        if expanded:
            depth[name] = 1 + max((depth[i] for i in inputs.get(name, ()) if i in depth), default=0)
            continue
        stack.append((name, True))
        stack.extend((i, False) for i in inputs.get(name, ()) if i not in depth and i in ops)
    return GraphIndex(ops=ops, inputs=inputs, depth=depth)


def _has_conv_ancestor(index: GraphIndex, name: str) -> bool:
    seen, todo = set(), [name]
    while todo:
        cur = todo.pop()
        if cur in seen:
            continue
        seen.add(cur)
        if index.ops.get(cur) in CONV_OPS:
            return True
        todo.extend(index.inputs.get(cur, ()))
    return False


def _is_feature_map(shape: tuple[int | None, ...] | None) -> bool:
    return shape is not None and len(shape) == 4 and not (shape[1] == 1 and shape[2] == 1)


def _is_activation(index: GraphIndex, name: str) -> bool:
    op = index.ops[name]
    if op in ACTIVATION_OPS:
        return True
    ins = [i for i in index.inputs.get(name, ()) if i in index.ops]
    if op == "Mul":  # swish / SiLU: x * sigmoid(x)
        return any(index.ops[i] == "Sigmoid" for i in ins)
    if op in ("ConcatV2", "Concat"):  # Inception's mixed blocks
        return any(_is_activation(index, i) for i in ins if index.ops[i] != "Const")
    return False


def find_activation(
    graph_def: object, score: str, shapes: dict[str, tuple[int | None, ...] | None]
) -> str:
    """The tensor name of the last conv activation that the score depends on.

    ``shapes`` maps op names to the static shape of their first output (None when unknown).
    """
    index = index_graph(graph_def, score)
    maps = [n for n in index.depth if _is_feature_map(shapes.get(n))]
    chosen = _deepest(index, (n for n in maps if _is_activation(index, n)))
    if chosen is None:  # no activation op: fall back to the last conv (+ bias / norm) output
        chosen = _deepest(index, (n for n in maps if index.ops[n] in CONV_OPS | FEATURE_OPS))
    if chosen is None or not _has_conv_ancestor(index, chosen):
        raise OnnxGradCamError(
            f"no conv layer found before {score!r}: this graph has no 4-D feature map to explain;"
            " pass --layer with a TF tensor name if it has one"
        )
    return tensor_name(chosen)


def _deepest(index: GraphIndex, names: Iterable[str]) -> str | None:
    best = None
    for name in names:
        if best is None or index.depth[name] > index.depth[best]:
            best = name
    return best


def resolve_layer(
    graph_def: object,
    score: str,
    layer: str,
    shapes: dict[str, tuple[int | None, ...] | None],
    aliases: dict[str, str] | None = None,
) -> str:
    """The tensor named by ``--layer``: a TF tensor or op name, an alias (Slim end point), or a
    Keras layer name (the deepest op inside a name scope ``layer`` or ``layer_<n>``)."""
    index = index_graph(graph_def, score)
    if aliases and layer in aliases:
        layer = aliases[layer]
    name = op_name(layer)
    if name not in index.ops:
        scope = re.compile(rf"(^|/){re.escape(layer)}(_\d+)?/")
        in_scope = [n for n in index.depth if scope.search(n)]
        name = _deepest(index, (n for n in in_scope if _is_feature_map(shapes.get(n))))
        name = name or _deepest(index, in_scope)
        if name is None:
            raise OnnxGradCamError(
                f"--layer {layer!r} names no tensor, op or Keras layer that the scores depend on"
            )
        return tensor_name(name)
    if name not in index.depth:
        raise OnnxGradCamError(f"--layer {layer!r}: the score {score!r} does not depend on it")
    shape = shapes.get(name)
    if shape is not None and len(shape) != 4:
        raise OnnxGradCamError(
            f"--layer {layer!r} has shape {list(shape)}: pick a 4-D conv feature map"
        )
    return tensor_name(layer)
