"""The per-channel mean of a layer's gradient over its positions, without forming the gradient.

Grad-CAM needs only w_k = (1/h·w) Σ_ij ∂s/∂A_kij. In a VGG-style head the layer A is pooled,
flattened and multiplied by a constant weight matrix, y = flatten(pool(A))·W, and the backward
pass to A re-reads all of W (12800 × 4096 values in VGG16 at 160 px) to form
g_x = g_y·Wᵀ, only for Grad-CAM to sum it over the positions again. The sums commute with the
ops in between:

* MaxPool sends each output's cotangent to exactly one input position (the first maximum; pads
  never win), AveragePool without padding or ceil mode spreads it evenly over its window: both
  keep each channel's sum over the positions;
* Transpose, Reshape, Flatten, Identity and Dropout only move values;

so Σ_positions g_A = Σ_positions reshape(g_y·Wᵀ) = g_y·Q, with Q (J, K) = W's rows summed over
the positions each row stands for: a constant ONNX Runtime folds when the session loads, and
one (N, J) × (J, K) product per run instead of (N, J) × (J, h·w·K).

At an early layer the expensive step is the other end: the last backward op, which forms
∂s/∂A at A's full resolution (a stride-2 depthwise conv's transposed conv). The sums commute
with the layer's consumers too (:func:`consumer_gradient_mean`): each channel's sum over A's
positions is a few border-aware sums of the consumers' output cotangents, weighed by their
constant weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from onnx_gradcam.autodiff.emitter import Emitter, Node, Value
from onnx_gradcam.autodiff.folding import per_channel
from onnx_gradcam.autodiff.registry import NON_DIFFERENTIABLE
from onnx_gradcam.autodiff.rules._common import has_pads, static_begin_pads, strides_dilations
from onnx_gradcam.graph import GraphInfo, attr

#: an axis of a tensor on the way, as the (size, role) factors it is made of, in row-major
#: order; role "c" is A's channel axis, "s" a position axis
Factors = list[tuple[int, str]]


def gradient_mean(op: Emitter, info: GraphInfo, activation: str, channel_axis: int,
                  head: list[int], cotangents: dict[str, str]) -> Value | None:
    """(N, K): the mean over the positions of ∂score/∂``activation`` per channel, where the
    head from ``activation`` (rank 4, static except the batch, channels on ``channel_axis``)
    is a chain of the ops above ending in MatMul/Gemm with a constant weight, and
    ``cotangents`` holds that product's output cotangent; otherwise None."""
    shape = info.shapes.get(activation)
    if shape is None or len(shape) != 4 or None in shape[1:]:
        return None
    axes: list[Factors] = [[(d, "c" if i == channel_axis else "s")]
                           for i, d in enumerate(shape) if i > 0]
    positions = math.prod(d for i, d in enumerate(shape[1:], 1) if i != channel_axis)
    steps = {i for i in head if info.nodes[i].op_type not in NON_DIFFERENTIABLE}
    tensor = activation
    while True:
        users = [i for i in info.consumers.get(tensor, []) if i in steps]
        if len(users) != 1 or list(info.nodes[users[0]].input).count(tensor) != 1:
            return None
        proto = info.nodes[users[0]]
        node = Node.from_proto(proto)
        if node.inputs[0] != tensor:
            return None
        if node.op_type in ("MatMul", "Gemm"):
            return _product(op, info, node, axes, shape[channel_axis], positions, cotangents)
        if any(o in info.consumers and set(
                info.consumers[o]) & steps for o in proto.output[1:]):
            return None
        axes = _carry(node, axes, info.shapes.get(node.outputs[0]))
        if axes is None:
            return None
        tensor = node.outputs[0]


def _carry(node: Node, axes: list[Factors], out: tuple[int | None, ...] | None
           ) -> list[Factors] | None:
    """The factors of ``node``'s output axes (batch excluded), or None where ``node`` may
    change a channel's sum over the positions."""
    if node.op_type in ("Identity", "Dropout"):
        return axes
    flat = [f for axis in axes for f in axis]
    if node.op_type in ("Reshape", "Flatten") and out is not None and len(out) == 2:
        # a flattening to (N, F) even where shape inference lost F (a shape computed in the
        # graph): F is checked against the weight it meets (:func:`_product`)
        size = math.prod(s for s, _ in flat)
        if node.op_type == "Flatten" and node.attr("axis", 1) != 1 or out[1] not in (None, size):
            return None
        return _regroup(flat, [size])
    if out is None or None in out[1:]:
        return None
    if node.op_type in ("MaxPool", "AveragePool"):
        if len(axes) != 3 or [r for _, r in axes[0]] != ["c"] or not _sum_preserving(node):
            return None
        return [axes[0], [(out[2], "s")], [(out[3], "s")]]
    if node.op_type == "Transpose":
        perm = node.attr("perm")
        if perm is None or perm[0] != 0:
            return None
        return [axes[p - 1] for p in perm[1:]]
    if node.op_type == "Reshape":
        return _regroup(flat, list(out[1:]))
    return None


def _sum_preserving(node: Node) -> bool:
    if node.op_type == "MaxPool":
        return len(node.outputs) == 1 or not node.outputs[1]
    return not has_pads(node) and not node.attr("ceil_mode", 0)


def _regroup(flat: Factors, dims: list[int]) -> list[Factors] | None:
    """``flat``'s factors split into consecutive groups whose sizes are ``dims`` (a reshape),
    or None where a factor would be cut in two."""
    groups: list[Factors] = []
    rest = list(flat)
    for dim in dims:
        group: Factors = []
        size = 1
        while rest and size < dim:
            size *= rest[0][0]
            group.append(rest.pop(0))
        if size != dim:
            return None
        groups.append(group)
    return groups if all(s == 1 for s, _ in rest) else None


def _product(op: Emitter, info: GraphInfo, node: Node, axes: list[Factors], channels: int,
             positions: int, cotangents: dict[str, str]) -> Value | None:
    """g_y·Q for ``node`` = flatten(…)·W: W's rows reshaped to the factors of the flattened
    axis, summed over the position factors and scaled by 1/(h·w), as constant-folded nodes."""
    weight = node.inputs[1]
    wshape = info.shapes.get(weight) if weight in info.constants else None  # not its values
    dy = cotangents.get(node.outputs[0])
    if (len(axes) != 1 or wshape is None or len(wshape) != 2 or weight in info.overridable
            or dy is None or node.attr("transA", 0)):
        return None
    sizes = [s for s, _ in axes[0]]
    roles = [r for _, r in axes[0]]
    transposed = node.op_type == "Gemm" and node.attr("transB", 0)
    if (roles.count("c") != 1 or sizes[roles.index("c")] != channels
            or wshape[1 if transposed else 0] != math.prod(sizes)):
        return None
    summed = [i for i, r in enumerate(roles) if r == "s"]
    scale = float(node.attr("alpha", 1.0)) if node.op_type == "Gemm" else 1.0
    if transposed:  # W (J, F): Q = Σ_s W reshaped (J, …) → (J, K)
        q = op.reduce("ReduceSum", op.Reshape(weight, op.const([wshape[0], *sizes])),
                      [1 + i for i in summed], keepdims=0)
    else:  # W (F, J): Σ_s W reshaped (…, J) → (K, J), then (J, K)
        q = op.Transpose(op.reduce("ReduceSum", op.Reshape(weight, op.const([*sizes, -1])),
                                   summed, keepdims=0), perm=[1, 0])
    factor = np.asarray(scale / positions, dtype=info.dtype(weight))
    return op.MatMul(dy, op.Mul(q, op.const(factor)))


# ---- the consumers of the layer: Σ_positions ∂s/∂A from their output cotangents ------------
#: where A's values lie in a tensor on the way to its consumers, per axis after the batch: "c"
#: (A's channel axis) or (k, start): A's spatial axis k, from ``start`` on (a Pad's border
#: before it)
Place = tuple[str | tuple[int, int], ...]


def consumer_gradient_mean(op: Emitter, info: GraphInfo, activation: str, channel_axis: int,
                           head: list[int], cotangents: dict[str, str]) -> Value | None:
    """(N, K): the mean over the positions of ∂score/∂``activation`` per channel, from the
    output cotangents (``cotangents``, by forward tensor) of the head nodes that read it,
    where each is a Conv with a constant weight or a same-shape Add/Sub, reached directly or
    through Identity, Transpose and constant Pad; otherwise None.

    A Conv y = conv(x, W) sends Σ_positions ∂s/∂x[n, cin] = Σ_taps Σ_cout W[cout, cin, t] ·
    R_t[n, cout], R_t the sum of dy over the output positions whose input at tap t lies inside
    A (not in a pad): a rectangle per tap, the few distinct ones summed in one product of dy
    (N, C, positions) with a constant 0/1 matrix (positions, rectangles); the products with W
    are then elementwise for a depthwise conv, one small MatMul for a dense one. An Add or Sub
    passes dy on: its mean over A's positions. The full-size gradient at A, and the
    transposed conv that forms it, are never needed; the sums are those of the same float32
    products, in another order."""
    shape = info.shapes.get(activation)
    if shape is None or len(shape) != 4 or None in shape[1:]:
        return None
    sizes = [d for i, d in enumerate(shape[1:], 1) if i != channel_axis]
    spatial = iter(range(2))
    place: Place = tuple("c" if i == channel_axis else (next(spatial), 0) for i in range(1, 4))
    steps = {i for i in head if info.nodes[i].op_type not in NON_DIFFERENTIABLE}
    parts: list[Callable[[], Value]] = []  # emitted once every consumer is known
    pending = [(activation, place)]
    while pending:
        tensor, place = pending.pop()
        for index in info.consumers.get(tensor, []):
            if index not in steps:
                continue
            node = Node.from_proto(info.nodes[index])
            uses = [j for j, x in enumerate(node.inputs) if x == tensor]
            if uses == [0] and node.op_type in ("Identity", "Transpose", "Pad"):
                moved = _moved(info, node, place)
                if moved is None:
                    return None
                pending.append((node.outputs[0], moved))
                continue
            if node.op_type in ("Add", "Sub"):
                part = _passed_mean(op, info, node, uses, place, sizes, cotangents)
            elif uses == [0] and node.op_type == "Conv":
                part = _conv_mean(op, info, node, place, sizes, cotangents)
            else:
                return None
            if part is None:
                return None
            parts.append(part)
    if not parts:
        return None
    total = parts[0]()
    for part in parts[1:]:
        total = op.Add(total, part())
    return total


def _moved(info: GraphInfo, node: Node, place: Place) -> Place | None:
    """Where A's values lie in the output of ``node`` (Identity, Transpose or a constant Pad
    of spatial axes only) when they lie at ``place`` in its input; None where unknown."""
    if node.op_type == "Identity":
        return place
    if node.op_type == "Transpose":
        perm = node.attr("perm")
        return tuple(place[p - 1] for p in perm[1:]) if perm and perm[0] == 0 else None
    pads = info.constant(node.input(1))
    if (node.attr("mode", "constant") != "constant" or info.opset < 11 or node.input(3)
            or pads is None or pads.size != 8 or (pads < 0).any()):
        return None  # the fill value does not matter: the border is no function of A
    moved = []
    for axis, where in enumerate(place, 1):
        if where == "c":
            if pads[axis] or pads[axis + 4]:
                return None
            moved.append(where)
        else:
            moved.append((where[0], where[1] + int(pads[axis])))
    return None if pads[0] or pads[4] else tuple(moved)


def _passed_mean(op: Emitter, info: GraphInfo, node: Node, uses: list[int], place: Place,
                 sizes: list[int], cotangents: dict[str, str]) -> Callable[[], Value] | None:
    """For an Add/Sub without broadcasting that reads A (at ``place``) as its inputs ``uses``,
    what emits its output cotangent's mean over A's positions, once per use, negated for
    Sub's second input; None where it cannot."""
    y = node.outputs[0]
    dy = cotangents.get(y)
    shape = info.shapes.get(y)
    if dy is None or shape is None or any(info.shapes.get(x) != shape for x in node.inputs):
        return None
    axes = [a for a, where in enumerate(place, 1) if where != "c"]
    starts = [place[a - 1][1] for a in axes]
    ends = [s + sizes[place[a - 1][0]] for s, a in zip(starts, axes)]
    sign = sum(-1 if node.op_type == "Sub" and j == 1 else 1 for j in uses)

    def emit() -> Value:
        inside = dy
        if any(s or e != shape[a] for s, e, a in zip(starts, ends, axes)):
            inside = op.Slice(dy, op.const(starts), op.const(ends), op.const(axes))
        mean = op.reduce("ReduceMean", inside, axes, keepdims=0)
        return mean if sign == 1 else op.Mul(mean, float(sign))
    return emit


def _conv_mean(op: Emitter, info: GraphInfo, node: Node, place: Place, sizes: list[int],
               cotangents: dict[str, str]) -> Callable[[], Value] | None:
    """What emits the part of the mean (N, K) that the Conv ``node`` sends back to A, which
    lies at ``place`` in its input (see :func:`consumer_gradient_mean`); None where it
    cannot."""
    x, y = node.inputs[0], node.outputs[0]
    weight = info.constant(node.input(1))
    dy, perm, scaled = cotangents.get(y), None, None
    if dy is None and weight is not None:
        scaled = _scaled_output(info, y, cotangents)
        if scaled is not None and scaled[2].size in (1, weight.shape[0]):
            # the conv's backward took the scale into its weight: the same constant here
            dy, perm, scale = scaled
            weight = (weight * scale.reshape(-1, 1, 1, 1)).astype(weight.dtype)
    x_shape, y_shape = info.shapes.get(x), info.shapes.get(y)
    if (dy is None or weight is None or weight.ndim != 4 or place[0] != "c"
            or x_shape is None or y_shape is None or None in x_shape[1:] + y_shape[1:]):
        return None
    group = int(node.attr("group", 1))
    outs, ins = weight.shape[:2]
    if group != 1 and ins != 1:
        return None  # grouped convs other than depthwise: the full gradient
    begin = static_begin_pads(node, x_shape[2:], weight.shape[2:])
    strides, dilations = strides_dilations(node, 2)
    # per spatial axis: each tap's range [lo, hi) of outputs whose input lies inside A
    ranges = []
    for a in range(2):
        k, start = place[1 + a]
        ranges.append([_inside(start + begin[a] - t * dilations[a], sizes[k], strides[a],
                               int(y_shape[2 + a])) for t in range(weight.shape[2 + a])])
    rows, cols = (sorted(set(r)) for r in ranges)
    height, width = int(y_shape[2]), int(y_shape[3])
    rectangles = np.zeros((height, width, len(rows), len(cols)), dtype=op.dtype)
    for i, (lo, hi) in enumerate(rows):
        for j, (left, right) in enumerate(cols):
            rectangles[lo:hi, left:right, i, j] = 1
    taps = [rows.index(r) * len(cols) + cols.index(c) for r in ranges[0] for c in ranges[1]]
    w, channels = node.inputs[1], int(x_shape[1])
    if scaled is not None:
        w = op.const(weight)

    def emit() -> Value:
        # d is on the NHWC side of tf2onnx's Transpose where the scale was behind it
        g = dy if perm is None else op.Transpose(dy, perm=[perm.index(a) for a in range(4)])
        if rectangles.all():  # one rectangle, all of dy (no border: a 1×1 conv)
            sums = op.reduce("ReduceSum", g, [2, 3])
        else:
            sums = op.MatMul(op.Reshape(g, op.const([0, outs, -1])),
                             op.const(rectangles.reshape(height * width, -1)))
        # R_t (N, C_out, taps), then the products with W itself and their sums in float32,
        # as the transposed conv has them (no sums of weights rounded into constants)
        per_tap = op.Gather(op.Reshape(sums, op.const([0, outs, -1])), op.const(taps), axis=2)
        if group == 1:  # Σ_cout,t R_t[n, cout]·W[cout, cin, t]: one (C_out·taps, C_in) MatMul
            flat = op.Reshape(op.Transpose(w, perm=[0, 2, 3, 1]), op.const([-1, ins]))
            total = op.MatMul(op.Reshape(per_tap, op.const([0, -1])), flat)
        else:  # depthwise: C_out = C_in · multiplier, output channel c·m + i reads input c
            product = op.Mul(per_tap, op.Reshape(w, op.const([outs, -1])))
            total = op.reduce("ReduceSum", op.Reshape(product, op.const([0, channels, -1])),
                              [2], keepdims=0)
        return op.Div(total, float(math.prod(sizes)))
    return emit


def _scaled_output(info: GraphInfo, y: str, cotangents: dict[str, str]
                   ) -> tuple[str, list[int] | None, np.ndarray] | None:
    """(d, perm, c) where the conv output ``y`` only feeds a per-channel constant scale c
    (a batch norm's Mul, also behind tf2onnx's Transpose ``perm``) and d is that product's
    cotangent: the conv's backward then reads d with c taken into its weight
    (:func:`~onnx_gradcam.autodiff.folding.channel_scale`), and y's own cotangent is never
    formed. None otherwise."""
    users, perm = info.consumers.get(y, []), None
    if len(users) == 1 and info.nodes[users[0]].op_type == "Transpose":
        perm = [int(a) for a in attr(info.nodes[users[0]], "perm", [])]
        users = info.consumers.get(info.nodes[users[0]].output[0], []) if len(perm) == 4 else []
    if len(users) != 1 or info.nodes[users[0]].op_type != "Mul":
        return None
    mul = info.nodes[users[0]]
    d = cotangents.get(mul.output[0])
    axis = perm.index(1) if perm else 1  # y's channels in the Mul's tensor
    for c in mul.input:
        scale = per_channel(info.constant(c), 4, axis)
        if d is not None and scale is not None:
            return d, perm, scale
    return None


def _inside(offset: int, size: int, stride: int, count: int) -> tuple[int, int]:
    """[lo, hi): the outputs o < ``count`` with 0 ≤ o·stride − offset < size."""
    lo = min(max(-(-offset // stride), 0), count)
    hi = min(max((offset + size - 1) // stride + 1, lo), count)
    return lo, hi
