"""Dynamic quantization (``quantize_dynamic``): DynamicQuantizeLinear, ConvInteger, MatMulInteger.

``quantize_dynamic`` rewrites ``Conv(x, W)`` as DynamicQuantizeLinear(x) → (q, s, zp) →
ConvInteger(q, W8, zp, W8's zp) → Cast to float → Mul by s·s_W (→ Add the bias): the forward
stays those integer kernels. As in ``rules/quant.py`` the cotangent of an integer tensor is taken
with respect to the real number it stands for:

- DynamicQuantizeLinear ``q = saturate(round(x/s) + zp)`` with s and zp from x's own range
  (``s = (max(x, 0) − min(x, 0))/255``): the range covers every value of x, so only rounding
  (of zp, half a step at an end) can reach the saturation, and nothing is clipped: straight
  through, ``dx = dq/s``. s and zp are taken as constants (their cotangents are dropped): the
  dequantized function ``(q − zp)·s = x`` does not depend on them;
- ConvInteger / MatMulInteger ``y = f(q − zp, W8 − zp_W)`` (exact in int32; f = Conv, MatMul):
  the float op's rule with the constant weight ``W8 − zp_W``; the Cast and the Mul by the scales
  after them are float ops with their own rules.
"""

from __future__ import annotations

import numpy as np

from onnx_gradcam.autodiff.emitter import Emitter, Node, Value
from onnx_gradcam.autodiff.registry import VJP_RULES, vjp
from onnx_gradcam.autodiff.rules._common import Dys


@vjp("DynamicQuantizeLinear")
def dynamic_quantize_linear_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """q = saturate(round(x/s) + zp) over x's own range: dx = dq/s (see the module's doc)."""
    return [None if dys[0] is None else op.Div(dys[0], node.outputs[1])]


def _offset_weight(op: Emitter, node: Node, index: int, zero_point: str | None,
                   axis: int) -> Value:
    """The constant ``W8 − zp_W`` in float (a per-channel zero point on ``axis``)."""
    w = op.value_of(node.inputs[index])
    if w is None:
        raise ValueError(f"{node.op_type} {node.name!r}: input {index} is computed at run time")
    zp = np.zeros(()) if zero_point is None else op.value_of(zero_point)
    if zp is None:
        raise ValueError(f"{node.op_type} {node.name!r}: zero point {zero_point!r} is computed "
                         f"at run time")
    shape = [1] * w.ndim
    if zp.size > 1:
        shape[axis] = -1
    real = w.astype(np.float64) - zp.astype(np.float64).reshape(shape)
    name = op.const(real.astype(op.dtype))
    op.know_shape(name, real.shape)
    return name


@vjp("ConvInteger")
def conv_integer_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """y = Conv(q − zp, W8 − zp_W) in int32: dq = Conv's dx with the float weight W8 − zp_W."""
    w = _offset_weight(op, node, 1, node.input(3), axis=0)
    inner = Node("Conv", node.name, [node.inputs[0], w], [node.outputs[0]], node.attrs)
    return [VJP_RULES["Conv"](op, inner, dys)[0], None, None, None]


@vjp("MatMulInteger")
def matmul_integer_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """Y = (A − zp_A)·(B8 − zp_B) in int32: dA = MatMul's dA with the float weight B8 − zp_B
    (a per-column zero point on B's last axis)."""
    b = _offset_weight(op, node, 1, node.input(3), axis=-1)
    inner = Node("MatMul", node.name, [node.inputs[0], b], [node.outputs[0]], {})
    return [VJP_RULES["MatMul"](op, inner, dys)[0], None, None, None]
