"""Reductions and pooling: mean, sum, max over axes or sliding windows."""

from __future__ import annotations

import numpy as np

from onnx_gradcam.autodiff.emitter import Emitter, Node, Value
from onnx_gradcam.autodiff.folding import scale
from onnx_gradcam.autodiff.registry import vjp
from onnx_gradcam.autodiff.rules._common import (
    Dys,
    has_pads,
    spatial_begin_pads,
    strides_dilations,
    transpose_window,
)


def reduce_axes(op: Emitter, node: Node) -> list[int] | None:
    """The normalised, sorted axes a Reduce* node reduces (None = all axes)."""
    rank = op.rank(node.inputs[0])
    axes = node.attr("axes")
    if axes is None and node.input(1) is not None:
        value = op.value_of(node.input(1))
        if value is None:
            raise ValueError(f"{node.op_type} {node.name!r}: axes are computed at run time")
        axes = value.tolist()
    if not axes:
        return None if not node.attr("noop_with_empty_axes", 0) else []
    return sorted(int(a) % rank for a in axes)


def _keepdims(op: Emitter, node: Node, dy: Value) -> tuple[Value, list[int]]:
    """``dy`` with the reduced axes kept as size 1, and the reduced axes."""
    axes = _axes(op, node)
    if not node.attr("keepdims", 1) and axes:
        dy = op.unsqueeze(dy, axes)
    return dy, axes


def _axes(op: Emitter, node: Node) -> list[int]:
    """The axes a Reduce* node reduces, all of them spelled out."""
    axes = reduce_axes(op, node)
    return list(range(op.rank(node.inputs[0]))) if axes is None else axes


def count_ratio(op: Emitter, x: str, y: str, axes: list[int] | None = None) -> Value:
    """Size(x) / Size(y) in the float dtype: how many inputs each output averages — a constant
    when the reduced ``axes`` of ``x`` are static (or every dim but the shared batch dim is),
    else computed in the graph."""
    xs, ys = op.shape(x), op.shape(y)
    if xs and axes is not None and all(xs[a] is not None for a in axes):
        return op.const(float(np.prod([xs[a] for a in axes], dtype=np.int64)))
    if xs and ys and len(xs) == len(ys) and None not in xs[1:] + ys[1:]:
        return op.const(float(np.prod(xs[1:], dtype=np.int64) // np.prod(ys[1:], dtype=np.int64)))
    return op.Cast(op.Div(op.Size(x), op.Size(y)), to=op.float_type)


@vjp("ReduceSum")
def reduce_sum_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """dx = dy broadcast back over the reduced axes"""
    if reduce_axes(op, node) == []:
        return [dys[0], None]
    dy, axes = _keepdims(op, node, dys[0])
    return [op.broadcast(dy, node.inputs[0], axes), None]


@vjp("ReduceMean")
def reduce_mean_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """dx = dy / number of reduced elements, broadcast back over the reduced axes (divided
    before the axes are restored: the scaling can then move onto a classifier's constant
    weight, see :func:`~onnx_gradcam.autodiff.folding.scale`)"""
    if reduce_axes(op, node) == []:
        return [dys[0], None]
    x, y = node.inputs[0], node.outputs[0]
    count = count_ratio(op, x, y, _axes(op, node))
    dy, axes = _keepdims(op, node, _divide(op, dys[0], count))
    return [op.broadcast(dy, x, axes), None]


def _divide(op: Emitter, dy: Value, count: Value) -> Value:
    """dy / count, through :func:`~onnx_gradcam.autodiff.folding.scale` where the count is a
    constant."""
    value = op.value_of(count)
    if value is not None and value.size == 1:
        return scale(op, dy, "Div", float(value))
    return op.Div(dy, count)


@vjp("GlobalAveragePool")
def global_average_pool_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """dx = Expand(dy / (h·w), Shape(x)) (divide first: the small tensor)"""
    x, y = node.inputs[0], node.outputs[0]
    axes = list(range(2, op.rank(x)))
    return [op.broadcast(_divide(op, dys[0], count_ratio(op, x, y, axes)), x, axes)]


def _max_vjp(op: Emitter, x: str, y_kept: Value, dy_kept: Value, axes: list[int]) -> Value:
    """dx = dy·1[x = max] / (number of ties), as TensorFlow's max gradient splits ties."""
    hit = op.Cast(op.Equal(x, y_kept), to=op.float_type)
    ties = op.reduce("ReduceSum", hit, axes, keepdims=1)
    return op.Mul(op.Div(hit, ties), dy_kept)


@vjp("ReduceMax", "ReduceMin")
def reduce_max_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """dx = dy where x equals the extreme (split equally among ties)"""
    if reduce_axes(op, node) == []:
        return [dys[0], None]
    x = node.inputs[0]
    dy, axes = _keepdims(op, node, dys[0])
    y = node.outputs[0]
    if not node.attr("keepdims", 1):
        y = op.unsqueeze(y, axes)
    return [_max_vjp(op, x, y, dy, axes), None]


@vjp("GlobalMaxPool")
def global_max_pool_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """dx = dy where x equals its channel's max (split equally among ties)"""
    x = node.inputs[0]
    axes = list(range(2, op.rank(x)))
    return [_max_vjp(op, x, node.outputs[0], dys[0], axes)]


@vjp("MaxPool")
def max_pool_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """dx = dy routed to the first position (row-major within the window) where x equals the
    window's max y — without MaxPool's Indices output, whose CUDA kernel in ONNX Runtime places
    indices differently from the CPU one.

    For each kernel offset n: x_n = what that offset reads of x (padded with −inf) for every
    output; hit_n = (x_n = y) and no earlier offset hit (the last offset takes what is left:
    y is one of its window's values). The hits are stacked, z = dy·hit, and one grouped
    ConvTranspose with one-hot kernels puts every z_n back at its offset, cropped to x as for
    any sliding window.
    """
    x, y, dy = node.inputs[0], node.outputs[0], dys[0]
    kernel = [int(k) for k in node.attr("kernel_shape")]
    channels = (op.shape(x) or (None, None))[1]
    if channels is None:
        raise ValueError(f"MaxPool {node.name!r}: channel count unknown")
    offsets = list(np.ndindex(*kernel))
    hits = _first_hits(op, y, _offset_windows(op, node, x, y, kernel, offsets))
    stacked = op.Concat(*[op.unsqueeze(h, [2]) for h in hits], axis=2)  # (N, C, k·k, h, w)
    routed = op.Mul(op.Cast(stacked, to=op.float_type), op.unsqueeze(dy, [2]))
    flat = op.Reshape(routed, op.Concat(op.dims(y, 0, 1), op.const([channels * len(offsets)]),
                                        op.dims(y, 2, 2 + len(kernel)), axis=0))
    kernels = op.const(_offset_kernels(channels, kernel, offsets, op.dtype))
    return [transpose_window(op, node, flat, kernels, x, kernel, channels, y)]


def _offset_windows(op: Emitter, node: Node, x: str, y: str, kernel: list[int],
                    offsets: list[tuple[int, ...]]) -> list[Value]:
    """Per kernel offset, the values of ``x`` that offset reads for every output (shaped like
    ``y``), sliced from :func:`_padded_for_windows`: with step 1 on the last axis, from its
    phase, where that axis was split into phases."""
    r = len(kernel)
    strides, dilations = strides_dilations(node, r)
    padded, s = _padded_for_windows(op, node, x, y, kernel), strides[-1]
    # how far past its start each offset's slice reaches, per axis: the same for every offset
    span = op.Add(op.Mul(op.Sub(op.dims(y, 2, 2 + r), 1), strides), 1)
    last = op.dims(y, 1 + r, 2 + r)  # y's last spatial size
    windows = []
    for offset in offsets:
        start = [o * d for o, d in zip(offset, dilations)]
        if s == 1:
            windows.append(op.Slice(padded, op.const(start), op.Add(start, span),
                                    op.const(list(range(2, 2 + r))), op.const(strides)))
            continue
        phase, first = start[-1] % s, start[-1] // s
        stop = op.Concat(op.Slice(op.Add(start, span), op.const([0]), op.const([r - 1])),
                         op.const([phase + 1]), op.Add(last, first), axis=0)
        window = op.Slice(padded, op.const(start[:-1] + [phase, first]), stop,
                          op.const(list(range(2, 3 + r))), op.const(strides[:-1] + [1, 1]))
        windows.append(op.Reshape(window, op.const([0] * (1 + r) + [-1])))
    return windows


def _padded_for_windows(op: Emitter, node: Node, x: str, y: str, kernel: list[int]) -> Value:
    """``x`` padded with −inf (which never equals a window's max) so that every window of
    every output lies inside it, whatever the padding or ceil mode.

    Where the last axis has a stride s > 1 it is padded to a multiple of s, M·s, and split
    into its phases, (…, M, s) → (…, s, M): a slice with a step on the last axis copies
    element by element, one with step 1 copies runs. The split is a Transpose of rows
    (−1, M, s) between Reshapes, which ONNX Runtime cannot move past the Slices after it."""
    r = len(kernel)
    strides, dilations = strides_dilations(node, r)
    size_x, size_y = op.dims(x, 2, 2 + r), op.dims(y, 2, 2 + r)
    begin = spatial_begin_pads(op, node, x, kernel)
    reach = op.Add(op.Mul(op.Sub(size_y, 1), strides),  # last index any window reads, + 1
                   [(k - 1) * d + 1 for k, d in zip(kernel, dilations)])
    length = op.Max(reach, op.Add(begin, size_x))
    s = strides[-1]
    if s > 1:
        step = [1] * (r - 1) + [s]
        length = op.Mul(op.Div(op.Add(length, [t - 1 for t in step]), step), step)
    zeros = op.const([0, 0])
    end = op.Sub(length, op.Add(begin, size_x))
    padded = op.Pad(x, op.Concat(zeros, begin, zeros, end, axis=0), op.const(-np.inf))
    if s == 1:
        return padded
    columns = op.Div(op.Slice(length, op.const([r - 1]), op.const([r])), s)
    rows = op.Reshape(padded, op.Concat(op.const([-1]), columns, op.const([s]), axis=0))
    return op.Reshape(op.Transpose(rows, perm=[0, 2, 1]), op.Concat(
        op.dims(x, 0, 2), op.Slice(length, op.const([0]), op.const([r - 1])), op.const([s]),
        columns, axis=0))


def _first_hits(op: Emitter, y: str, windows: list[Value]) -> list[Value]:
    """Per kernel offset, whether that offset holds the window's first maximum (row-major):
    exactly one offset of each window does. ``unclaimed`` marks the windows no earlier offset
    has claimed; a hit lies inside it, so Xor takes it out."""
    hits = [op.Equal(windows[0], y)]
    if len(windows) == 1:
        return hits
    unclaimed = op.Not(hits[0])
    for window in windows[1:-1]:
        hits.append(op.And(op.Equal(window, y), unclaimed))
        unclaimed = op.Xor(unclaimed, hits[-1])
    return hits + [unclaimed]  # y is one of its window's values: the last offset takes the rest


def _offset_kernels(channels: int, kernel: list[int], offsets: list[tuple[int, ...]],
                    dtype: np.dtype) -> np.ndarray:
    """Grouped ConvTranspose weights (channels·k·k, 1, *kernel): filter (c, n) is one-hot at
    offset n, so each stacked part goes back to its own offset within its channel's window."""
    one_hot = np.zeros([channels * len(offsets), 1, *kernel], dtype=dtype)
    for c in range(channels):
        for n, offset in enumerate(offsets):
            one_hot[(c * len(offsets) + n, 0, *offset)] = 1.0
    return one_hot


@vjp("AveragePool")
def average_pool_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """dx = ConvTranspose(dy / count, ones per channel), cropped to x, where ``count`` is the
    window size, or the number of non-pad elements when ``count_include_pad`` is 0."""
    x, dy = node.inputs[0], dys[0]
    kernel = list(node.attr("kernel_shape"))
    channels = (op.shape(x) or (None, None))[1]
    if channels is None:
        raise ValueError(f"AveragePool {node.name!r}: channel count unknown")
    area = float(np.prod(kernel))
    if node.attr("count_include_pad", 0) or not has_pads(node):
        scaled = op.Div(dy, area)
    else:
        counts = op.Mul(op.AveragePool(op.Expand(op.const(1.0), op.Shape(x)), **dict(
            node.attrs, count_include_pad=1)), area)
        scaled = op.Div(dy, counts)
    ones = op.const(np.ones([channels, 1] + kernel, dtype=op.dtype))
    return [transpose_window(op, node, scaled, ones, x, kernel, channels,
                             node.outputs[0])]
