"""Quantize/dequantize pairs (QDQ models): the straight-through estimator.

The cotangent of an integer tensor made by QuantizeLinear is taken with respect to the real
number it stands for, ``q = x / s + zp`` before rounding (see
:data:`~onnx_gradcam.autodiff.registry.QUANTIZING`). The forward stays the quantized one —
the deployed model's integer kernels and rounding make the scores and activations — and the
backward differentiates the real-valued function the pair approximates:

- QuantizeLinear ``q = clip(x / s + zp, qmin, qmax)`` (rounding taken as the identity, as in
  quantization-aware training): ``dx = dq / s`` inside the representable range
  ``(qmin − zp)·s ≤ x ≤ (qmax − zp)·s``, 0 where the value is clipped. Where ``x`` is the
  float result of a QDQ node unit (DequantizeLinear → Conv → QuantizeLinear, which ONNX Runtime
  runs as one QLinearConv), the test reads the integer output instead, ``qmin < q < qmax``: a
  read of ``x`` would give it a second consumer and stop the fusion, so the forward would leave
  the deployed kernels (and their rounding). A value within half a step inside an end then
  counts as clipped, as for the QOperator ops of ``rules/qoperator.py``. A QuantizeLinear of
  values already on its grid (the DequantizeLinear of the same parameters, moved by shape ops)
  clips nothing: ``dx = dq / s``;
- DequantizeLinear ``y = (q − zp) · s``: ``dq = dy · s``.

Per-tensor and per-axis scales (opset 10–21) and every integer type ONNX defines are covered;
blocked quantization (opset 21 ``block_size``) and float8 outputs are refused.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from onnx_gradcam.autodiff.emitter import Emitter, Node, Value
from onnx_gradcam.autodiff.folding import producer
from onnx_gradcam.autodiff.registry import MOVES_VALUES, vjp
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


def _integer_type(op: Emitter, node: Node) -> int:
    """The output's integer type: the zero point's type, else ``output_dtype``, else uint8."""
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
    return elem


#: integer types ONNX Runtime's CPU kernels compare as they are (4-bit ones are widened first)
COMPARABLE = {TensorProto.UINT8, TensorProto.INT8, TensorProto.UINT16, TensorProto.INT16,
              TensorProto.INT32}


def unclipped(op: Emitter, q: Value, elem: int) -> Value:
    """qmin < q < qmax for the integer tensor ``q`` of type ``elem``: where a quantizing op's
    output was not clipped (a value rounded onto an end counts as clipped)."""
    qmin, qmax = INTEGER_RANGES[elem]
    if elem not in COMPARABLE:
        q, elem = op.Cast(q, to=TensorProto.INT8), TensorProto.INT8
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    rank = op.known_rank(q) or 0
    low, high = (op.const(np.full((1,) * rank, bound, dtype)) for bound in (qmin, qmax))
    return op.And(op.Greater(q, low), op.Less(q, high))


def unscaled(op: Emitter, dq: Value, scale: np.ndarray) -> Value:
    """``dq / s`` for the constant scale ``s`` (shaped to broadcast); where ``dq`` is
    ``dy · s`` made by DequantizeLinear's rule from the same scale (the backward of a
    QuantizeLinear → DequantizeLinear pair), ``dy`` itself: two full-tensor products fewer,
    and the exact quotient."""
    source = producer(op, dq)
    if source is not None and source.op_type == "Mul":
        factor = op.value_of(source.input[1])
        if factor is not None and factor.shape == scale.shape and np.array_equal(
                factor, np.asarray(scale, op.dtype)):
            return source.input[0]
    return op.Mul(dq, op.const(np.asarray(1.0 / scale.astype(np.float64), op.dtype)))


def dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None,
               axis: int = 1) -> np.ndarray:
    """DequantizeLinear of constants in numpy, rounded as ONNX Runtime's kernel rounds it:
    ``(q − zp) · s`` in the scale's type (per-axis parameters along ``axis``)."""
    shape = [1] * q.ndim
    if scale.size > 1:
        shape[axis % q.ndim] = -1
    diff = q.astype(np.int64) - (0 if zero_point is None else
                                 zero_point.astype(np.int64).reshape(shape))
    return diff.astype(scale.dtype) * scale.reshape(shape)


def _on_grid(op: Emitter, node: Node) -> bool:
    """Whether ``node``'s input holds only values its output represents exactly: made by a
    DequantizeLinear with the same per-tensor scale, zero point and integer type (then only
    moved or picked, :data:`~onnx_gradcam.autodiff.registry.MOVES_VALUES`), as when a quantizer
    requantizes a Flatten's output, or a QOperator layer is explained through a
    DequantizeLinear → QuantizeLinear pair. Nothing is clipped then, also
    where an integer sits at an end of its range."""
    x = node.inputs[0]
    source = op.producers.get(x)
    while (source is not None and source.op_type in MOVES_VALUES
           and source.domain in ("", "ai.onnx")):
        source = op.producers.get(source.input[0])
    if source is None or source.op_type != "DequantizeLinear" or len(source.input) < 2:
        return False
    ours = [op.value_of(node.input(i)) for i in (1, 2)]
    theirs = [op.value_of(source.input[i]) if len(source.input) > i and source.input[i]
              else None for i in (1, 2)]
    if any(v is None for v in (*ours, *theirs)) or ours[0].size != 1:
        return False  # (without zero points the integer types are not both known)
    return (np.array_equal(ours[0], theirs[0]) and ours[1].dtype == theirs[1].dtype
            and np.array_equal(ours[1], theirs[1]))


@vjp("QuantizeLinear")
def quantize_linear_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """q = clip(x/s + zp, qmin, qmax) (straight through the rounding); dx = dq/s inside the
    representable range, 0 where x is clipped (tested on x, or on q in a node unit: module doc)."""
    x, dq = node.inputs[0], dys[0]
    elem = _integer_type(op, node)
    scale = _per_axis(op, node, node.inputs[1], x)
    known = op.value_of(scale)
    if known is not None:  # the usual case: 1/s is a constant
        dx = unscaled(op, dq, known)
    else:
        dx = op.Div(dq, op.CastLike(scale, dq) if op.opset >= 15 else scale)
    if _on_grid(op, node):
        return [dx, None, None]
    if _fused_result(op, x):
        inside = unclipped(op, node.outputs[0], elem)
    else:
        inside = _representable(op, node, x, INTEGER_RANGES[elem])
    return [op.masked(inside, dx, node.outputs[0]), None, None]


def _fused_result(op: Emitter, x: str) -> bool:
    """Whether ``x`` is the float result of a QDQ node unit (a node whose tensor inputs all come
    from DequantizeLinear), which ONNX Runtime runs as one integer kernel with the
    QuantizeLinear after it."""
    source = op.producers.get(x)
    if source is None or source.domain not in ("", "ai.onnx"):
        return False
    made = [op.producers.get(i) for i in source.input if i and op.value_of(i) is None]
    return bool(made) and all(m is not None and m.op_type == "DequantizeLinear" for m in made)


def _representable(op: Emitter, node: Node, x: str, bounds: tuple[int, int]) -> Value:
    """(qmin − zp)·s ≤ x ≤ (qmax − zp)·s: ``x`` lies in the output's representable range."""
    qmin, qmax = bounds
    zero_point = np.zeros((), np.float64)
    if node.input(2) is not None:
        zero_point = op.value_of(_per_axis(op, node, node.inputs[2], x)).astype(np.float64)
    scale = _per_axis(op, node, node.inputs[1], x)
    known = op.value_of(scale)
    if known is not None:  # bounds are constants: two compares a call
        value = x
        low, high = (op.const(np.asarray((q - zero_point) * known.astype(np.float64), op.dtype))
                     for q in (qmin, qmax))
    else:
        s = op.CastLike(scale, x) if op.opset >= 15 else scale
        value = op.Add(op.Div(x, s), op.const(np.asarray(zero_point, op.dtype)))
        low, high = float(qmin), float(qmax)
    if op.opset >= 12:  # GreaterOrEqual and LessOrEqual arrived in opset 12
        return op.And(op.GreaterOrEqual(value, low), op.LessOrEqual(value, high))
    return op.Not(op.Or(op.Less(value, low), op.Greater(value, high)))


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
