"""``inspect --verify`` / ``Explainer.verify()`` and the knife-edge diagnostics."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_gradcam as og
from onnx_gradcam.autodiff.registry import VJP_RULES
from onnx_gradcam.kinks import ROUNDING, _pool_windows
from onnx_gradcam.verify import PASS_RTOL

ROOT = Path(__file__).resolve().parents[1]
TORCH = ROOT / "tests/fixtures/torch/resnet_gap.onnx"
SUITE = {"demo": ROOT / "models/demo.onnx", "torch": TORCH,
         "keras": ROOT / "tests/fixtures/export/keras_small.onnx"}
MID = "/layer2/layer2.0/relu2/Relu_output_0"  # a middle layer of the torch fixture


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnx_gradcam", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name", sorted(SUITE))
def test_inspect_verify_passes_on_the_suite(name):
    proc = cli("inspect", SUITE[name], "--verify", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["verdict"] == "PASS"
    assert len(report["vjp_vs_finite_differences"]) == 4
    assert max(report["vjp_vs_finite_differences"]) <= PASS_RTOL
    assert report["float32_vs_float64"] <= 1e-4  # float32 rounding, no decision flipped
    assert report["knife_edges"][0]["flips_vs_float64"] == 0
    assert report["image"].startswith("synthetic")


def test_inspect_verify_prints_errors_and_verdict():
    proc = cli("inspect", SUITE["torch"], "--verify", "--layer", "/conv1/Conv_output_0")
    assert proc.returncode == 0, proc.stderr
    assert "verdict PASS" in proc.stdout and "relative error" in proc.stdout
    assert "within float32 rounding" in proc.stdout


def _scaled(rule, factor):
    def wrong(op, node, dys):
        out = list(rule(op, node, dys))
        out[0] = op.Mul(out[0], factor)
        return out
    return wrong


@pytest.mark.parametrize("op_type,factor", [("Conv", 1.0001), ("Relu", 1.001), ("Gemm", 0.999)])
def test_a_broken_rule_fails_and_is_named(monkeypatch, op_type, factor):
    monkeypatch.setitem(VJP_RULES, op_type, _scaled(VJP_RULES[op_type], factor))
    report = og.Explainer(TORCH, layer=MID, providers="cpu").verify()
    assert report.verdict == "FAIL"
    assert max(report.errors) > 10 * PASS_RTOL
    assert report.suspect is not None and report.suspect.startswith(op_type), report.suspect


def test_the_correct_rules_pass_at_early_and_middle_layers():
    for layer in ("/conv1/Conv_output_0", MID):
        report = og.Explainer(TORCH, layer=layer, providers="cpu").verify(directions=3)
        assert report.verdict == "PASS", (layer, report.errors)


# ---- knife edges -----------------------------------------------------------------------------
def _relu_head(channels=4, size=5, classes=3, seed=0):
    """input (N, C, s, s) → Identity "act" → Relu → GAP → Flatten → Gemm: the layer's kink
    decisions are the input's own signs, and Relu's output cotangent is W[:, t] / s²."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((channels, classes))
    w[0] = 0.0  # channel 0 carries no cotangent: its decisions cannot move the gradient
    nodes = [helper.make_node("Identity", ["x"], ["act"]),
             helper.make_node("Relu", ["act"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "w"], ["logits"])]
    graph = helper.make_graph(
        nodes, "relu_head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(w.astype(np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, w


def test_knife_edges_count_near_kink_decisions_that_carry_a_cotangent():
    model, w = _relu_head()
    rng = np.random.default_rng(1)
    x = rng.uniform(0.5, 2.0, (2, 4, 5, 5)) * rng.choice([-1, 1], (2, 4, 5, 5))
    x = x.astype(np.float32)
    big = float(np.abs(x).max())
    x[0, 1, 2, 2] = 1e-3 * ROUNDING * big  # on the knife edge, positive
    x[0, 2, 0, 4] = -0.5 * ROUNDING * big  # on the knife edge, negative
    x[0, 0, 1, 1] = 1e-3 * ROUNDING * big  # near, but channel 0 carries no cotangent
    x[0, 3, 3, 3] = 0.0  # an exact zero: every implementation computes it alike
    x[1, 3, 4, 0] = 10 * ROUNDING * big  # outside the rounding band
    ex = og.Explainer(model, layer="act", providers="cpu")
    res = ex.explain(x)
    assert not ex._probes  # nothing computed until asked
    knife = res.knife_edges
    assert ex._probes
    assert knife.count.tolist() == [2, 0]
    assert knife.shift[1] == 0.0
    # the flips' cotangent share, from the formula: dy = W[c, t] / 25 on every element
    t = res.targets[0]
    dy = np.broadcast_to((w[:, t] / 25.0)[:, None, None], (4, 5, 5))
    near = np.zeros((4, 5, 5), bool)
    near[1, 2, 2] = near[2, 0, 4] = True
    share = np.linalg.norm(dy[near]) / np.linalg.norm(dy)
    np.testing.assert_allclose(knife.shift[0], share, rtol=1e-6)
    # flipping them moves the gradient by exactly their cotangent (a ReLU right after the layer)
    flipped = x.copy()
    flipped[0][near] *= -1
    g0 = res.gradients[0][0]
    g1 = ex.explain(flipped, res.targets).gradients[0][0]
    np.testing.assert_allclose(np.linalg.norm(g1 - g0), np.linalg.norm(dy[near]), rtol=1e-5)
    assert np.linalg.norm(g1 - g0) / np.linalg.norm(g0) >= knife.shift[0]


@pytest.mark.parametrize("attrs,size", [
    (dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]), 9),
    (dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1), 7),
    (dict(kernel_shape=[3, 3], dilations=[2, 2]), 8),
    (dict(kernel_shape=[3, 2], strides=[1, 2], auto_pad="SAME_UPPER"), 7),
    (dict(kernel_shape=[3, 3], strides=[2, 2], pads=[0, 1, 1, 0], ceil_mode=1), 8),
])
def test_maxpool_windows_hold_what_onnx_runtime_takes_the_max_of(attrs, size):
    node = helper.make_node("MaxPool", ["x"], ["y"], **attrs)
    graph = helper.make_graph([node], "pool", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [2, 3, size, size])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    windows = _pool_windows(x, node)
    np.testing.assert_array_equal(windows.max(axis=-1), want)


def test_explain_does_not_run_the_diagnostics():
    ex = og.Explainer(SUITE["demo"], providers="cpu")
    x, _ = ex.prepare(sorted((ROOT / "models/samples").iterdir())[:2])
    res = ex.explain(x)
    assert callable(res.diagnose) and not ex._probes
    assert res.knife_edges.count.shape == (2,)


def test_a_head_without_kinks_has_no_knife_edges_and_runs_no_probe():
    """The demo's head (ReduceMean → Gemm) takes no decisions: its knife edges are what the
    diagnostic session would find (none) without running it; a Relu head is still probed."""
    ex = og.Explainer(SUITE["demo"], providers="cpu")
    x, _ = ex.prepare(sorted((ROOT / "models/samples").iterdir())[:3])
    targets = ex.explain(x).targets
    knife = ex.knife_edges(x, targets)
    assert not ex._probes
    probed, _ = ex._probe(x, targets, ex.layer_names[0])  # the diagnostic session itself
    assert knife.count.tolist() == probed.count.tolist() == [0, 0, 0]
    assert knife.shift.tolist() == probed.shift.tolist() and knife.ops == probed.ops
    relu = og.Explainer(_relu_head()[0], layer="act", providers="cpu")
    relu.knife_edges(np.ones((1, 4, 5, 5), np.float32), np.array([0]))
    assert relu._probes


def test_exact_runs_onnx_runtime_at_extended_optimisation():
    ex = og.Explainer(SUITE["demo"], providers="cpu", exact=True)
    level = ex.session.get_session_options().graph_optimization_level
    assert level == ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    default = og.Explainer(SUITE["demo"], providers="cpu").session
    assert default.get_session_options().graph_optimization_level == (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL)


def test_run_reports_knife_edges_and_warns_per_image(tmp_path):
    out = tmp_path / "out"
    proc = cli("run", TORCH, ROOT / "models/samples", "-o", out, "--layer",
               "/conv1/Conv_output_0", "--preset", "imagenet", "--exact", "--quiet")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    flagged = [i for i in report["images"]
               if i["explanations"][0]["knife_edges"]["shift"] > 1e-2]
    for image in report["images"]:
        knife = image["explanations"][0]["knife_edges"]
        assert set(knife) == {"count", "shift", "ops"}
        assert (knife["count"] == 0) == (knife["shift"] == 0)
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == len(flagged)
    assert all("within float32 rounding" in line for line in warnings)
    quiet = cli("run", TORCH, ROOT / "models/samples", "-o", tmp_path / "fast", "--layer",
                "/conv1/Conv_output_0", "--preset", "imagenet", "--no-knife-edges", "--quiet")
    assert quiet.returncode == 0, quiet.stderr
    assert "warning:" not in quiet.stderr
    fast = json.loads((tmp_path / "fast" / "report.json").read_text())
    assert all("knife_edges" not in e for i in fast["images"] for e in i["explanations"])


def test_model_file_keeps_working_after_verify(tmp_path):
    """verify builds its own graphs: the explainer's cached graph and session stay as they were."""
    path = tmp_path / "m.onnx"
    onnx.save(_relu_head()[0], path)
    ex = og.Explainer(path, layer="act", providers="cpu")
    x = np.random.default_rng(0).standard_normal((1, 4, 5, 5)).astype(np.float32)
    before = ex.explain(x).cams
    assert ex.verify(x).passed
    np.testing.assert_array_equal(ex.explain(x).cams, before)


def _kink_head(nodes, extra_inits=(), size=6):
    """input (N, 4, s, s) → Identity "act" → ``nodes`` ("act" → "k") → GAP → Flatten → Gemm."""
    w = np.random.default_rng(3).standard_normal((4, 3)).astype(np.float32)
    nodes = [helper.make_node("Identity", ["x"], ["act"]), *nodes,
             helper.make_node("GlobalAveragePool", ["k"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "w"], ["logits"])]
    graph = helper.make_graph(
        nodes, "kink_head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(w, "w"), *extra_inits])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _const(name, value):
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


#: (op, nodes act → k, threshold to plant an element next to)
KINK_CASES = {
    "Clip": ([helper.make_node("Clip", ["act", "lo", "hi"], ["k"])],
             [_const("lo", 0.0), _const("hi", 6.0)], 6.0),
    "HardSwish": ([helper.make_node("HardSwish", ["act"], ["k"])], [], -3.0),
    "LeakyRelu": ([helper.make_node("LeakyRelu", ["act"], ["k"], alpha=0.1)], [], 0.0),
    "Max": ([helper.make_node("Max", ["act", "c"], ["k"])], [_const("c", 0.5)], 0.5),
    "Greater": ([helper.make_node("Greater", ["act", "c"], ["cond"]),
                 helper.make_node("Mul", ["act", "two"], ["dbl"]),
                 helper.make_node("Where", ["cond", "act", "dbl"], ["k"])],
                [_const("c", 0.25), _const("two", 2.0)], 0.25),
    "MaxPool": ([helper.make_node("MaxPool", ["act"], ["k"], kernel_shape=[2, 2],
                                  strides=[2, 2])], [], None),
}


@pytest.mark.parametrize("op_type", sorted(KINK_CASES))
def test_each_kink_op_is_checked_and_its_knife_edges_found(op_type):
    nodes, inits, threshold = KINK_CASES[op_type]
    model = _kink_head(nodes, inits)
    rng = np.random.default_rng(5)
    x = rng.uniform(-8, 8, (2, 4, 6, 6)).astype(np.float32)
    scale = 8.0
    if threshold is None:  # a near tie inside one 2×2 window
        x[0, 1, 0:2, 0:2] = [[5.0, 5.0 + 0.5 * ROUNDING * scale], [-1.0, -2.0]]
    else:
        x[0, 1, 2, 3] = threshold + 0.5 * ROUNDING * scale  # representable: not a tie
    ex = og.Explainer(model, layer="act", providers="cpu")
    res = ex.explain(x)
    knife = res.knife_edges
    assert knife.count[0] >= 1 and op_type in knife.ops[0], knife
    assert knife.shift[0] > 0
    report = ex.verify(x)
    assert report.verdict == "PASS", report.errors
    assert max(report.errors) <= PASS_RTOL


def test_verify_works_for_a_gradient_free_method():
    report = og.Explainer(SUITE["demo"], method="scorecam", providers="cpu").verify()
    assert report.passed and report.float32_error <= 1e-4
