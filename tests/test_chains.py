"""Property test: random chains of supported ops, composed gradient vs finite differences."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper

from tests.gradcheck import check_vjp, make_model


class Chain:
    """Builds a random op chain on a float64 tensor, tracking its shape and fan-out."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.nodes: list = []
        self.inits: dict = {}
        self.shape = [2, 3, 4, 4]
        self.value = "x"
        self.earlier = ["x"]  # tensors of the current shape, for fan-out (x + earlier tensor)
        self.count = 0

    def name(self) -> str:
        self.count += 1
        return f"t{self.count}"

    def const(self, shape) -> str:
        key = f"c{len(self.inits)}"
        self.inits[key] = self.rng.standard_normal(shape)
        return key

    def node(self, op: str, inputs: list[str], keep_shape: bool = True, **attrs) -> None:
        out = self.name()
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        self.value = out
        self.earlier = self.earlier + [out] if keep_shape else [out]

    def step(self, kind: str) -> None:
        v, shape = self.value, self.shape
        if kind in ("Relu", "Sigmoid", "Tanh", "Neg"):
            self.node(kind, [v])
        elif kind == "LeakyRelu":
            self.node(kind, [v], alpha=0.2)
        elif kind == "Softmax":
            self.node(kind, [v], axis=int(self.rng.integers(-len(shape), len(shape))))
        elif kind in ("Add", "Mul", "Sub"):
            bshape = [d if self.rng.random() < 0.5 else 1 for d in shape[1:]]
            self.node(kind, [v, self.const(bshape)])
        elif kind == "FanOut":
            other = self.earlier[int(self.rng.integers(len(self.earlier)))]
            self.node("Mul" if self.rng.random() < 0.5 else "Add", [v, other])
        elif kind == "Transpose":
            perm = [0] + list(self.rng.permutation(range(1, len(shape))))
            self.node(kind, [v], keep_shape=False, perm=perm)
            self.shape = [shape[p] for p in perm]
        elif kind == "MatMul":
            width = int(self.rng.integers(2, 5))
            self.node(kind, [v, self.const([shape[-1], width])], keep_shape=False)
            self.shape = shape[:-1] + [width]
        elif kind == "ReduceMean":
            axis = int(self.rng.integers(1, len(shape)))
            self.node(kind, [v], keep_shape=False, axes=[axis], keepdims=1)
            self.shape = [1 if i == axis else d for i, d in enumerate(shape)]
        elif kind == "Concat":
            axis = int(self.rng.integers(1, len(shape)))
            self.node(kind, [v, v], keep_shape=False, axis=axis)
            self.shape = [d * 2 if i == axis else d for i, d in enumerate(shape)]
        elif kind == "Reshape":
            target = f"c{len(self.inits)}"
            self.inits[target] = np.array([shape[0], -1], dtype=np.int64)
            self.node(kind, [v, target], keep_shape=False)
            self.shape = [shape[0], int(np.prod(shape[1:]))]


KINDS = ["Relu", "Sigmoid", "Tanh", "Neg", "LeakyRelu", "Softmax", "Add", "Mul",
         "Sub", "FanOut", "Transpose", "MatMul", "ReduceMean", "Concat", "Reshape"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=6),
       seed=st.integers(0, 2 ** 31 - 1))
def test_random_chain_gradient_matches_finite_differences(kinds: list[str], seed: int) -> None:
    chain = Chain(np.random.default_rng(seed))
    for kind in kinds:
        chain.step(kind)
    chain.node("Identity", [chain.value])
    y = chain.value
    model = make_model(chain.nodes, [("x", ["N", 3, 4, 4])], output=y, inits=chain.inits)
    x = np.random.default_rng(seed + 1).standard_normal((2, 3, 4, 4))
    # kinks (ReLU, LeakyReLU) are almost surely > eps·|t| away with continuous random inputs
    check_vjp(model, {"x": x}, score=y, rtol=1e-5, eps=1e-6)
