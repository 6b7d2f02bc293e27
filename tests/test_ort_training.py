"""Oracle 2: our gradient graph against onnxruntime-training's GradientGraphBuilder (lowered).

The builder lives in its own venv (``.venv-ort-training``, or ``ONNX_GRADCAM_ORT_TRAINING_PYTHON``)
and runs in a subprocess. Without that venv these tests FAIL with how to create it, unless
``ONNX_GRADCAM_SKIP_ORT_TRAINING=1``. To stay fast, every head is built in one worker run (a
session-wide cache that ``run_builder`` is pointed at), not one process per head.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnx_gradcam.autodiff import ort_training as ort_t
from onnx_gradcam.autodiff.builder import head_nodes
from onnx_gradcam.errors import OnnxGradCamError
from onnx_gradcam.explainer import Explainer
from onnx_gradcam.explainer_graph import GRADIENT, SEED, gradient_model
from onnx_gradcam.graph import GraphInfo
from tests.gradcheck import session
from tests.models import small_cnn
from tests.test_rules import CASES, Case, _input, _model

FIXTURES = Path(__file__).parent / "fixtures" / "torch"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())

#: test_rules cases that onnxruntime-training 1.19.2 cannot differentiate (known_gap says why).
GAP_CASES = {"add_self", "dropout", "prelu", "softplus", "elu", "hard_sigmoid", "hard_swish",
             "gelu_tanh", "pow_base", "sum3", "matmul_vec", "reduce_max", "reduce_min",
             "global_max_pool", "max_pool_symbolic_hw", "batch_norm", "instance_norm",
             "layer_norm", "layer_norm_axis1", "split_unused_output", "pad_reflect", "pad_edge",
             "pad_constant_axes",
             "max_pool_uint8", "squeeze_excite_pool",  # its gate is a HardSigmoid
             *(c.id for c in CASES if c.id.startswith(("resize_", "einsum_", "qdq_", "qlinear",
                                                       "qgemm", "dynamic_")))}
RULE_CASES = [c for c in CASES if c.id not in GAP_CASES]
#: the gaps the project promises to refuse with one clear message, by known_gap
PROMISED_GAPS = {"hard_swish": "HardSwish", "global_max_pool": "GlobalMaxPool",
                 "batch_norm": "BatchNormalization", "dropout": "Dropout",
                 "max_pool_symbolic_hw": "MaxPool", "resize_nearest_scales": "Resize"}


def _torch_heads() -> list[tuple[str, str, str]]:
    return [(f"{key}/{name}", spec["file"], layer["onnx_tensor"])
            for key, spec in MANIFEST["models"].items()
            for name, layer in spec["layers"].items()]


TORCH_HEADS = _torch_heads()
SMALL_HEADS = [(head, softmax, act) for head in ("gap_gemm", "mean_matmul")
               for softmax in (False, True) for act in ("act", "r1")]


def _small(head: str, softmax: bool) -> tuple[onnx.ModelProto, str]:
    return small_cnn(head=head, softmax=softmax), "probs" if softmax else "logits"


# ---- the isolated venv and one batched worker run ------------------------------------------
@pytest.fixture(scope="session")
def ort_training() -> None:
    if os.environ.get("ONNX_GRADCAM_SKIP_ORT_TRAINING") == "1":
        pytest.skip("ONNX_GRADCAM_SKIP_ORT_TRAINING=1: onnxruntime-training oracle skipped")
    try:
        ort_t.training_python()
        missing = None
    except OnnxGradCamError as exc:
        missing = str(exc)
    if missing:
        pytest.fail(f"oracle 2 needs the isolated onnxruntime-training venv: {missing} "
                    "(or set ONNX_GRADCAM_SKIP_ORT_TRAINING=1 to skip)", pytrace=False)


def _all_heads() -> list[tuple[GraphInfo, str, str]]:
    heads = [(GraphInfo(_model(c)), "x", "y") for c in RULE_CASES]
    for head, softmax, act in SMALL_HEADS:
        model, score = _small(head, softmax)
        heads.append((GraphInfo(model), act, score))
    for _, file, act in TORCH_HEADS:
        model = onnx.load(str(FIXTURES / file))
        heads.append((GraphInfo(model), act, model.graph.output[0].name))
    return heads


@pytest.fixture(scope="session")
def built(ort_training: None) -> dict[bytes, onnx.ModelProto]:
    """Every head model of this file, built in one worker run: serialized head → its model."""
    heads = [(ort_t.cut_head(info, act, score), act) for info, act, score in _all_heads()]
    results = ort_t.run_builders(heads, "the test heads", timeout=240)
    return {h.SerializeToString(): r.model for (h, _), r in zip(heads, results)
            if r.model is not None}


@pytest.fixture
def cached(built: dict[bytes, onnx.ModelProto], monkeypatch: pytest.MonkeyPatch) -> None:
    real = ort_t.run_builder

    def lookup(head: onnx.ModelProto, activation: str, *args, **kwargs) -> onnx.ModelProto:
        model = built.get(head.SerializeToString())
        return model if model is not None else real(head, activation, *args, **kwargs)

    monkeypatch.setattr(ort_t, "run_builder", lookup)


def assert_same_gradient(model: onnx.ModelProto, activation: str, score: str,
                         feeds: dict[str, np.ndarray]) -> float:
    """Ours vs onnxruntime-training's (lowered) gradient, ≤ 1e-5 relative; returns the error."""
    info = GraphInfo(model)
    theirs_model = gradient_model(info, activation, score, builder="ort-training")
    onnx.checker.check_model(theirs_model, full_check=True)
    assert not any(n.domain not in ("", "ai.onnx") for n in theirs_model.graph.node)
    assert any(n.name.startswith("ogc_ort/") for n in theirs_model.graph.node)
    ours_model = gradient_model(info, activation, score)
    y = session(model).run([score], feeds)[0]
    seed = np.random.default_rng(1).standard_normal(y.shape).astype(y.dtype)
    ours = session(ours_model).run([GRADIENT], {**feeds, SEED: seed})[0]
    theirs = session(theirs_model).run([GRADIENT], {**feeds, SEED: seed})[0]
    scale = float(np.max(np.abs(theirs)))
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5 * scale)
    return float(np.max(np.abs(ours - theirs))) / max(scale, 1e-30)


# ---- oracle 2 --------------------------------------------------------------------------------
@pytest.mark.parametrize("case", RULE_CASES, ids=[c.id for c in RULE_CASES])
def test_rule_case_matches_ort_training(case: Case, cached: None) -> None:
    x = _input(case, np.random.default_rng(0))
    assert_same_gradient(_model(case), "x", "y", {"x": x})


@pytest.mark.parametrize(("head", "softmax", "act"), SMALL_HEADS)
def test_small_cnn_matches_ort_training(head: str, softmax: bool, act: str,
                                        cached: None) -> None:
    model, score = _small(head, softmax)
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    assert_same_gradient(model, act, score, {"input": x})


@pytest.mark.parametrize(("key", "file", "act"), TORCH_HEADS, ids=[h[0] for h in TORCH_HEADS])
def test_torch_fixture_matches_ort_training(key: str, file: str, act: str,
                                            cached: None) -> None:
    model = onnx.load(str(FIXTURES / file))
    name = GraphInfo(model).graph_inputs[0]
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    assert_same_gradient(model, act, model.graph.output[0].name, {name: x})


#: cases whose contrib ops onnxruntime-training's own CPU kernels can run (float32)
KERNEL_CASES = ["relu", "leaky_relu", "sigmoid", "tanh", "div_bcast", "matmul_batched",
                "softmax", "softmax_opset11_coerced", "log_softmax", "gelu_exact",
                "global_average_pool", "reduce_mean_keep", "gather", "gather_elements",
                "max_pool", "max_pool_overlap", "average_pool", "average_pool_pads",
                "average_pool_pads_incl", "conv_stride2_odd", "conv_depthwise", "conv_dilated",
                "concat", "mul_bcast"]


def test_lowerings_match_ort_training_kernels(ort_training: None,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The unlowered graph, run by onnxruntime-training's own kernels (float32, static batch:
    its pooling-gradient kernels size their output from the inferred shape), equals our lowered
    one: each lowering checked against the kernel of the op it replaces."""
    cases = [c for c in CASES if c.id in KERNEL_CASES]
    models, feeds, seeds = [], [], []
    for case in cases:
        model = _model(Case(**{**case.__dict__, "dtype": np.float32, "batch": 2}))
        model = _static_batch(model, 2)
        x = _input(Case(**{**case.__dict__, "dtype": np.float32}), np.random.default_rng(0))
        y = session(model).run(["y"], {"x": x})[0]
        seed = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
        models.append(model)
        feeds.append({"x": x, ort_t.SEED: seed})
        seeds.append(seed)
    heads = [(ort_t.cut_head(GraphInfo(m), "x", "y"), "x") for m in models]
    results = ort_t.run_builders(heads, "the kernel checks", feeds=feeds, timeout=120)
    built = {h.SerializeToString(): r.model for (h, _), r in zip(heads, results)}
    monkeypatch.setattr(ort_t, "run_builder", lambda head, *a, **k: built[head.SerializeToString()])
    for case, model, feed, seed, result in zip(cases, models, feeds, seeds, results):
        case_id = case.id
        assert result.native is not None, (case_id, result.error)
        g = session(gradient_model(GraphInfo(model), "x", "y", builder="ort-training"))
        lowered = g.run([GRADIENT], {"x": feed["x"], SEED: seed})[0]
        np.testing.assert_allclose(lowered, result.native, rtol=1e-5,
                                   atol=1e-5 * float(np.max(np.abs(result.native))),
                                   err_msg=case_id)


def _static_batch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """onnxruntime-training's pooling-gradient kernels size their output from the static
    inferred shape: give them a static batch."""
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_param"):
            dims[0].dim_value = batch
    model.graph.output[0].type.tensor_type.ClearField("shape")
    return model


def test_explainer_with_ort_training_builder(cached: None) -> None:
    model = small_cnn(softmax=True)
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    ours = Explainer(model, layer="act").explain(x, targets=[1, 3])
    theirs = Explainer(model, layer="act", gradient_builder="ort-training").explain(
        x, targets=[1, 3])
    np.testing.assert_allclose(ours.gradients[0], theirs.gradients[0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ours.cams, theirs.cams, atol=1e-5)


# ---- clear failures ----------------------------------------------------------------------------
@pytest.mark.parametrize("case_id", sorted(GAP_CASES))
def test_known_gap_fails_up_front(case_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each gap is refused from the head's ops alone, before any subprocess is started."""
    monkeypatch.setattr(ort_t, "run_builders", _no_worker)
    case = next(c for c in CASES if c.id == case_id)
    info = GraphInfo(_model(case))
    with pytest.raises(OnnxGradCamError) as err:
        gradient_model(info, "x", "y", builder="ort-training")
    message = str(err.value)
    assert "\n" not in message and "--gradient-builder onnx" in message
    if case_id in PROMISED_GAPS:
        assert f"op {PROMISED_GAPS[case_id]} " in message


def _no_worker(*args, **kwargs):
    raise AssertionError("the worker must not run for a known gap")


def test_known_gap_is_not_overcautious() -> None:
    """The gap check passes every head that the builder does handle."""
    for case in RULE_CASES:
        info = GraphInfo(_model(case))
        assert ort_t.known_gap(info, head_nodes(info, "x", "y"), "x", "y") is None, case.id


def _fake_python(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "python"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


@pytest.mark.parametrize(("body", "expected"), [
    ("kill -SEGV $$", "crashed (SIGSEGV)"),
    ("kill -KILL $$", "crashed (SIGKILL)"),
    ("echo 'boom: bad things' >&2; exit 1", "failed on the head after 'act'"),
    ("echo 'onnxruntime-training is not importable by x' >&2; exit 3", "make .venv-ort-training"),
])
def test_worker_crash_is_one_clear_error(body: str, expected: str, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ort_t.PYTHON_ENV, str(_fake_python(tmp_path, body)))
    with pytest.raises(OnnxGradCamError) as err:
        gradient_model(GraphInfo(small_cnn()), "act", "logits", builder="ort-training")
    message = str(err.value)
    assert expected in message and "\n" not in message
    # the parent process is alive and well: our own builder still works
    assert gradient_model(GraphInfo(small_cnn()), "act", "logits") is not None


def test_missing_venv_says_how_to_create_it(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ort_t.PYTHON_ENV, str(tmp_path / "nowhere" / "python"))
    with pytest.raises(OnnxGradCamError, match="make .venv-ort-training"):
        Explainer(small_cnn(), layer="act", gradient_builder="ort-training")


def test_unknown_builder_is_one_clear_error() -> None:
    with pytest.raises(OnnxGradCamError, match="gradient builder 'tf'"):
        gradient_model(GraphInfo(small_cnn()), "act", "logits", builder="tf")
