"""The channel axis of a model's 4-D tensors, decided from what the graph says about them.

Every node that fixes a layout leaves :class:`Evidence` on a tensor: a channels-first op reads
and writes NCHW, a Transpose ``[0, 2, 3, 1]`` turns NCHW into NHWC, a ReduceMean over axes
``[1, 2]`` pools an NHWC tensor, a LayerNormalization or a MatMul with a ``(C, D)`` weight over
the last axis acts on channels-last data, the model's input has its own layout. Nodes that keep
a layout (element-wise ops, keepdims reductions, Concat, an ``If``'s branches, a ``Loop``'s
carried values, unknown ops whose output has the shape of an input) join their tensors into one
group; a channels Transpose joins two groups of opposite layouts. A tensor's layout is what the
evidence of its group says, translated through those Transposes; none or disagreeing evidence
leaves it undecided (:attr:`Verdict.layout` ``None``), and the caller refuses rather than guess.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import onnx

from onnx_gradcam.autodiff.rules.qoperator import QUANTIZED_OPS, float_op_of
from onnx_gradcam.graph import GraphInfo, attr, readable

LAYOUTS = ("NCHW", "NHWC")
#: Ops whose data input and output are NCHW by the ONNX spec.
CHANNELS_FIRST = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "BatchNormalization",
                  "GlobalAveragePool", "GlobalMaxPool", "InstanceNormalization", "LRN", "LpPool",
                  "GlobalLpPool", "MaxUnpool", "DepthToSpace", "SpaceToDepth", "DeformConv",
                  "GroupNormalization", "QLinearConv", "ConvInteger"}
#: Ops whose 4-D inputs and output share one layout (unary, broadcasting, value moves).
SAME_LAYOUT = {"Identity", "Dropout", "Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSwish",
               "HardSigmoid", "Elu", "Selu", "Tanh", "Gelu", "Softplus", "Softsign", "Mish",
               "Erf", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal", "Cast", "Floor", "Ceil",
               "Round", "Sign", "Not", "IsNaN", "Add", "Sub", "Mul", "Div", "Max", "Min", "Sum",
               "Mean", "Where", "Pow", "PRelu", "ThresholdedRelu", "Celu", "Concat", "Pad",
               "Resize", "Upsample", "Slice", "Split", "Tile", "Expand", "QuantizeLinear",
               "DequantizeLinear"}
#: Of those, the ones whose inputs may have fewer dimensions than their output.
BROADCASTING = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Where", "Pow", "PRelu",
                "Expand"}
REDUCTIONS = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL1", "ReduceL2",
              "ReduceLogSumExp", "ReduceProd", "ReduceSumSquare"}
TO_NHWC, TO_NCHW = [0, 2, 3, 1], [0, 3, 1, 2]


def flip(layout: str) -> str:
    return "NHWC" if layout == "NCHW" else "NCHW"


@dataclass(frozen=True)
class Evidence:
    """``tensor`` is in ``layout`` because of ``reason`` (a node and what it does)."""

    tensor: str
    layout: str
    reason: str


@dataclass(frozen=True)
class Verdict:
    """A tensor's layout (``None``: undecided) and the evidence, as seen from that tensor."""

    tensor: str
    layout: str | None
    #: what each piece of evidence implies for this tensor, e.g. ``("NHWC", "ReduceMean axes
    #: [1, 2] at node 'pool'")``; evidence about another tensor of its group names that tensor
    evidence: tuple[tuple[str, str], ...]

    def lines(self) -> list[str]:
        return [f"{layout} by {text}" for layout, text in self.evidence]

    def summary(self, most: int = 2) -> str:
        """One line for ``inspect``: the layout and its first pieces of evidence."""
        if not self.evidence:
            return f"{self.layout or '?'} (no evidence in the graph)"
        shown = "; ".join(self.lines()[:most])
        more = f"; +{len(self.evidence) - most} more" if len(self.evidence) > most else ""
        return f"{self.layout or 'disputed'} ({shown}{more})"

    def refusal(self, source: str, shape: object) -> str:
        """The one-line error for a layer whose layout is undecided."""
        why = (f"the graph disagrees ({'; '.join(self.lines()[:4])})" if self.evidence
               else "nothing in the graph tells")
        return (f"{source}: cannot tell whether layer {self.tensor!r} {shape} is NCHW or NHWC: "
                f"{why}; state it with --layer {self.tensor}:NCHW or --layer {self.tensor}:NHWC "
                "(Python: layer='NAME:NHWC')")


def _walk(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """``graph``'s nodes and, after each node, those of its subgraphs (If branches, Loop body)."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _walk(attribute.g)
            for sub in attribute.graphs:
                yield from _walk(sub)


class Layouts:
    """The layout groups and evidence of every 4-D tensor of ``info``'s model.

    ``input_layout``: the model input's layout with how it is known (``("NHWC", "metadata")``),
    or ``None`` to read it from the input's shape where a channel count of 1 or 3 says it.
    """

    def __init__(self, info: GraphInfo, input_layout: tuple[str, str] | None = None) -> None:
        self.info = info
        self._parent: dict[str, tuple[str, int]] = {}  # tensor → (parent, parity: 1 = flipped)
        self.evidence: list[Evidence] = []
        for node in _walk(info.model.graph):
            self._node(node)
        for name in info.graph_inputs:
            self._input(name, input_layout)

    # ---- union-find with parity ----------------------------------------------------------------
    def _find(self, name: str) -> tuple[str, int]:
        parity = 0
        path = []
        while name in self._parent:
            path.append(name)
            name, step = self._parent[name]
            parity ^= step
        root, total = name, parity
        for item in path:  # path compression: point each straight at the root
            _, step = self._parent[item]
            self._parent[item] = (root, total)
            total ^= step
        return root, parity

    def _join(self, a: str, b: str, flipped: bool = False) -> None:
        (ra, pa), (rb, pb) = self._find(a), self._find(b)
        if ra != rb:
            self._parent[rb] = (ra, pa ^ pb ^ int(flipped))

    # ---- what nodes say ------------------------------------------------------------------------
    def _rank4(self, name: str) -> bool:
        """Whether ``name`` is 4-D (or of unknown rank, as tensors inside subgraphs may be)."""
        shape = self.info.shapes.get(name)
        return bool(name) and (shape is None or len(shape) == 4)

    def _say(self, tensor: str, layout: str, reason: str) -> None:
        if self._rank4(tensor):
            self.evidence.append(Evidence(tensor, layout, reason))

    def _node(self, node: onnx.NodeProto) -> None:
        op, at = node.op_type, f"at node {node.name or node.output[0]!r}"
        ins, outs = list(node.input), [o for o in node.output if o]
        if node.domain == "com.microsoft" and op in QUANTIZED_OPS:
            self._quantized(node, at)
        elif node.domain not in ("", "ai.onnx"):
            self._same_shape(node)
        elif op in CHANNELS_FIRST:
            self._say(ins[0], "NCHW", f"input of {op} {at}")
            self._say(outs[0], "NCHW", f"output of {op} {at}")
        elif op == "Transpose":
            perm = [int(p) for p in attr(node, "perm", [])]
            if perm in (TO_NHWC, TO_NCHW):
                to = "NHWC" if perm == TO_NHWC else "NCHW"
                self._say(ins[0], flip(to), f"input of Transpose perm {perm} {at}")
                self._say(outs[0], to, f"output of Transpose perm {perm} {at}")
                self._join(ins[0], outs[0], flipped=True)
            elif perm == [0, 1, 2, 3]:
                self._join(ins[0], outs[0])
        elif op in SAME_LAYOUT:
            data = ins if op in BROADCASTING or op == "Concat" else ins[:1]  # not pads, sizes…
            for name in [*data, *outs]:
                shape = self.info.shapes.get(name)
                # a broadcast operand of unknown rank may be (C,) or (N, C): leave it out
                if name and (len(shape) == 4 if shape is not None else op not in BROADCASTING):
                    self._join(outs[0], name)
        elif op in REDUCTIONS:
            self._reduction(node, at)
        elif op == "LayerNormalization":
            self._layer_norm(node, at)
        elif op == "MatMul":
            self._matmul(node, at)
        elif op == "Reshape":
            self._reshape(node, at)
        elif op == "If":
            for branch in ("then_branch", "else_branch"):
                graph = attr(node, branch)
                for out, inner in zip(outs, graph.output):
                    self._join(out, inner.name)
        elif op == "Loop":
            body = attr(node, "body")
            carried = len(ins) - 2
            for k in range(carried):
                names = [ins[2 + k], body.input[2 + k].name, body.output[1 + k].name]
                if k < len(outs):
                    names.append(outs[k])
                for name in names[1:]:
                    self._join(names[0], name)
        else:
            self._same_shape(node)

    def _quantized(self, node: onnx.NodeProto, at: str) -> None:
        """ONNX Runtime's QOperator contrib ops say what their float op says."""
        float_op, data = float_op_of(node)
        if float_op in CHANNELS_FIRST and not attr(node, "channels_last", 0):
            self._say(data[0], "NCHW", f"input of {node.op_type} {at}")
            self._say(node.output[0], "NCHW", f"output of {node.op_type} {at}")
        elif float_op in SAME_LAYOUT:
            for name in data:
                shape = self.info.shapes.get(name)
                if shape is not None and len(shape) == 4:
                    self._join(node.output[0], name)

    def _same_shape(self, node: onnx.NodeProto) -> None:
        """An op we know nothing about: an output shaped exactly like a 4-D input is taken to
        keep its layout (custom element-wise ops, fused activations)."""
        for out in node.output:
            shape = self.info.shapes.get(out)
            if shape is None or len(shape) != 4 or None in shape:
                continue
            for name in node.input:
                if name and self.info.shapes.get(name) == shape:
                    self._join(out, name)

    def _axes(self, node: onnx.NodeProto) -> list[int] | None:
        axes = self.info.axes(node)
        return None if axes is None else sorted(int(a) % 4 for a in axes)

    def _reduction(self, node: onnx.NodeProto, at: str) -> None:
        x, y = node.input[0], node.output[0]
        shape = self.info.shapes.get(x)
        if shape is not None and len(shape) != 4:
            return
        axes = self._axes(node)
        if axes in ([1, 2], [2, 3]):
            layout = "NHWC" if axes == [1, 2] else "NCHW"
            self._say(x, layout, f"{node.op_type} axes {axes} {at}")
        if attr(node, "keepdims", 1):
            self._join(x, y)  # an NHWC mean with keepdims is (N, 1, 1, C): still NHWC

    def _layer_norm(self, node: onnx.NodeProto, at: str) -> None:
        shape = self.info.shapes.get(node.input[0])
        scale = self.info.shapes.get(node.input[1]) if len(node.input) > 1 else None
        if shape is None or len(shape) != 4 or int(attr(node, "axis", -1)) % 4 != 3:
            return
        if scale is not None and tuple(d for d in scale if d != 1) == (shape[3],) != (1,):
            reason = f"LayerNormalization over the last axis (weight of size {shape[3]}) {at}"
            self._say(node.input[0], "NHWC", reason)
            self._say(node.output[0], "NHWC", reason)
            self._join(node.input[0], node.output[0])

    def _matmul(self, node: onnx.NodeProto, at: str) -> None:
        a, b = node.input[0], node.input[1]
        shape, weight = self.info.shapes.get(a), self.info.shapes.get(b)
        if (shape is None or len(shape) != 4 or b not in self.info.constants or weight is None
                or len(weight) != 2 or shape[3] != weight[0] or weight[0] in (None, 1)):
            return
        reason = f"MatMul over the last axis with a {tuple(weight)} weight {at}"
        self._say(a, "NHWC", reason)
        self._say(node.output[0], "NHWC", reason)

    def _reshape(self, node: onnx.NodeProto, at: str) -> None:
        """(N, H·W, C) ↔ (N, H, W, C) is channels-last, (N, C, H·W) ↔ (N, C, H, W) channels-first
        (token sequences of vision transformers and of flattened attention)."""
        x, y = node.input[0], node.output[0]
        sx, sy = self.info.shapes.get(x), self.info.shapes.get(y)
        if sx is None or sy is None or None in sx or None in sy:
            return
        if sx == sy:
            self._join(x, y)
            return
        for four, three, name in ((sx, sy, x), (sy, sx, y)):
            if len(four) != 4 or len(three) != 3 or three[0] != four[0]:
                continue
            last = three[1:] == (four[1] * four[2], four[3])
            first = three[1:] == (four[1], four[2] * four[3])
            if last != first:
                layout = "NHWC" if last else "NCHW"
                self._say(name, layout, f"Reshape {list(sx)} → {list(sy)} {at}")

    def _input(self, name: str, stated: tuple[str, str] | None) -> None:
        shape = self.info.shapes.get(name)
        if shape is None or len(shape) != 4:
            return
        if stated is not None:
            self._say(name, stated[0], f"model input, {stated[1]}")
            return
        nchw, nhwc = shape[1] in (1, 3), shape[3] in (1, 3)
        if nchw != nhwc:
            layout = "NCHW" if nchw else "NHWC"
            self._say(name, layout, f"model input of shape {readable(shape)}")

    # ---- verdicts ------------------------------------------------------------------------------
    @cached_property
    def _groups(self) -> dict[str, list[tuple[Evidence, int]]]:
        """Each group's evidence with its parity relative to the group's root."""
        groups: dict[str, list[tuple[Evidence, int]]] = {}
        for item in self.evidence:
            root, parity = self._find(item.tensor)
            groups.setdefault(root, []).append((item, parity))
        return groups

    def of(self, name: str) -> Verdict:
        """What the graph says about ``name``'s layout, the tensor's own evidence first."""
        root, parity = self._find(name)
        said: dict[str, list[tuple[str, str]]] = {"NCHW": [], "NHWC": []}
        items = sorted(self._groups.get(root, []), key=lambda e: e[0].tensor != name)
        for item, other in items:
            layout = flip(item.layout) if parity != other else item.layout
            text = item.reason if item.tensor == name else (
                f"{item.reason}, which makes {item.tensor!r} {item.layout}")
            said[layout].append((layout, text))
        decided = [k for k in LAYOUTS if said[k]]
        layout = decided[0] if len(decided) == 1 else None
        ordered = said[layout] if layout else said["NCHW"][:2] + said["NHWC"][:2]
        return Verdict(name, layout, tuple(ordered))


def pooled(shape: tuple) -> bool:
    """A 4-D tensor spatially 1 × 1 in either layout: (N, C, 1, 1) or (N, 1, 1, C)."""
    return tuple(shape[2:4]) == (1, 1) or tuple(shape[1:3]) == (1, 1)


def explicit(name: str) -> tuple[str, str | None]:
    """``NAME:NHWC`` → (``NAME``, ``NHWC``); a name without a layout suffix → (name, None)."""
    head, _, tail = name.rpartition(":")
    if head and tail.upper() in LAYOUTS:
        return head, tail.upper()
    return name, None
