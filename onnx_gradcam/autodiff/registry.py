"""The VJP rule registry: a plain dict from op type to a pure rule function.

A rule takes ``(op, node, dys)`` — the :class:`Emitter`, the forward :class:`Node` and one
cotangent per node output (``None`` where that output gets no gradient) — and returns one
cotangent per node input (``None`` for inputs it does not differentiate). Rules never edit the
forward graph; they only emit new nodes through ``op``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from onnx_gradcam.autodiff.emitter import Emitter, Node, Value

Rule = Callable[[Emitter, Node, Sequence[Value | None]], Sequence[Value | None]]

VJP_RULES: dict[str, Rule] = {}

#: Ops whose outputs carry no gradient (integer, shape or index results).
NON_DIFFERENTIABLE: frozenset[str] = frozenset({
    "Shape", "Size", "ArgMax", "ArgMin", "NonZero", "Equal", "Greater", "GreaterOrEqual", "Less",
    "LessOrEqual", "Not", "And", "Or", "Xor", "IsNaN", "IsInf", "ConstantOfShape", "Range",
    "EyeLike", "RandomNormalLike", "RandomUniformLike", "Floor", "Ceil", "Round", "Sign",
})


def vjp(*op_types: str) -> Callable[[Rule], Rule]:
    """Register ``rule`` for each op type; registering an op twice raises."""

    def register(rule: Rule) -> Rule:
        for op_type in op_types:
            if op_type in VJP_RULES:
                raise ValueError(f"a VJP rule for {op_type} is registered twice")
            VJP_RULES[op_type] = rule
        return rule

    return register


def unary_vjp(op_type: str, derivative: Callable[[Emitter, Value, Value], Value]) -> None:
    """Register an element-wise rule ``dx = dy · f'(x)`` given ``derivative(op, x, y) = f'(x)``."""

    def rule(op: Emitter, node: Node, dys: Sequence[Value | None]) -> list[Value | None]:
        (dy,) = dys[:1]
        return [op.Mul(dy, derivative(op, node.inputs[0], node.outputs[0]))]

    rule.__name__ = rule.__qualname__ = f"{op_type.lower()}_vjp"
    rule.__doc__ = derivative.__doc__
    vjp(op_type)(rule)
