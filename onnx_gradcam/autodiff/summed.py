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
"""

from __future__ import annotations

import math

import numpy as np

from onnx_gradcam.autodiff.emitter import Emitter, Node, Value
from onnx_gradcam.autodiff.registry import NON_DIFFERENTIABLE
from onnx_gradcam.autodiff.rules._common import has_pads
from onnx_gradcam.graph import GraphInfo

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

