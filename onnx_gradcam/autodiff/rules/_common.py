"""Helpers the VJP rules (and the lowerings of onnxruntime-training's gradient ops) share:
broadcast reduction, index bookkeeping with an iota, and sliding-window geometry."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from onnx_gradcam.autodiff.emitter import Emitter, Node, Value

#: one cotangent per forward node output (None where that output gets no gradient)
Dys = Sequence[Value | None]


# ---- broadcasting ----------------------------------------------------------------------------
def unbroadcast(op: Emitter, dx: Value, x: str, y: str) -> Value:
    """Sum ``dx`` (shaped like the op's output ``y``) back to the shape of the input ``x``.

    Leading axes that broadcasting added are summed away; axes where ``x`` has a static 1 and
    ``y`` does not are summed with keepdims. Symbolic dims are taken as not broadcast.
    """
    x_shape, y_shape = op.shape(x), op.shape(y)
    if x_shape is None or y_shape is None:
        raise ValueError(f"cannot unbroadcast to {x!r}: its shape is unknown")
    lead = len(y_shape) - len(x_shape)
    if lead > 0:
        dx = op.reduce("ReduceSum", dx, list(range(lead)), keepdims=0)
    axes = [i for i, (a, b) in enumerate(zip(x_shape, y_shape[lead:])) if a == 1 and b != 1]
    if axes:
        dx = op.reduce("ReduceSum", dx, axes, keepdims=1)
    return dx


# ---- index bookkeeping: run an index-moving op on an iota, scatter dy back -------------------
def iota(op: Emitter, x: str) -> Value:
    """An int64 tensor shaped like ``x`` holding each element's row-major flat index."""
    size = op.Size(x)
    return op.Reshape(op.Range(op.const(0), size, op.const(1)), op.Shape(x))


def iota_of_shape(op: Emitter, shape: Value) -> Value:
    """:func:`iota` for a tensor known only by its ``shape`` (int64 1-D), as a lowering's
    inputs give it."""
    size = op.ReduceProd(shape, keepdims=0)
    return op.Reshape(op.Range(op.const(0), size, op.const(1)), shape)


def scatter_add_flat(op: Emitter, x: str, indices: Value, dy: Value, spare: bool = False) -> Value:
    """Gradient shaped like ``x``: ``dy[i]`` added at flat position ``indices[i]``.

    With ``spare`` the buffer has one extra slot at index Size(x), a sink for contributions
    that land nowhere in ``x`` (e.g. constant padding), dropped before reshaping.
    """
    length = op.Size(x)
    if spare:
        length = op.Add(length, 1)
    zeros = op.Expand(op.const(0.0), op.Reshape(length, op.const([1])))
    flat = op.ScatterElements(zeros, op.Reshape(indices, op.const([-1])),
                              op.Reshape(dy, op.const([-1])), axis=0, reduction="add")
    if spare:
        flat = op.Slice(flat, op.const([0]), op.Reshape(op.Size(x), op.const([1])))
    return op.Reshape(flat, op.Shape(x))


def scatter_add_to_shape(op: Emitter, shape: Value, indices: Value, dy: Value) -> Value:
    """:func:`scatter_add_flat` for a tensor known only by its ``shape`` (int64 1-D); its
    zeros take ``dy``'s float type, whatever the emitter's, as a lowering's inputs may differ."""
    size = op.ReduceProd(shape, keepdims=1)
    zeros = op.Expand(op.CastLike(0.0, dy) if op.opset >= 15 else op.const(0.0), size)
    flat = op.const([-1])
    reduction = "add" if op.opset >= 16 else None
    return op.Reshape(op.ScatterElements(zeros, op.Reshape(indices, flat),
                                         op.Reshape(dy, flat), axis=0, reduction=reduction),
                      shape)


def pad_back(op: Emitter, x: str, dy: Value,
             spans: dict[int, tuple[int, int | str]]) -> Value | None:
    """Gradient shaped like ``x`` of an op that copied, along each axis of ``spans``, the
    block of ``x`` from ``start`` (step 1, ``length`` long: a number, or a forward tensor
    whose dim on that axis it is) into ``dy``: ``dy`` zero-padded back into place. Each
    position of ``x`` receives one value or none, so this equals the scatter-add of
    :func:`scatter_add_flat` exactly, without its index tensors and serial scatter. None where
    ``x``'s rank is unknown and the block spans several axes."""
    rank = op.known_rank(x)
    if rank is None:
        return _concat_back(op, x, dy, *next(iter(spans.items()))) if len(spans) == 1 else None
    shape = op.shape(x) or (None,) * rank
    pads: list[int | Value] = [0] * (2 * rank)
    for axis, (start, length) in spans.items():
        pads[axis] = start
        size = op.shape(length)[axis] if isinstance(length, str) and op.shape(length) else (
            None if isinstance(length, str) else length)
        if shape[axis] is not None and size is not None:
            pads[rank + axis] = int(shape[axis]) - start - int(size)
        else:
            used = op.const([start + size]) if size is not None else op.Add(
                op.dims(length, axis, axis + 1), op.const([start]))
            pads[rank + axis] = op.Sub(op.dims(x, axis, axis + 1), used)
    if all(isinstance(p, int) for p in pads):
        return op.Pad(dy, op.const(pads))
    pieces = [op.const([p]) if isinstance(p, int) else p for p in pads]
    return op.Pad(dy, op.Concat(*pieces, axis=0))


def _concat_back(op: Emitter, x: str, dy: Value, axis: int, span: tuple[int, int | str]
                 ) -> Value | None:
    """:func:`pad_back` along one axis of a tensor of unknown rank: zeros, ``dy``, zeros
    concatenated (the zeros' shapes read from ``x`` at run time)."""
    start, length = span
    if axis < 0 or not isinstance(length, int):
        return None

    def zeros(count: Value) -> Value:
        shape = op.Concat(op.dims(x, 0, axis), count, op.dims(x, axis + 1, 2**62), axis=0)
        return op.Expand(op.const(0.0), shape)

    after = op.Sub(op.dims(x, axis, axis + 1), op.const([start + length]))
    parts = ([zeros(op.const([start]))] if start else []) + [dy, zeros(after)]
    return op.Concat(*parts, axis=axis)


# ---- sliding windows (Conv, MaxPool, AveragePool) --------------------------------------------
def strides_dilations(node: Node, rank: int) -> tuple[list[int], list[int]]:
    """A window node's strides and dilations over its ``rank`` spatial axes (default 1)."""
    return ([int(v) for v in node.attr("strides", [1] * rank)],
            [int(v) for v in node.attr("dilations", [1] * rank)])


def has_pads(node: Node) -> bool:
    """Whether a window node may pad its input (explicit pads, or SAME_* auto padding)."""
    return node.attr("auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER") or any(
        node.attr("pads", [0]))


def spatial_begin_pads(op: Emitter, node: Node, x: str, kernel: Sequence[int]) -> Value:
    """The padding added before each spatial axis of ``x`` by a Conv/pool node (int64 (r,)).

    Explicit ``pads`` are static; ``auto_pad`` SAME_* pads depend on the input size, so they are
    computed in the graph: total = max((⌈X/s⌉ − 1)·s + k_eff − X, 0), begin = total // 2 (UPPER)
    or ⌈total / 2⌉ (LOWER).
    """
    r = len(kernel)
    strides, dilations = strides_dilations(node, r)
    auto_pad = node.attr("auto_pad", "NOTSET")
    if auto_pad in ("NOTSET", "VALID"):
        pads = list(node.attr("pads", [0] * 2 * r)) if auto_pad == "NOTSET" else [0] * 2 * r
        return op.const(pads[:r])
    k_eff = np.array([(k - 1) * d + 1 for k, d in zip(kernel, dilations)], dtype=np.int64)
    s = np.array(strides, dtype=np.int64)
    size = op.dims(x, 2, 2 + r)
    out = op.Div(op.Sub(op.Add(size, s), 1), s)  # ⌈X / s⌉
    total = op.Max(op.Sub(op.Add(op.Mul(op.Sub(out, 1), s), k_eff), size), op.const([0] * r))
    if auto_pad == "SAME_LOWER":
        total = op.Add(total, 1)
    return op.Div(total, 2)


def transpose_window(op: Emitter, node: Node, dy: Value, w: Value, x: str,
                     kernel: Sequence[int], group: int) -> Value:
    """Scatter ``dy`` back through sliding windows: ``ConvTranspose(dy, w)`` cropped to ``x``.

    The transposed conv (no pads, output_padding = stride − 1) covers the whole padded input;
    slicing ``[pad_begin, pad_begin + X)`` on each spatial axis leaves the input's gradient.
    """
    r = len(kernel)
    strides, dilations = strides_dilations(node, r)
    full = op.ConvTranspose(
        dy, w, strides=strides, dilations=dilations, group=group,
        pads=[0] * 2 * r, output_padding=[s - 1 for s in strides], kernel_shape=list(kernel))
    begin = spatial_begin_pads(op, node, x, kernel)
    end = op.Add(begin, op.dims(x, 2, 2 + r))
    return op.Slice(full, begin, end, op.const(list(range(2, 2 + r))))
