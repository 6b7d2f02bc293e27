"""ONNX from the wild: torchvision architectures exported by torch's two exporters (dynamo, opset
18, fixed batch 1, external data; legacy TorchScript, dynamic batch, opsets 9-17), against
pytorch-grad-cam and torch autograd; paddle.vision's MobileNetV1 exported by paddle2onnx, against
paddle autograd. Fixtures: tests/fixtures/wild/make_torch.py and make_paddle.py (neither framework
is needed at test time); each model's head (layer -> score) takes no ReLU/Hardswish/MaxPool
decision within float32 rounding of its kink, so the framework's and ONNX Runtime's roundings
agree and 1e-4 holds.

Two questions per file, kept apart so that one failing does not hide the other:
- does the auto-detected layer equal the one a person would pick (pytorch-grad-cam's recommended
  target layer, found in the ONNX file by value), and is its map pytorch-grad-cam's?
- at that layer named explicitly, are the maps and gradients torch's?
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnx_gradcam as og

HERE = Path(__file__).parent / "fixtures" / "wild"
SOURCES = ("torch", "paddle")
MANIFESTS = {s: json.loads((HERE / f"{s}_manifest.json").read_text()) for s in SOURCES}
MODELS = {m: spec for manifest in MANIFESTS.values() for m, spec in manifest["models"].items()}
DATA = {m: npz for s in SOURCES for npz in [np.load(HERE / f"{s}_expected.npz")]
        for m in MANIFESTS[s]["models"]}
TOLERANCE = 1e-4  # the bar; about 50x the float32 distance measured when generating


def _exporter(info: dict) -> str:
    if info["exporter"].startswith("paddle"):
        return "paddle2onnx"
    return "dynamo" if "dynamo=True" in info["exporter"] else "legacy"


def _files():
    for model, spec in MODELS.items():
        for file, info in spec["files"].items():
            yield pytest.param(model, file, id=f"{model}-{_exporter(info)}-opset{info['opset']}")


FILES = list(_files())


def _expected(model: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    targets = DATA[model][f"{model}__targets"]
    return DATA[model][f"{model}__input"], {"t0": targets[0], "t1": targets[1]}


def _assert_cams(ex: og.Explainer, model: str, layer: str) -> None:
    x, targets = _expected(model)
    for key, t in targets.items():
        res = ex.explain(x, t)
        diff = np.abs(res.cams - DATA[model][f"{model}__{layer}__cam__{key}"]).max(axis=(1, 2))
        assert diff.max() <= TOLERANCE, (
            f"layer {ex.layer_names[0]}, target {key}: map max abs diff per image {diff}")


@pytest.mark.parametrize("model, file", FILES)
def test_auto_layer_is_the_one_a_person_would_pick(model: str, file: str) -> None:
    layer = MODELS[model]["files"][file]["layers"]["last"]
    ex = og.Explainer(HERE / file, providers="cpu")
    # Tensors equal in value to the framework layer's output (e.g. an identity-sized adaptive
    # pool after VGG's last MaxPool) have the same gradient and map.
    assert ex.layer_names[0] in layer["all_matching_tensors"], (
        f"{file}: auto-detected {ex.layer_names[0]!r} {list(ex.layers[0].shape)} "
        f"{ex.layers[0].layout}; expected {layer['onnx_tensor']!r} "
        f"(framework layer {MODELS[model]['layers']['last']['framework_layer']})")
    _assert_cams(ex, model, "last")


def _layers():
    for param in FILES:
        model, file = param.values
        for layer in MODELS[model]["layers"]:
            yield pytest.param(model, file, layer, id=f"{param.id}-{layer}")


@pytest.mark.parametrize("model, file, layer", list(_layers()))
def test_maps_and_gradients_equal_the_framework_at_the_named_layer(model: str, file: str,
                                                                    layer: str) -> None:
    name = MODELS[model]["files"][file]["layers"][layer]["onnx_tensor"]
    ex = og.Explainer(HERE / file, layer=name, providers="cpu")
    x, targets = _expected(model)
    data = DATA[model]
    logits, act = data[f"{model}__logits"], data[f"{model}__{layer}__act"]
    for key, t in targets.items():
        res = ex.explain(x, t)
        assert np.abs(res.scores - logits).max() <= TOLERANCE * np.abs(logits).max()
        assert np.abs(res.activations[0] - act).max() <= TOLERANCE * np.abs(act).max()
        grad = data[f"{model}__{layer}__grad__{key}"]
        rel = np.abs(res.gradients[0] - grad).max() / np.abs(grad).max()
        assert rel <= TOLERANCE, f"target {key}: gradient {rel:.2e} off the framework's autograd"
        diff = np.abs(res.cams - data[f"{model}__{layer}__cam__{key}"]).max()
        assert diff <= TOLERANCE, f"target {key}: map {diff:.2e} off the framework's Grad-CAM"


def test_the_corpus_covers_what_users_meet() -> None:
    """The files are what the corpus claims: dynamo exports with fixed batch 1, opset >= 18 and
    weights in an external-data file; legacy and paddle2onnx exports with a dynamic batch over
    opsets 9-17, some below the loader's minimum (version conversion); no head near a kink."""
    legacy_opsets = set()
    for spec in MODELS.values():
        assert all(la["near_kink_float64"]["head"] == 0 for la in spec["layers"].values())
        for file, info in spec["files"].items():
            proto = onnx.load(str(HERE / file), load_external_data=False)
            opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
            batch = proto.graph.input[0].type.tensor_type.shape.dim[0]
            inline = [t.name for t in proto.graph.initializer
                      if t.data_location != onnx.TensorProto.EXTERNAL and t.raw_data
                      and len(t.raw_data) > 1024]
            if info["external_data"]:
                assert opset >= 18 and batch.dim_value == 1, file
                assert (HERE / info["external_data"]).is_file()
                assert not inline, f"{file}: weights inline {inline[:3]}"
            else:
                assert 9 <= opset <= 17 and batch.dim_param, file
                legacy_opsets.add(opset)
    assert min(legacy_opsets) < 16 <= max(legacy_opsets)
    assert len(legacy_opsets) >= len(MANIFESTS["torch"]["models"])


@pytest.mark.parametrize("file", ["convnext_dynamo.onnx", "mobilenet_v3_legacy_opset13.onnx",
                                  "paddle_mobilenet_v1_opset9.onnx"])
def test_inspect_verify_passes_on_models_from_the_wild(file: str) -> None:
    """A user who doubts a map can check the gradient graph on their own file: the float64 VJP
    against float64 central differences, through the real command (a broken rule failing this
    verdict is tests/test_verify.py's job)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "onnx_gradcam", "inspect", str(HERE / file),
                           "--verify", "--json"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["verdict"] == "PASS"
    assert max(report["vjp_vs_finite_differences"]) <= 1e-6, report


def _dynamic_files():
    """One file per model with a dynamic batch (legacy / paddle2onnx), each of its layers."""
    for model, spec in MODELS.items():
        file = next(f for f, info in spec["files"].items() if not info["external_data"])
        for layer in spec["layers"]:
            # The oracle's float64 central differences of ConvNeXt's LayerNorm/GELU head lose
            # digits below a 1e-3 step (as on Keras' ConvNeXtTiny, tests/zoo): a limit of the
            # oracle, not of the gradient, which equals torch autograd's to 5e-7 here
            # (test_maps_and_gradients_equal_the_framework_at_the_named_layer).
            marks = [pytest.mark.xfail(strict=True, reason="oracle's finite differences on "
                                       "ConvNeXt's stage-2 head")] if (model, layer) == (
                "convnext", "mid") else []
            yield pytest.param(model, file, layer, id=f"{model}-{layer}", marks=marks)


@pytest.mark.parametrize("model, file, layer", list(_dynamic_files()))
def test_decision_matched_oracle_on_models_from_the_wild(model: str, file: str,
                                                          layer: str) -> None:
    """Our gradient is the exact gradient of the forward ONNX Runtime ran, at both optimisation
    levels (tests/oracle.py), on exports we did not write: the second-best target, where the
    head's routing differs from the top class's."""
    from tests import oracle

    name = MODELS[model]["files"][file]["layers"][layer]["onnx_tensor"]
    x, targets = _expected(model)
    for level in oracle.LEVELS:
        report = oracle.check(HERE / file, name, x, targets["t1"], level,
                              float64_decisions=False)
        print(f"WILD {model} {layer} {report.summary()}")
        assert report.passed, report.summary()
