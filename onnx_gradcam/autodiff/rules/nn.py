"""Neural-network layers: convolution, normalisation, softmax."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from onnx_gradcam.autodiff.emitter import Emitter, Node, Value
from onnx_gradcam.autodiff.folding import FOLD_LIMIT, channel_scale
from onnx_gradcam.autodiff.registry import vjp
from onnx_gradcam.autodiff.rules._common import Dys, strides_dilations, transpose_window


def dense_pointwise(op: Emitter, node: Node, dy: Value, w: str, x: str, kernel: Sequence[int],
                    group: int) -> Value | None:
    """A 1×1 conv with stride 1, no padding and one group on a 1×1 map is a dense layer:
    dX = dY·W as one GEMM (N, Cout) × (Cout, Cin) that reads W once for the whole batch (and
    a one-hot dY gathers rows of W). None where the conv is not of that kind (other stride-1
    convs, 1×1 or not, are a Conv with the flipped kernel: :func:`transpose_window`)."""
    r = len(kernel)
    strides, _ = strides_dilations(node, r)
    padded = node.attr("auto_pad", "NOTSET") == "NOTSET" and any(node.attr("pads", [0] * 2 * r))
    if group != 1 or any(k != 1 for k in kernel) or any(s != 1 for s in strides) or padded:
        return None
    shape, w_shape = op.shape(x), op.shape(w)
    if shape is None or any(d != 1 for d in shape[2:]):
        return None
    w2d = op.Reshape(w, op.const([0, -1]))
    outs = w_shape[0] if w_shape and w_shape[0] else 0  # static: Reshapes around it fold
    return op.reshape_like(op.rows_product(op.rows(dy, outs), w2d), x)


@vjp("Conv")
def conv_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """dX = ConvTranspose(dY, W) with the forward strides/dilations/group, cropped to X (a
    Conv with the flipped kernel at stride 1, a GEMM for dense 1×1 convs:
    :func:`dense_pointwise`); dB = Σ dY over batch and spatial axes.
    (W is a weight: not differentiated.)"""
    x, w = node.inputs[0], node.inputs[1]
    dy = dys[0]
    w_shape = op.shape(w)
    kernel = node.attr("kernel_shape") or (list(w_shape[2:]) if w_shape else None)
    if not kernel or any(k is None for k in kernel):
        raise ValueError(f"Conv {node.name!r}: kernel shape unknown")
    group = int(node.attr("group", 1))
    d, scaled = _scale_folded(op, dy, w, len(kernel) + 2)
    dx = dense_pointwise(op, node, d, scaled, x, kernel, group)
    if dx is None:
        dx = transpose_window(op, node, d, scaled, x, kernel, group, node.outputs[0])
    db = None
    if node.input(2) is not None:
        db = op.reduce("ReduceSum", dy, [0] + list(range(2, 2 + len(kernel))), keepdims=0)
    return [dx, None, db]


def _scale_folded(op: Emitter, dy: Value, w: str, rank: int) -> tuple[Value, str]:
    """(dy, w), or where dy = d·c scales each output channel by a constant
    (:func:`~onnx_gradcam.autodiff.folding.channel_scale`) and w is a constant, (d, w·c):
    ConvTranspose(d·c, w) = ConvTranspose(d, w·c), and the product with w is made once."""
    weight = op.value_of(w)
    scaled = channel_scale(op, dy, rank) if (
        weight is not None and w not in op.overridable and weight.size <= FOLD_LIMIT) else None
    if scaled is None or scaled[1].size not in (1, weight.shape[0]):
        return dy, w
    d, c = scaled
    folded = op.const((weight * c.reshape((-1,) + (1,) * (weight.ndim - 1))).astype(weight.dtype))
    op.know_shape(folded, weight.shape)
    return d, folded


def _channel_factor(op: Emitter, factor: Value | np.ndarray, x: str) -> Value:
    """Shape a per-channel (C,) factor as (C, 1, …, 1) to broadcast over an NC… tensor."""
    trailing = op.rank(x) - 2
    if isinstance(factor, np.ndarray):
        return op.const(factor.astype(op.dtype).reshape((-1,) + (1,) * trailing))
    return op.unsqueeze(factor, list(range(1, 1 + trailing))) if trailing else factor


@vjp("BatchNormalization")
def batch_norm_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """Inference mode: y = (x − μ)·γ/√(σ² + ε) + β, so dx = dy · γ/√(σ² + ε) per channel."""
    if node.attr("training_mode", 0) or len(node.outputs) > 1 and any(node.outputs[1:]):
        raise ValueError(f"BatchNormalization {node.name!r} is in training mode")
    x, scale, _, _, var = node.inputs[:5]
    eps = float(node.attr("epsilon", 1e-5))
    scale_v, var_v = op.value_of(scale), op.value_of(var)
    if scale_v is not None and var_v is not None:
        factor: Value | np.ndarray = scale_v.astype(np.float64) / np.sqrt(var_v + eps)
    else:
        factor = op.Div(scale, op.Sqrt(op.Add(var, eps)))
    return [op.Mul(dys[0], _channel_factor(op, factor, x)), None, None, None, None]


@vjp("InstanceNormalization")
def instance_norm_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """Normalisation over the spatial axes of each (n, c); see :func:`normalized_vjp`."""
    x, scale = node.inputs[0], node.inputs[1]
    g = op.Mul(dys[0], _channel_factor(op, scale, x))
    axes = list(range(2, op.rank(x)))
    return [normalized_vjp(op, x, g, axes, float(node.attr("epsilon", 1e-5))), None, None]


def normalized_vjp(op: Emitter, x: str, g: Value, axes: list[int], eps: float) -> Value:
    """For x̂ = (x − mean)/√(var + ε) over ``axes`` and g = dL/dx̂:
    dx = (g − mean(g) − x̂·mean(g·x̂)) / √(var + ε)."""
    xc = op.Sub(x, op.reduce("ReduceMean", x, axes))
    inv = op.Reciprocal(op.Sqrt(op.Add(op.reduce("ReduceMean", op.Mul(xc, xc), axes), eps)))
    xhat = op.Mul(xc, inv)
    centred = op.Sub(g, op.reduce("ReduceMean", g, axes))
    return op.Mul(op.Sub(centred, op.Mul(xhat, op.reduce("ReduceMean", op.Mul(g, xhat), axes))),
                  inv)


@vjp("LayerNormalization")
def layer_norm_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """y = x̂·γ + β over axes [axis, rank); dx = normalized_vjp(dy·γ)."""
    if len(node.outputs) > 1 and any(node.outputs[1:]):
        raise ValueError(f"LayerNormalization {node.name!r}: mean/inv-std outputs not supported")
    x, scale = node.inputs[0], node.inputs[1]
    rank = op.rank(x)
    axis = int(node.attr("axis", -1)) % rank
    g = op.Mul(dys[0], scale)
    dx = normalized_vjp(op, x, g, list(range(axis, rank)), float(node.attr("epsilon", 1e-5)))
    return [dx] + [None] * (len(node.inputs) - 1)


def _softmax_frame(op: Emitter, node: Node) -> tuple[int, bool]:
    """(axis, coerced): before opset 13 Softmax works on the input flattened to 2-D at ``axis``."""
    rank = op.rank(node.inputs[0])
    if op.opset >= 13:
        return int(node.attr("axis", -1)) % rank, False
    axis = int(node.attr("axis", 1)) % rank
    return axis, axis != rank - 1


def _softmax_like(op: Emitter, node: Node, dy: Value, grad) -> list[Value | None]:
    """Apply ``grad(y, dy, axis)`` on the frame Softmax/LogSoftmax work in (the input flattened
    to 2-D at ``axis`` before opset 13) and reshape back."""
    axis, coerced = _softmax_frame(op, node)
    x, y = node.inputs[0], node.outputs[0]
    if coerced:
        y, dy, axis = op.Flatten(y, axis=axis), op.Flatten(dy, axis=axis), 1
    dx = grad(y, dy, axis)
    return [op.reshape_like(dx, x) if coerced else dx]


@vjp("Softmax")
def softmax_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """dx = y·(dy − Σ_axis dy·y)"""
    return _softmax_like(op, node, dys[0], lambda y, dy, axis: op.Mul(
        y, op.Sub(dy, op.reduce("ReduceSum", op.Mul(dy, y), [axis]))))


@vjp("LogSoftmax")
def log_softmax_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """dx = dy − exp(y)·Σ_axis dy"""
    return _softmax_like(op, node, dys[0], lambda y, dy, axis: op.Sub(
        dy, op.Mul(op.Exp(y), op.reduce("ReduceSum", dy, [axis]))))
