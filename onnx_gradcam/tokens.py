"""Token tensors of vision transformers, read as images: the grid a (N, T, C) tensor folds into.

A ViT cuts the image into patches with a strided Conv (the patch embedding, output
(N, C, h, w)), flattens them row-major into h·w tokens and puts its class (and distillation)
tokens in front; every block keeps that order. So a (N, T, C) tensor downstream of that Conv,
with the same C and T − h·w = k ≥ 0 leading tokens, is an (h, w) image of C channels once its
first k tokens are dropped (pytorch-grad-cam's hand-written ``reshape_transform``). The head
reading those k tokens (a Gather or Slice on the token axis) is the evidence that they are class
tokens; ``inspect`` prints it.

Exported with a symbolic input size, T, h and w are symbolic too. The grid then follows the input
through the patch embedding's arithmetic (:class:`PatchGeometry`), and k comes from the graph
itself: shape inference at two probe input sizes must give T = h·w + k with the same k both
times (an exporter that fixed the token count at the traced size fails this and is refused).

The default layer of a transformer is the input of the last attention (pytorch-grad-cam's
recommended ``blocks[-1].norm1``): the last layer norm output whose way to the score passes an
attention's Softmax (one a MatMul reads). The last block's output would be a poor choice: when
the head reads only the class token, the patch tokens' gradient there is zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnx_gradcam.autodiff.emitter import Emitter, Value
from onnx_gradcam.errors import OnnxGradCamError
from onnx_gradcam.graph import GraphInfo, Shape, shapes_at

#: the most leading (class, distillation, register) tokens a grid allows
MAX_EXTRA_TOKENS = 8
#: the grids (h, w) a symbolic-size model is probed at: non-square both ways, h·w distinct
PROBE_GRIDS = ((4, 6), (7, 5))


@dataclass(frozen=True)
class PatchGeometry:
    """The patch-embedding Conv's arithmetic along the input's height and width, for grids
    whose size follows a symbolic input: ``h = ⌊(H + pads − span)/stride⌋ + 1`` with
    ``span = dilation·(kernel − 1) + 1`` (``auto_pad`` SAME: ``⌈H/stride⌉``)."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    pads: tuple[int, int]  # begin + end, per axis
    dilation: tuple[int, int]
    same: bool = False

    @classmethod
    def of(cls, info: GraphInfo, node) -> PatchGeometry | None:
        attrs = {a.name: a for a in node.attribute}
        weight = info.shapes.get(node.input[1])
        kernel = tuple(attrs["kernel_shape"].ints) if "kernel_shape" in attrs else (
            tuple(weight[2:]) if weight is not None else ())
        if len(kernel) != 2 or None in kernel:
            return None
        stride = tuple(attrs["strides"].ints) if "strides" in attrs else (1, 1)
        pads = tuple(attrs["pads"].ints) if "pads" in attrs else (0, 0, 0, 0)
        dilation = tuple(attrs["dilations"].ints) if "dilations" in attrs else (1, 1)
        auto = attrs["auto_pad"].s.decode() if "auto_pad" in attrs else "NOTSET"
        return cls(kernel, stride, (pads[0] + pads[2], pads[1] + pads[3]), dilation,  # type: ignore[arg-type]
                   auto in ("SAME_UPPER", "SAME_LOWER"))

    def size(self, height: int, width: int) -> tuple[int, int]:
        """The grid (h, w) of an input of ``height`` × ``width``."""
        return self._axis(height, 0), self._axis(width, 1)

    def _axis(self, n: int, axis: int) -> int:
        if self.same:
            return -(-n // self.stride[axis])
        span = self.dilation[axis] * (self.kernel[axis] - 1) + 1
        return (n + self.pads[axis] - span) // self.stride[axis] + 1

    def input_for(self, h: int, w: int) -> tuple[int, int]:
        """An input size (H, W) whose grid is ``h`` × ``w``."""
        def axis(n: int, i: int) -> int:
            if self.same:
                return n * self.stride[i]
            return (n - 1) * self.stride[i] + self.dilation[i] * (self.kernel[i] - 1) + 1 \
                - self.pads[i]
        return axis(h, 0), axis(w, 1)

    def formula(self, axis: int, size: str) -> str:
        """How the grid follows the input along ``axis``, e.g. ``H/16``."""
        stride = self.stride[axis]
        if self.same:
            return f"⌈{size}/{stride}⌉"
        span = self.dilation[axis] * (self.kernel[axis] - 1) + 1
        if span == stride and not self.pads[axis]:
            return f"{size}/{stride}"
        shift = self.pads[axis] - span
        return f"⌊({size} {'+' if shift >= 0 else '−'} {abs(shift)})/{stride}⌋ + 1"


@dataclass(frozen=True)
class Grid:
    """How a (N, T, C) token tensor reads as an (N, h, w, C) image: drop the ``skip`` leading
    tokens, fold the rest row-major into h × w (from the patch embedding ``patches``). ``h``
    and ``w`` are None where they follow a symbolic input size (``geometry``)."""

    skip: int
    h: int | None
    w: int | None
    patches: str  # the patch-embedding Conv's output (N, C, h, w)
    readers: str = ""  # the nodes that read the leading tokens (the evidence they are class tokens)
    geometry: PatchGeometry | None = None  # symbolic grids: the Conv's arithmetic

    @property
    def sizes(self) -> tuple[int | str, int | str]:
        """(h, w), as numbers or, for a symbolic grid, formulas of the input's H and W."""
        if self.geometry is not None and (self.h is None or self.w is None):
            return self.geometry.formula(0, "H"), self.geometry.formula(1, "W")
        return self.h, self.w  # type: ignore[return-value]

    def describe(self) -> str:
        """One line for ``inspect``."""
        extra = ""
        if self.skip:
            by = f", read by {self.readers}" if self.readers else ""
            extra = f" after {self.skip} leading token{'s' if self.skip > 1 else ''}{by}"
        h, w = self.sizes
        symbolic = " (symbolic: from the input size)" if self.h is None else ""
        return f"grid {h} × {w}{symbolic}{extra} (patch embedding {self.patches!r})"

    def image(self, op: Emitter, tokens: Value) -> Value:
        """The token tensor as (N, h, w, C) graph nodes (a symbolic grid's h × w read from the
        patch embedding's output at run time)."""
        shape = op.shape(tokens)
        patches = tokens
        if self.skip:
            patches = op.Slice(tokens, op.const([self.skip]), op.const([2**62]), op.const([1]))
        if self.h is None or self.w is None:
            target = op.Concat(op.const([0]), op.dims(self.patches, 2, 4), op.const([-1]),
                               axis=0)
        else:
            target = op.const([0, self.h, self.w, -1])
        out = op.Reshape(patches, target)
        op.shapes[out] = (shape[0] if shape else None, self.h, self.w,
                          shape[2] if shape else None)
        return out

    def nchw(self, array: np.ndarray, input_hw: tuple[int, int] | None = None) -> np.ndarray:
        """A fetched (N, T, C) tensor as (N, C, h, w) (``input_hw``: the input's (H, W), which
        a symbolic grid follows)."""
        n, tokens, c = array.shape
        h, w = self.h, self.w
        if (h is None or w is None) and self.geometry is not None and input_hw is not None:
            h, w = self.geometry.size(*input_hw)
        if h is None or w is None or h * w != tokens - self.skip:
            raise OnnxGradCamError(
                f"token tensor of shape {list(array.shape)} does not fold into the grid "
                f"{self.describe()} for an input of {input_hw}")
        return array[:, self.skip:].reshape(n, h, w, c).transpose(0, 3, 1, 2)


PatchConv = tuple[int, str, Shape, set[int]]  # node index, output, its shape, descendants


def patch_convs(info: GraphInfo) -> list[PatchConv]:
    """The Convs that could be patch embeddings ((N, C, h, w) outputs with a static C), with the
    nodes downstream of each (computed once for all the token tensors of a graph)."""
    out = []
    for index, node in enumerate(info.nodes):
        shape = info.shapes.get(node.output[0]) if node.op_type == "Conv" else None
        if shape is not None and len(shape) == 4 and shape[1] is not None:
            out.append((index, node.output[0], shape, info.descendants(node.output[0])))
    return out


class TokenGrids:
    """The grids of one model's token tensors (:meth:`of`), and for a token tensor with none
    the reason (:attr:`refusals`), found from the graph once per model."""

    def __init__(self, info: GraphInfo, input_name: str, input_layout: str) -> None:
        self.info, self.input_name, self.input_layout = info, input_name, input_layout
        self.refusals: dict[str, str] = {}  # token tensor → why the graph shows no grid
        self._convs: list[PatchConv] | None = None
        self._probes: dict[PatchGeometry, list[tuple[tuple[int, int], dict[str, Shape]]]] = {}

    def of(self, name: str) -> Grid | None:
        """The grid of the (N, T, C) tensor ``name``, from the last Conv before it with C output
        channels (the patch embedding); None where the graph shows none."""
        info = self.info
        shape = info.shapes.get(name)
        index = info.producer.get(name)
        if shape is None or len(shape) != 3 or shape[2] is None or index is None:
            return None
        if self._convs is None:
            self._convs = patch_convs(info)
        before = [c for c in self._convs if c[2][1] == shape[2] and index in c[3]]
        if not before:
            return self._refuse(name, f"the graph shows no patch-embedding Conv (with {shape[2]} "
                                      "output channels) before it")
        conv, patches, (_, _, h, w), _ = before[-1]
        if shape[1] is not None and h is not None and w is not None:
            skip = shape[1] - int(h) * int(w)
            if not 0 <= skip <= MAX_EXTRA_TOKENS:
                return self._refuse(name, f"its {shape[1]} tokens are not the {h} × {w} grid of "
                                          f"the patch-embedding Conv {patches!r} plus up to "
                                          f"{MAX_EXTRA_TOKENS} leading tokens")
            return Grid(skip, int(h), int(w), patches, _readers(info, name, skip) if skip else "")
        return self._symbolic(name, patches, info.nodes[conv])

    def _symbolic(self, name: str, patches: str, conv) -> Grid | None:
        """The grid of ``name`` whose size follows a symbolic input: the patch embedding's
        arithmetic, and the leading tokens T − h·w, the same at both :data:`PROBE_GRIDS`."""
        geometry = PatchGeometry.of(self.info, conv)
        if geometry is None:
            return self._refuse(name, f"the patch-embedding Conv {patches!r} has no static "
                                      "kernel size")
        seen = []
        for (h, w), shapes in self._probe(geometry):
            tokens, grid = shapes.get(name), shapes.get(patches)
            size = "×".join(map(str, geometry.input_for(h, w)))
            if grid is None or tuple(grid[2:4]) != (h, w):
                return self._refuse(name, f"at a {size} input the patch-embedding Conv "
                                          f"{patches!r} does not give the grid {h} × {w} its "
                                          "arithmetic predicts (it does not read the input at "
                                          "its size)")
            if tokens is None or tokens[1] is None:
                return self._refuse(name, f"shape inference gives no token count at a {size} "
                                          "input")
            seen.append((tokens[1], tokens[1] - h * w, size))
        skips = {skip for _, skip, _ in seen}
        if len(skips) != 1 or not 0 <= min(skips) <= MAX_EXTRA_TOKENS:
            counts = " and ".join(f"{t} at {size}" for t, _, size in seen)
            return self._refuse(name, f"its token count ({counts}) does not follow the grid of "
                                      f"the patch-embedding Conv {patches!r} (the export fixed "
                                      "it at the traced size)")
        skip = skips.pop()
        return Grid(skip, None, None, patches, _readers(self.info, name, skip) if skip else "",
                    geometry)

    def _probe(self, geometry: PatchGeometry) -> list[tuple[tuple[int, int], dict[str, Shape]]]:
        """The graph's shapes at the inputs whose grids are :data:`PROBE_GRIDS` (once per
        geometry)."""
        if geometry not in self._probes:
            info = self.info
            shape = list(info.shapes.get(self.input_name) or (None,) * 4)
            first = 2 if self.input_layout == "NCHW" else 1
            probes = []
            for grid in PROBE_GRIDS:
                shape[first:first + 2] = geometry.input_for(*grid)
                probes.append((grid, shapes_at(info.model, {self.input_name: tuple(shape)})))
            self._probes[geometry] = probes
        return self._probes[geometry]

    def _refuse(self, name: str, why: str) -> None:
        self.refusals[name] = why
        return None


def _readers(info: GraphInfo, name: str, skip: int) -> str:
    """The nodes downstream of ``name`` that read only its first ``skip`` tokens: a Gather or
    Slice on axis 1 with constant indices below ``skip`` (the head reading the class token)."""
    found = []
    for index in sorted(info.descendants(name)):
        node = info.nodes[index]
        shape = info.shapes.get(node.input[0]) if node.input else None
        if shape is None or len(shape) != 3 or shape[1] != info.shapes[name][1]:
            continue
        if node.op_type == "Gather" and _axis(node) == 1:
            taken = info.constants.get(node.input[1]) if node.input[1] in info.constants else None
            if taken is not None and (np.asarray(taken) < skip).all():
                found.append(node.name or node.output[0])
        elif node.op_type == "Slice" and len(node.input) > 3 and all(
                i in info.constants for i in node.input[1:4]):
            start, end, axes = (np.asarray(info.constants[i]).tolist() for i in node.input[1:4])
            if axes == [1] and end[0] <= skip:
                found.append(node.name or node.output[0])
    return ", ".join(repr(f) for f in found[:2])


def _axis(node) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 0)


def attention_input(info: GraphInfo, names: list[str], score: str) -> str | None:
    """The last of ``names`` (in forward order) that a LayerNormalization outputs and whose way
    to ``score`` passes an attention's Softmax (:func:`_attention`), or None (no transformer
    block)."""
    upstream = info.ancestors(score)
    for name in reversed(names):
        if not layer_norm(info, name):
            continue
        between = info.descendants(name) & upstream
        if any(_attention(info, i) for i in between):
            return name
    return None


def _attention(info: GraphInfo, index: int) -> bool:
    """Whether node ``index`` is an attention's Softmax: one whose weights a MatMul or Einsum
    reads (not a classifier's final Softmax)."""
    node = info.nodes[index]
    if node.op_type != "Softmax":
        return False
    names = [node.output[0]]
    while names:
        for consumer in info.consumers.get(names.pop(), []):
            op = info.nodes[consumer].op_type
            if op in ("MatMul", "Einsum"):
                return True
            if op in ("Cast", "Dropout", "Identity"):
                names.append(info.nodes[consumer].output[0])
    return False


def layer_norm(info: GraphInfo, name: str) -> bool:
    """Whether ``name`` is a layer norm's output: a LayerNormalization, or the form exporters
    write below opset 17, (x − mean(x)) / sqrt(var + eps), then · weight + bias."""
    if info.op_of(name) == "LayerNormalization":
        return True
    node = _producer(info, name)
    while node is not None and node.op_type in ("Add", "Mul") and any(
            i in info.constants for i in node.input):  # the affine part
        node = _producer(info, next(i for i in node.input if i not in info.constants))
    if node is None or node.op_type != "Div":
        return False
    centred = _producer(info, node.input[0])
    return (centred is not None and centred.op_type == "Sub"
            and info.op_of(centred.input[1]) == "ReduceMean")


def _producer(info: GraphInfo, name: str):
    index = info.producer.get(name)
    return None if index is None else info.nodes[index]
