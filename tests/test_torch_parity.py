"""Parity with PyTorch: torch autograd gradients (oracle 3 for torch.onnx graphs) and
pytorch-grad-cam's heatmaps for every method, from fixtures committed by
tests/fixtures/torch/make_fixtures.py (torch is not needed at test time).

Gradients: ours is the exact gradient of the forward ONNX Runtime ran, so it is checked first
against the decision-matched float64 oracle (tests/oracle.py) at ORT_ENABLE_ALL and
ORT_ENABLE_EXTENDED; then against torch's autograd ≤ 1e-4 where no kink decision of the head
lies within rounding distance of its kink (float32 and float64 forwards decide alike). Where one
does (e.g. one ReLU input within rounding of 0 that ORT_ENABLE_ALL's NCHWc kernels round to the
other side), no tolerance can make two float32 implementations agree; then torch's gradient
must match the head frozen with float64's decisions instead, and the count and distance are
printed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import onnx_gradcam as og
from tests import oracle

HERE = Path(__file__).parent / "fixtures" / "torch"
MANIFEST = json.loads((HERE / "manifest.json").read_text())
DATA = np.load(HERE / "expected.npz")
X = DATA["input"]
TARGETS = {"t0": DATA["targets"][0], "t1": DATA["targets"][1]}
MODELS = {"gap": HERE / "resnet_gap.onnx", "mean": HERE / "resnet_mean.onnx"}


def tensor(model: str, layer: str) -> str:
    return MANIFEST["models"][model]["layers"][layer]["onnx_tensor"]


@pytest.mark.parametrize("model", ["gap", "mean"])
@pytest.mark.parametrize("layer", ["last", "mid", "early", "last_bn2"])
@pytest.mark.parametrize("key", ["t0", "t1"])
def test_gradient_equals_torch_autograd(model: str, layer: str, key: str) -> None:
    ex = og.Explainer(MODELS[model], layer=tensor(model, layer), providers="cpu")
    res = ex.explain(X, TARGETS[key])
    np.testing.assert_allclose(res.scores, DATA["logits"], atol=1e-4)
    expected = DATA[MANIFEST["gradients"][layer]["npz_keys"][key]]
    for level in oracle.LEVELS:
        report = oracle.check(MODELS[model], tensor(model, layer), X, TARGETS[key], level)
        print(f"TORCH {model} {layer} {key} {report.summary()}")
        if level == oracle.LEVEL:  # the oracle checked the gradient explain() returns
            assert np.array_equal(report.gradient, res.gradients[0])
        assert report.passed, report.summary()
        if report.near_kink == 0:
            scale = np.abs(expected).max()
            assert np.abs(report.gradient - expected).max() <= 1e-4 * scale, report.summary()
        else:
            assert report.rel_directional(expected) <= 1e-4, report.summary()


def _cases():
    for method, spec in MANIFEST["cams"]["methods"].items():
        for layer in MANIFEST["cams"]["layers"]:
            for key in ("t0", "t1"):
                yield pytest.param(method, layer, key, spec["npz_keys"][layer][key],
                                   id=f"{method}-{layer}-{key}")


@pytest.mark.parametrize("method, layer, key, npz_key", list(_cases()))
def test_cams_equal_pytorch_grad_cam(method: str, layer: str, key: str, npz_key: str) -> None:
    ex = og.Explainer(MODELS["gap"], layer=tensor("gap", layer), method=method, providers="cpu")
    res = ex.explain(X, TARGETS[key])
    expected = DATA[npz_key]
    tolerance = 1e-3 if method == "scorecam" else 1e-4
    diff = np.abs(res.cams - expected).max(axis=(1, 2))
    assert diff.max() <= tolerance, f"max abs diff per image {diff}"
