"""Quantize/dequantize pairs (QDQ models): the straight-through estimator.

The cotangent of an integer tensor made by QuantizeLinear is taken with respect to the real
number it stands for, ``q = x / s + zp`` before rounding (see
:data:`~onnx_gradcam.autodiff.registry.QUANTIZING`). The forward stays the quantized one —
the deployed model's integer kernels and rounding make the scores and activations — and the
backward differentiates the real-valued function the pair approximates:

- QuantizeLinear ``q = clip(x / s + zp, qmin, qmax)`` (rounding taken as the identity, as in
  quantization-aware training): ``dx = dq / s`` inside the representable range, 0 where the
  value is clipped;
- DequantizeLinear ``y = (q − zp) · s``: ``dq = dy · s``.

Per-tensor and per-axis scales (opset 10–21) and every integer type ONNX defines are covered;
blocked quantization (opset 21 ``block_size``) and float8 outputs are refused.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from onnx_gradcam.autodiff.emitter import Emitter, Node, Value
from onnx_gradcam.autodiff.registry import vjp
from onnx_gradcam.autodiff.rules._common import Dys

#: (qmin, qmax) of each integer type QuantizeLinear may produce
INTEGER_RANGES = {
    TensorProto.UINT8: (0, 255), TensorProto.INT8: (-128, 127),
    TensorProto.UINT16: (0, 65535), TensorProto.INT16: (-32768, 32767),
    TensorProto.UINT4: (0, 15), TensorProto.INT4: (-8, 7),
    TensorProto.INT32: (-2**31, 2**31 - 1),
}


def _per_axis(op: Emitter, node: Node, param: Value, x: str) -> Value:
    """The scale or zero point ``param`` shaped to broadcast against ``x`` (rank r): a 1-D
    per-axis parameter becomes (1, …, C, …, 1) with C on ``node``'s ``axis``."""
    if node.attr("block_size", 0):
        raise ValueError("blocked quantization (block_size) is not supported")
    value = op.value_of(param)
    if value is not None and value.size == 1:
        return op.const(value.reshape(()))
    rank = op.known_rank(x)
    if rank is None:
        raise ValueError(f"rank of tensor {x!r} is unknown (shape inference gave none)")
    axis = int(node.attr("axis", 1)) % rank
    shape = [1] * rank
    shape[axis] = -1
    if value is not None:
        return op.const(value.reshape(shape))
    return op.Reshape(param, op.const(shape))


def _integer_range(op: Emitter, node: Node) -> tuple[int, int]:
    """The output type's (qmin, qmax): the zero point's type, else ``output_dtype``, else uint8."""
    zero_point = node.input(2)
    if zero_point is not None:
        value = op.value_of(zero_point)
        if value is None:
            raise ValueError(f"zero point {zero_point!r} is computed at run time")
        elem = helper.np_dtype_to_tensor_dtype(value.dtype)
    else:
        elem = int(node.attr("output_dtype", 0)) or TensorProto.UINT8
    if elem not in INTEGER_RANGES:
        raise ValueError(f"quantizing to {helper.tensor_dtype_to_string(elem)} is not supported")
    return INTEGER_RANGES[elem]


def _zero_point(op: Emitter, node: Node, x: str) -> np.ndarray:
    """The zero point as float64, shaped to broadcast against ``x`` (0 where absent)."""
    zero_point = node.input(2)
    if zero_point is None:
        return np.zeros((), np.float64)
    value = op.value_of(zero_point)
    if value is None:
        raise ValueError(f"zero point {zero_point!r} is computed at run time")
    shaped = op.value_of(_per_axis(op, node, zero_point, x))
    return shaped.astype(np.float64)


def _between(op: Emitter, x: Value, low: Value | float, high: Value | float) -> Value:
    """low ≤ x ≤ high (GreaterOrEqual and LessOrEqual arrived in opset 12)."""
    if op.opset >= 12:
        return op.And(op.GreaterOrEqual(x, low), op.LessOrEqual(x, high))
    return op.Not(op.Or(op.Less(x, low), op.Greater(x, high)))


@vjp("QuantizeLinear")
def quantize_linear_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """q = clip(x/s + zp, qmin, qmax) (straight through the rounding); dx = dq/s where
    (qmin − zp)·s ≤ x ≤ (qmax − zp)·s, 0 outside (the clipped values)."""
    x, dq = node.inputs[0], dys[0]
    qmin, qmax = _integer_range(op, node)
    zero_point = _zero_point(op, node, x)
    scale = _per_axis(op, node, node.inputs[1], x)
    known = op.value_of(scale)
    if known is not None:  # the usual case: bounds and 1/s are constants, two compares a call
        s = known.astype(np.float64)
        low, high = (qmin - zero_point) * s, (qmax - zero_point) * s
        inside = _between(op, x, op.const(np.asarray(low, op.dtype)),
                          op.const(np.asarray(high, op.dtype)))
        dx = op.Mul(dq, op.const(np.asarray(1.0 / s, op.dtype)))
    else:
        s = op.CastLike(scale, dq) if op.opset >= 15 else scale
        real = op.Add(op.Div(x, s), op.const(np.asarray(zero_point, op.dtype)))
        inside = _between(op, real, float(qmin), float(qmax))
        dx = op.Div(dq, s)
    return [op.Where(inside, dx, 0.0), None, None]


@vjp("DequantizeLinear")
def dequantize_linear_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """y = (q − zp)·s; dq = dy·s (the cotangent of the real number q stands for)."""
    scale = _per_axis(op, node, node.inputs[1], node.inputs[0])
    known = op.value_of(scale)
    if known is not None:
        scale = op.const(np.asarray(known, op.dtype))
    elif op.opset >= 15:
        scale = op.CastLike(scale, dys[0])
    return [op.Mul(dys[0], scale), None, None]
