"""The decision-matched oracle (tests/oracle.py) can fail: a wrong rule fails it, a knife-edge
decision is taken from the float32 forward (and counted), and the optimisation level the tests
ask for reaches the library's sessions."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

import onnx_gradcam as og
from onnx_gradcam import sessions
from onnx_gradcam.autodiff import registry
from tests import oracle
from tests.test_torch_parity import MODELS, TARGETS, X, tensor


def test_the_test_level_reaches_the_library() -> None:
    ex = og.Explainer(MODELS["gap"], providers="cpu")
    level = ex.session.get_session_options().graph_optimization_level
    assert level == getattr(ort.GraphOptimizationLevel, oracle.LEVEL)


@pytest.mark.parametrize("op_type, layer", [("Relu", "early"), ("Relu", "mid"),
                                            ("MaxPool", "early")])
def test_a_broken_rule_fails_the_oracle(monkeypatch, op_type: str, layer: str) -> None:
    """Relu passing dy through everywhere, MaxPool routing dy to every element of its window:
    the oracle must see it at every layer whose head has the op."""
    if op_type == "Relu":
        def broken(op, node, dys):
            return [dys[0]]
    else:
        def broken(op, node, dys):  # a 3×3 window, stride 2: dy spread over the window
            ones = op.const(np.ones([16, 1, 3, 3], np.float32))
            from onnx_gradcam.autodiff.rules._common import transpose_window
            return [transpose_window(op, node, dys[0], ones, node.inputs[0], [3, 3], 16)]
    monkeypatch.setitem(registry.VJP_RULES, op_type, broken)
    monkeypatch.setattr(sessions, "_GRAPHS", type(sessions._GRAPHS)())
    report = oracle.check(MODELS["gap"], tensor("gap", layer), X, TARGETS["t1"],
                          float64_decisions=False)
    assert report.error > 1e-2 and not report.passed, report.summary()


def _knife_edge_model() -> onnx.ModelProto:
    """x → Conv(1×1, identity) → Relu → A → A + 1e8 − 1e8 → Relu → GAP → Gemm. In float32,
    1e8 + 1 rounds to 1e8, so where A = 1 the second Relu's input is 0 (off); in float64 it is
    1 (on). Where A = 16 both agree (1e8 + 16 is a float32)."""
    eye = np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1)
    inits = [numpy_helper.from_array(eye, "w"),
             numpy_helper.from_array(np.array(1e8, np.float32), "big"),
             numpy_helper.from_array(np.array(-1e8, np.float32), "minus_big"),
             numpy_helper.from_array(np.array([[1.0, 2.0, 3.0], [3.0, -1.0, 0.5]], np.float32),
                                     "fc"),
             numpy_helper.from_array(np.zeros(2, np.float32), "fc_b")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("Relu", ["c"], ["a"]),
             helper.make_node("Add", ["a", "big"], ["b"]),
             helper.make_node("Add", ["b", "minus_big"], ["d"]),
             helper.make_node("Relu", ["d"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fc", "fc_b"], ["logits"], transB=1)]
    graph = helper.make_graph(
        nodes, "knife_edge", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                            ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("level", oracle.LEVELS)
def test_knife_edge_decisions_come_from_the_float32_forward(level: str) -> None:
    x = np.full((2, 3, 4, 4), 16.0, np.float32)
    x[:, :, :2, :2] = 1.0  # 12 knife-edge elements per sample
    # the frozen head is linear, and A + 1e8 − 1e8 cancels: a large step is exact
    report = oracle.check(_knife_edge_model(), "a", x, [0, 1], level, step=1e-2)
    print(report.summary())
    assert report.forward_delta == 0  # exposing the decisions changed nothing
    assert report.passed  # matched decisions: ours is exact
    assert report.near_kink == 2 * 3 * 4  # counted, ...
    assert report.near_kink_distance == pytest.approx(1 / 16)  # ... with their float64 margin
    assert min(report.errors64) > 1e-2  # float64's decisions give another gradient
    assert (report.gradient[:, :, :2, :2] == 0).all()  # the float32 ReLU was off there
