"""The numpy Conv / ConvTranspose / MaxPool / AveragePool used for float64 evaluation agree with
ONNX Runtime (float32)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from tests.zoo.float64 import evaluator, to_double

CASES = [
    # (op, x shape, w shape, attrs)
    ("Conv", (2, 3, 9, 9), (4, 3, 3, 3), dict(pads=[1, 1, 1, 1])),
    ("Conv", (2, 4, 10, 9), (6, 2, 3, 2), dict(group=2, strides=[2, 2], pads=[0, 1, 1, 0])),
    ("Conv", (2, 6, 9, 9), (6, 1, 3, 3), dict(group=6, dilations=[2, 2], pads=[2, 2, 2, 2])),
    ("Conv", (1, 6, 8, 7), (12, 1, 3, 3), dict(group=6, strides=[2, 2])),  # multiplier 2
    ("Conv", (2, 3, 8, 7), (4, 3, 3, 3), dict(auto_pad="SAME_UPPER", strides=[2, 2])),
    ("Conv", (2, 3, 8, 7), (4, 3, 2, 2), dict(auto_pad="SAME_LOWER", strides=[2, 2])),
    ("Conv", (2, 3, 7, 7), (5, 3, 1, 1), dict(auto_pad="VALID")),
    ("ConvTranspose", (2, 4, 5, 5), (4, 3, 3, 3), dict(strides=[2, 2], output_padding=[1, 1])),
    ("ConvTranspose", (2, 4, 5, 6), (4, 2, 3, 3),
     dict(group=2, strides=[2, 2], dilations=[2, 1], pads=[1, 0, 0, 2])),
    ("ConvTranspose", (2, 6, 4, 4), (6, 1, 3, 3), dict(group=6, strides=[2, 2], pads=[1, 1, 1, 1],
                                                       output_padding=[1, 1])),
    ("MaxPool", (2, 3, 9, 9), None, dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    ("MaxPool", (2, 3, 8, 8), None, dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)),
    ("MaxPool", (2, 3, 9, 8), None, dict(kernel_shape=[2, 3], dilations=[2, 1])),
    ("AveragePool", (2, 3, 9, 9), None, dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])),
    ("AveragePool", (2, 3, 9, 9), None, dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                                             count_include_pad=1)),
    ("AveragePool", (2, 3, 8, 8), None, dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1,
                                             pads=[0, 0, 1, 1])),
]


def _model(op: str, xs, ws, attrs) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = []
    if ws is not None:
        w = rng.standard_normal(ws).astype(np.float32)
        b = rng.standard_normal(ws[1] * attrs.get("group", 1) if op == "ConvTranspose"
                                else ws[0]).astype(np.float32)
        inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    graph = helper.make_graph(
        [helper.make_node(op, ["x", *(t.name for t in inits)], ["y"], **attrs)], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, xs)],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("op,xs,ws,attrs", CASES, ids=[f"{c[0]}{i}" for i, c in enumerate(CASES)])
def test_numpy_conv_matches_onnxruntime(op, xs, ws, attrs) -> None:
    model = _model(op, xs, ws, attrs)
    x = np.random.default_rng(1).standard_normal(xs).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = evaluator(to_double(model)).run(None, {"x": x.astype(np.float64)})[0]
    assert got.dtype == np.float64 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
