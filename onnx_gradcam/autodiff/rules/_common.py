"""Helpers the VJP rules (and the lowerings of onnxruntime-training's gradient ops) share:
broadcast reduction, index bookkeeping with an iota, and sliding-window geometry."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from onnx import helper

from onnx_gradcam.autodiff.emitter import Emitter, Node, Value
from onnx_gradcam.autodiff.folding import producer

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


def static_begin_pads(node: Node, sizes: Sequence[int], kernel: Sequence[int]) -> list[int]:
    """:func:`spatial_begin_pads` for the static spatial ``sizes`` of the input, as numbers."""
    r = len(kernel)
    auto_pad = node.attr("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        strides, dilations = strides_dilations(node, r)
        spans = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
        return same_pads(auto_pad, sizes, strides, spans)[0]
    return [int(p) for p in node.attr("pads", [0] * 2 * r)[:r]] if auto_pad == "NOTSET" \
        else [0] * r


def same_pads(auto_pad: str, sizes: Sequence[int], strides: Sequence[int],
              spans: Sequence[int]) -> tuple[list[int], list[int]]:
    """(begin, end) pads of ``SAME_UPPER`` / ``SAME_LOWER`` windows of ``spans`` = (k − 1)·d + 1
    over ``sizes``: ⌈n / s⌉ outputs; an odd total puts its extra pad at the end (UPPER) or at
    the beginning (LOWER)."""
    total = [max((-(-n // s) - 1) * s + k - n, 0) for n, s, k in zip(sizes, strides, spans)]
    begin = [t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in total]
    return begin, [t - b for t, b in zip(total, begin)]


def transpose_window(op: Emitter, node: Node, dy: Value, w: Value, x: str,
                     kernel: Sequence[int], group: int, y: str | None = None) -> Value:
    """Scatter ``dy`` back through sliding windows: ``ConvTranspose(dy, w)`` cropped to ``x``.

    With stride 1 it is a plain conv (:func:`flipped_window`). Where the spatial sizes of
    ``x`` and of the forward output ``y`` are static, the transposed conv's own pads crop it
    to ``x``; otherwise it covers the whole padded input (no pads, output_padding = stride − 1)
    and slicing ``[pad_begin, pad_begin + X)`` on each spatial axis leaves the gradient.
    """
    dx = flipped_window(op, node, dy, w, kernel, group)
    if dx is not None:
        return dx
    r = len(kernel)
    strides, dilations = strides_dilations(node, r)
    attrs = dict(strides=strides, dilations=dilations, group=group, kernel_shape=list(kernel))
    crop = _static_crop(op, node, x, y, kernel)
    if crop is not None:
        pads, extra = crop
        return op.ConvTranspose(dy, w, pads=pads, output_padding=extra, **attrs)
    full = op.ConvTranspose(dy, w, pads=[0] * 2 * r, output_padding=[s - 1 for s in strides],
                            **attrs)
    begin = spatial_begin_pads(op, node, x, kernel)
    end = op.Add(begin, op.dims(x, 2, 2 + r))
    return op.Slice(full, begin, end, op.const(list(range(2, 2 + r))))


def _static_crop(op: Emitter, node: Node, x: str, y: str | None, kernel: Sequence[int]
                 ) -> tuple[list[int], list[int]] | None:
    """(pads, output_padding) that make ``ConvTranspose(dy)`` exactly ``x``'s gradient: the
    uncropped size is (Y − 1)·s + k_eff; the begin pad is the forward's, the end takes the
    rest (or output_padding adds what the last windows never read). None where a size is
    not static."""
    r = len(kernel)
    x_shape = op.shape(x)
    y_shape = op.shape(y) if y is not None else None
    if x_shape is None or y_shape is None or None in x_shape[2:] + y_shape[2:]:
        return None
    strides, dilations = strides_dilations(node, r)
    sizes_x, sizes_y = [int(d) for d in x_shape[2:]], [int(d) for d in y_shape[2:]]
    reach = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    begin = static_begin_pads(node, sizes_x, kernel)
    rest = [(m - 1) * s + k - b - n
            for m, s, k, b, n in zip(sizes_y, strides, reach, begin, sizes_x)]
    extra = [max(-e, 0) for e in rest]
    if any(e >= max(s, d) for e, s, d in zip(extra, strides, dilations)):
        return None
    return begin + [max(e, 0) for e in rest], extra


def crop(op: Emitter, dy: Value, pads: np.ndarray) -> Value:
    """The cotangent of a constant Pad's input: the border the Pad added (``pads`` in Pad's
    layout, begins then ends over every axis) cut off ``dy`` with a Slice, and zeros where a
    negative pad had cropped the input. Where ``dy`` is a transposed conv's output
    (:func:`transpose_window`), also through a Transpose, and only spatial borders were
    added, that conv's own pads grow instead: one node computes the cropped gradient."""
    rank = len(pads) // 2
    begin, end = pads[:rank], pads[rank:]
    grown = _grown_conv_transpose(op, dy, pads)
    if grown is not None:
        return grown
    axes = [a for a in range(rank) if begin[a] > 0 or end[a] > 0]
    if axes:  # the added border
        stop = [-int(end[a]) if end[a] > 0 else np.iinfo(np.int64).max for a in axes]
        dy = op.Slice(dy, op.const([max(int(begin[a]), 0) for a in axes]), op.const(stop),
                      op.const(axes))
    if (pads < 0).any():  # the cropped input: zeros
        dy = op.Pad(dy, op.const(np.maximum(-pads, 0).astype(np.int64)))
    return dy


def _grown_conv_transpose(op: Emitter, dy: Value, pads: np.ndarray) -> Value | None:
    """:func:`crop`'s border cut by the pads of the transposed conv that made ``dy``, also
    where a Transpose lies between (tf2onnx pads NHWC tensors before the Transpose to a
    conv's NCHW): the conv is emitted again with larger pads, and the Transpose after it.
    None where ``dy`` comes from no such conv or the border is not only spatial."""
    if (pads < 0).any():
        return None
    rank = len(pads) // 2
    source, perm = producer(op, dy), list(range(rank))
    if source is not None and source.op_type == "Transpose":
        perm = next((list(a.ints) for a in source.attribute if a.name == "perm"),
                    list(reversed(range(rank))))
        source = producer(op, source.input[0])
    if source is None or source.op_type != "ConvTranspose" or len(perm) != rank:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in source.attribute}
    inverse = np.argsort(perm)  # the conv's axis a is dy's axis inverse[a]
    begin, end = pads[:rank][inverse], pads[rank:][inverse]
    if (begin[:2].any() or end[:2].any() or "output_shape" in attrs
            or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")):
        return None
    spatial = [int(p) for p in np.concatenate([begin[2:], end[2:]])]
    attrs["pads"] = [a + b for a, b in zip(attrs.get("pads", [0] * len(spatial)), spatial)]
    out = op.emit("ConvTranspose", *source.input, **attrs)
    return out if perm == list(range(rank)) else op.Transpose(out, perm=perm)


def flipped_window(op: Emitter, node: Node, dy: Value, w: Value, kernel: Sequence[int],
                   group: int) -> Value | None:
    """With stride 1, scattering ``dy`` back through the windows is itself a convolution:
    ``Conv(dy, w')`` with w' the kernel flipped on every spatial axis and each group's input
    and output channels swapped, padded by k_eff − 1 − pad on each side (which gives x's size
    exactly). ONNX Runtime runs Conv with its blocked (NCHWc) kernels and ConvTranspose
    without them, markedly slower for depthwise convs. None where a stride is not 1, a pad
    exceeds k_eff − 1 (a negative pad), or the weight's shape is not static."""
    r = len(kernel)
    strides, dilations = strides_dilations(node, r)
    if any(s != 1 for s in strides):
        return None
    reach = [(k - 1) * d for k, d in zip(kernel, dilations)]  # k_eff − 1
    auto_pad = node.attr("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):  # stride 1: the total pad is k_eff − 1
        begin = [t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in reach]
        pads = begin + [t - b for t, b in zip(reach, begin)]
    else:
        pads = [int(p) for p in node.attr("pads", [0] * 2 * r)] if auto_pad == "NOTSET" else (
            [0] * 2 * r)
    pads = [t - p for t, p in zip(reach * 2, pads)]
    value = op.value_of(w)
    shape = value.shape if value is not None else op.shape(w)
    if any(p < 0 for p in pads) or shape is None or None in shape[:2]:
        return None
    outs, ins = int(shape[0]) // group, int(shape[1])  # per group
    if outs > 1 and ins > 1:  # (g, out, in, k…) → (g, in, out, k…)
        w = op.Transpose(op.Reshape(w, op.const([group, outs, ins, *kernel])),
                         perm=[0, 2, 1, *range(3, 3 + r)])
    if outs > 1 or ins > 1:
        w = op.Reshape(w, op.const([group * ins, outs, *kernel]))
    flipped = op.Slice(w, op.const([-1] * r), op.const([np.iinfo(np.int64).min] * r),
                       op.const(list(range(2, 2 + r))), op.const([-1] * r))
    return op.Conv(dy, flipped, pads=pads, dilations=dilations, group=group,
                   kernel_shape=list(kernel))
