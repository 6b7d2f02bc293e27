"""Faithfulness metrics on constructed cases whose answers are known."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_gradcam import metrics

REGION = np.zeros((16, 16), np.float32)
REGION[4:9, 6:12] = 1.0


def region_model_forward():
    """logits = (s, −s) with s = Σ of the input over REGION: only that region matters."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["input", "region"], ["masked"]),
         helper.make_node("ReduceSum", ["masked", "axes"], ["s"], keepdims=1),
         helper.make_node("Reshape", ["s", "shape"], ["s2"]),
         helper.make_node("Neg", ["s2"], ["ns"]),
         helper.make_node("Concat", ["s2", "ns"], ["logits"], axis=1)], "region",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(REGION * 0.05, "region"),
         numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes"),
         numpy_helper.from_array(np.array([-1, 1], np.int64), "shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return lambda batch: metrics.as_probabilities(
        session.run(None, {"input": batch.astype(np.float32)})[0], "logits")


def test_average_drop_and_increase_in_confidence_formulas() -> None:
    full = np.array([0.8, 0.5, 0.2])
    masked = np.array([0.4, 0.6, 0.2])
    assert metrics.average_drop(full, masked) == pytest.approx((50 + 0 + 0) / 3)
    assert metrics.increase_in_confidence(full, masked) == pytest.approx(100 / 3)


def test_auc_of_simple_curves() -> None:
    assert metrics.auc(np.full(11, 0.7)) == pytest.approx(0.7)
    assert metrics.auc(np.linspace(0, 1, 21)) == pytest.approx(0.5)


def test_perfect_map_beats_random_on_deletion_and_insertion() -> None:
    forward = region_model_forward()
    rng = np.random.default_rng(0)
    x = rng.uniform(0.5, 1.5, (3, 16, 16)).astype(np.float32)
    assert forward(x[None])[0, 0] > 0.9  # class 0 is confident
    perfect = REGION + 0.01 * rng.random((16, 16))  # region first, then anything
    deletion = {name: metrics.deletion_auc(x, m, 0, forward, steps=16) for name, m in
                [("perfect", perfect), *[(f"random{i}", rng.random((16, 16))) for i in range(5)]]}
    insertion = {name: metrics.insertion_auc(x, m, 0, forward, steps=16) for name, m in
                 [("perfect", perfect), *[(f"random{i}", rng.random((16, 16)))
                                          for i in range(5)]]}
    assert deletion["perfect"] < min(v for k, v in deletion.items() if k != "perfect")
    assert insertion["perfect"] > max(v for k, v in insertion.items() if k != "perfect")
    # the perfect map keeps the region: masking the image with it keeps the confidence
    full = forward(x[None])[:, 0]
    kept = forward((x * REGION)[None])[:, 0]
    assert metrics.average_drop(full, kept) == pytest.approx(0.0, abs=1e-6)


def test_perturbation_curve_endpoints() -> None:
    forward = region_model_forward()
    x = np.ones((3, 16, 16), np.float32)
    curve = metrics.perturbation_curve(x, REGION, 0, forward, x, np.zeros_like(x), 4, 0)
    assert curve[0] == pytest.approx(forward(x[None])[0, 0])
    assert curve[-1] == pytest.approx(0.5)  # everything deleted: s = 0


def test_pointing_game() -> None:
    cam = np.zeros((8, 8), np.float32)
    cam[2, 5] = 1.0
    mask = np.zeros((16, 16), bool)
    mask[4:6, 10:12] = True
    assert metrics.pointing_game(cam, mask)
    assert not metrics.pointing_game(cam, ~mask)
