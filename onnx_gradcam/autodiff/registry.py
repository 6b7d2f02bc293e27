"""The VJP rule registry: a plain dict from op type to a pure rule function.

A rule takes ``(op, node, dys)`` — the :class:`Emitter`, the forward :class:`Node` and one
cotangent per node output (``None`` where that output gets no gradient) — and returns one
cotangent per node input (``None`` for inputs it does not differentiate). Rules never edit the
forward graph; they only emit new nodes through ``op``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from onnx_gradcam.autodiff.emitter import Emitter, Node, Value

Rule = Callable[[Emitter, Node, Sequence[Value | None]], Sequence[Value | None]]
F = TypeVar("F", bound=Callable)

VJP_RULES: dict[str, Rule] = {}

#: Ops whose outputs carry no gradient (integer, shape or index results).
NON_DIFFERENTIABLE: frozenset[str] = frozenset({
    "Shape", "Size", "ArgMax", "ArgMin", "NonZero", "Equal", "Greater", "GreaterOrEqual", "Less",
    "LessOrEqual", "Not", "And", "Or", "Xor", "IsNaN", "IsInf", "ConstantOfShape", "Range",
    "EyeLike", "RandomNormalLike", "RandomUniformLike", "Floor", "Ceil", "Round", "Sign",
})

#: Ops whose integer outputs carry a cotangent: the derivative with respect to the real number
#: the integer stands for (``x / s + zp`` before rounding; see ``rules/quant.py``).
#: Only the first output does (DynamicQuantizeLinear's scale and zero point are parameters).
QUANTIZING: frozenset[str] = frozenset({
    "QuantizeLinear", "QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul",
    "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearSigmoid", "QLinearLeakyRelu",
    "QLinearConcat", "QGemm", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"})

#: Ops whose output holds some of their first input's values, unchanged (moved, picked or passed
#: on): what is true of every input value (nonnegative, on a quantization grid) is true of the
#: output's.
MOVES_VALUES: frozenset[str] = frozenset({
    "Identity", "Dropout", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "MaxPool",
    "Gather"})

#: Of those, the ones an integer tensor passes through with a cotangent: an integer output stands
#: for the same real numbers as its integer input (the quantization parameters pass through), so
#: it carries a cotangent when its input does, and the float rule applies to float copies.
#: Dropout takes no integers; an integer Gather picks from a constant table (an embedding) in
#: the quantizers' graphs, which needs none.
INTEGER_PRESERVING: frozenset[str] = MOVES_VALUES - {"Dropout", "Gather"}


def registrar(table: dict[str, F], what: str) -> Callable[..., Callable[[F], F]]:
    """A decorator factory filling ``table`` by op type; registering an op twice raises."""

    def by_op_types(*op_types: str) -> Callable[[F], F]:
        def register(fn: F) -> F:
            for op_type in op_types:
                if op_type in table:
                    raise ValueError(f"a {what} for {op_type} is registered twice")
                table[op_type] = fn
            return fn

        return register

    return by_op_types


#: ``@vjp("Relu", ...)`` registers a rule for each op type.
vjp = registrar(VJP_RULES, "VJP rule")


def unary_vjp(op_type: str, derivative: Callable[[Emitter, Value, Value], Value]) -> None:
    """Register an element-wise rule ``dx = dy · f'(x)`` given ``derivative(op, x, y) = f'(x)``."""

    def rule(op: Emitter, node: Node, dys: Sequence[Value | None]) -> list[Value | None]:
        (dy,) = dys[:1]
        return [op.Mul(dy, derivative(op, node.inputs[0], node.outputs[0]))]

    rule.__name__ = rule.__qualname__ = f"{op_type.lower()}_vjp"
    rule.__doc__ = derivative.__doc__
    vjp(op_type)(rule)
