"""Element-wise ops: broadcasting arithmetic and activations."""

from __future__ import annotations

import math

import numpy as np

from onnx_gradcam.autodiff.emitter import Emitter, Node, Value
from onnx_gradcam.autodiff.registry import unary_vjp, vjp
from onnx_gradcam.autodiff.rules._common import Dys, unbroadcast


@vjp("Add")
def add_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """dA = dY, dB = dY (each summed over its broadcast axes)."""
    a, b = node.inputs
    (dy,) = dys
    y = node.outputs[0]
    return [unbroadcast(op, dy, a, y), unbroadcast(op, dy, b, y)]


@vjp("Sub")
def sub_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """dA = dY, dB = −dY (each summed over its broadcast axes)."""
    a, b = node.inputs
    (dy,) = dys
    y = node.outputs[0]
    return [unbroadcast(op, dy, a, y), unbroadcast(op, op.Neg(dy), b, y)]


@vjp("Mul")
def mul_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """dA = dY·B, dB = dY·A (each summed over its broadcast axes)."""
    a, b = node.inputs
    (dy,) = dys
    y = node.outputs[0]
    return [unbroadcast(op, op.Mul(dy, b), a, y), unbroadcast(op, op.Mul(dy, a), b, y)]


@vjp("Div")
def div_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """dA = dY / B, dB = −dY·Y / B (each summed over its broadcast axes)."""
    a, b = node.inputs
    (dy,) = dys
    y = node.outputs[0]
    da = op.Div(dy, b)
    return [unbroadcast(op, da, a, y), unbroadcast(op, op.Neg(op.Mul(da, y)), b, y)]


@vjp("Identity", "Dropout")
def identity_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """dx = dy (Dropout at inference is the identity; its mask output has no gradient)."""
    if node.op_type == "Dropout" and node.input(2) is not None:
        mode = op.value_of(node.input(2))
        if mode is None or bool(mode):
            raise ValueError("Dropout in training mode is not differentiable here")
    return [dys[0]] + [None] * (len(node.inputs) - 1)


@vjp("Cast")
def cast_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """dx = Cast(dy) back to the input's type (a float→float cast)."""
    return [op.CastLike(dys[0], node.inputs[0]) if op.opset >= 15 else dys[0]]


@vjp("Neg")
def neg_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """dx = −dy"""
    return [op.Neg(dys[0])]


@vjp("Relu")
def relu_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """dx = dy · 1[x > 0], read as 1[y > 0] (the same set): the backward then needs only the
    output, so ONNX Runtime can still fuse the activation into the conv before it."""
    return [op.masked(op.Greater(node.outputs[0], 0.0), dys[0], node.outputs[0])]


@vjp("LeakyRelu")
def leaky_relu_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """dx = dy where x > 0, α·dy elsewhere"""
    alpha = float(node.attr("alpha", 0.01))
    dy = dys[0]
    return [op.Where(op.Greater(node.inputs[0], 0.0), dy, op.Mul(dy, alpha))]


@vjp("PRelu")
def prelu_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """dx = dy where x > 0, slope·dy elsewhere; dslope = Σ dy·x over x ≤ 0 (broadcast-summed)."""
    x, slope = node.inputs
    dy, y = dys[0], node.outputs[0]
    positive = op.Greater(x, 0.0)
    dx = op.Where(positive, dy, op.Mul(dy, slope))
    dslope = unbroadcast(op, op.Where(positive, 0.0, op.Mul(dy, x)), slope, y)
    return [dx, dslope]


@vjp("Clip")
def clip_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """dx = dy · 1[min < x < max] (bounds from inputs, or attributes before opset 11), read as
    1[min < y < max], the same set (y is x there and a bound elsewhere), as for Relu."""
    y = node.outputs[0]
    if op.opset >= 11:
        low, high = node.input(1), node.input(2)
    else:
        low, high = node.attr("min"), node.attr("max")
    inside = None
    for bound, compare in ((low, "Greater"), (high, "Less")):
        if bound is None:
            continue
        test = op.emit(compare, y, float(bound) if isinstance(bound, float) else bound)
        inside = test if inside is None else op.And(inside, test)
    dy = dys[0]
    dx = dy if inside is None else op.masked(inside, dy, node.outputs[0])
    return [dx] + [None] * (len(node.inputs) - 1)


@vjp("Where")
def where_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """dA = dY where cond, dB = dY where not cond (each summed over its broadcast axes)."""
    cond, a, b = node.inputs
    dy, y = dys[0], node.outputs[0]
    return [None, unbroadcast(op, op.Where(cond, dy, 0.0), a, y),
            unbroadcast(op, op.Where(cond, 0.0, dy), b, y)]


def _sigmoid(op: Emitter, x: Value, y: Value) -> Value:
    """σ'(x) = y·(1 − y)"""
    return op.Mul(y, op.Sub(1.0, y))


def _tanh(op: Emitter, x: Value, y: Value) -> Value:
    """tanh'(x) = 1 − y²"""
    return op.Sub(1.0, op.Mul(y, y))


def _exp(op: Emitter, x: Value, y: Value) -> Value:
    """exp'(x) = y"""
    return y


def _log(op: Emitter, x: Value, y: Value) -> Value:
    """log'(x) = 1 / x"""
    return op.Reciprocal(x)


def _sqrt(op: Emitter, x: Value, y: Value) -> Value:
    """sqrt'(x) = 0.5 / y"""
    return op.Div(0.5, y)


def _reciprocal(op: Emitter, x: Value, y: Value) -> Value:
    """(1/x)' = −y²"""
    return op.Neg(op.Mul(y, y))


def _erf(op: Emitter, x: Value, y: Value) -> Value:
    """erf'(x) = 2/√π · exp(−x²)"""
    return op.Mul(2.0 / math.sqrt(math.pi), op.Exp(op.Neg(op.Mul(x, x))))


def _abs(op: Emitter, x: Value, y: Value) -> Value:
    """|x|' = sign(x)"""
    return op.Sign(x)


def _softplus(op: Emitter, x: Value, y: Value) -> Value:
    """softplus'(x) = σ(x)"""
    return op.Sigmoid(x)


def _sin(op: Emitter, x: Value, y: Value) -> Value:
    """sin'(x) = cos(x)"""
    return op.Cos(x)


def _cos(op: Emitter, x: Value, y: Value) -> Value:
    """cos'(x) = −sin(x)"""
    return op.Neg(op.Sin(x))


for _op_type, _derivative in {
    "Sigmoid": _sigmoid, "Tanh": _tanh, "Exp": _exp, "Log": _log, "Sqrt": _sqrt,
    "Reciprocal": _reciprocal, "Erf": _erf, "Abs": _abs, "Softplus": _softplus,
    "Sin": _sin, "Cos": _cos,
}.items():
    unary_vjp(_op_type, _derivative)


def swish_vjp(op: Emitter, x: Value, s: Value, y: Value, dy: Value) -> Value:
    """y = x·s with s = σ(x) (one unit: :func:`~onnx_gradcam.autodiff.builder.swish_units`):
    dx = dy·(s + y·(1 − s)), four passes over the tensor where the Mul's and the Sigmoid's
    rules apart take six. In float32, 1 − s is HardSigmoid(s; −1, 1) (s is in [0, 1]; ONNX
    Runtime's HardSigmoid is float32 only): with the other ops, products and sums of
    same-shaped tensors, ONNX Runtime runs it in the blocked (NCHWc) layout of the
    convolution that made x, where a Sub would reorder x, s and y to plain NCHW (dy and dx
    are declared shaped like y and x for that)."""
    complement = (op.HardSigmoid(s, alpha=-1.0, beta=1.0) if np.dtype(op.dtype) == np.float32
                  else op.Sub(1.0, s))
    grad = op.Add(s, op.Mul(y, complement))
    dx = op.Mul(dy, grad)
    if isinstance(dy, str):
        op.shaped_like.update({dy: y, grad: x, dx: x})
    return dx


@vjp("HardSigmoid")
def hard_sigmoid_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """y = clip(αx + β, 0, 1); dx = α·dy where 0 < αx + β < 1"""
    alpha, beta = float(node.attr("alpha", 0.2)), float(node.attr("beta", 0.5))
    z = op.Add(op.Mul(node.inputs[0], alpha), beta)
    inside = op.And(op.Greater(z, 0.0), op.Less(z, 1.0))
    return [op.masked(inside, op.Mul(dys[0], alpha), node.outputs[0])]


@vjp("HardSwish")
def hard_swish_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """y = x·clip(x/6 + ½, 0, 1); dx = dy·(x/3 + ½) on −3 < x < 3, dy on x ≥ 3, 0 below."""
    x, dy = node.inputs[0], dys[0]
    middle = op.Mul(dy, op.Add(op.Div(x, 3.0), 0.5))
    inner = op.Where(op.Less(x, 3.0), middle, dy)
    return [op.masked(op.Greater(x, -3.0), inner, node.outputs[0])]


@vjp("Elu")
def elu_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """dx = dy where x > 0, dy·(y + α) elsewhere"""
    alpha = float(node.attr("alpha", 1.0))
    x, y, dy = node.inputs[0], node.outputs[0], dys[0]
    return [op.Where(op.Greater(x, 0.0), dy, op.Mul(dy, op.Add(y, alpha)))]


@vjp("Gelu")
def gelu_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """exact: Φ(x) + x·φ(x); tanh approx: ½(1+t) + ½x(1−t²)·√(2/π)(1 + 3·0.044715x²)"""
    x, dy = node.inputs[0], dys[0]
    if node.attr("approximate", "none") == "tanh":
        c = math.sqrt(2.0 / math.pi)
        x2 = op.Mul(x, x)
        t = op.Tanh(op.Mul(op.Mul(x, op.Add(op.Mul(x2, 0.044715), 1.0)), c))
        dt = op.Mul(op.Sub(1.0, op.Mul(t, t)), op.Mul(op.Add(op.Mul(x2, 3 * 0.044715), 1.0), c))
        grad = op.Add(op.Mul(op.Add(t, 1.0), 0.5), op.Mul(op.Mul(x, dt), 0.5))
    else:
        cdf = op.Mul(op.Add(op.Erf(op.Mul(x, 1.0 / math.sqrt(2.0))), 1.0), 0.5)
        pdf = op.Mul(op.Exp(op.Mul(op.Mul(x, x), -0.5)), 1.0 / math.sqrt(2.0 * math.pi))
        grad = op.Add(cdf, op.Mul(x, pdf))
    return [op.Mul(dy, grad)]


@vjp("Pow")
def pow_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """dA = dY·B·A^(B−1); dB = dY·Y·log(A) (each summed over its broadcast axes)."""
    a, b = node.inputs
    dy, y = dys[0], node.outputs[0]
    b_like = op.CastLike(b, a) if op.opset >= 15 else b
    da = op.Mul(dy, op.Mul(b_like, op.Pow(a, op.Sub(b_like, 1.0))))
    db = op.Mul(dy, op.Mul(y, op.Log(a)))
    return [unbroadcast(op, da, a, y), unbroadcast(op, db, b, y)]


@vjp("Max", "Min")
def max_min_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """dX_i = dY where X_i equals the result (ties: every tied input gets dY)."""
    dy, y = dys[0], node.outputs[0]
    return [unbroadcast(op, op.Where(op.Equal(x, y), dy, 0.0), x, y) for x in node.inputs]


@vjp("Sum")
def sum_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """dX_i = dY (each summed over its broadcast axes)."""
    dy, y = dys[0], node.outputs[0]
    return [unbroadcast(op, dy, x, y) for x in node.inputs]
