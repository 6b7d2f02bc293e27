"""Parity with PyTorch: torch autograd gradients (oracle 3 for torch.onnx graphs) and
pytorch-grad-cam's heatmaps for every method, from fixtures committed by
tests/fixtures/torch/make_fixtures.py (torch is not needed at test time)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import onnx_gradcam as og

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
def test_gradient_equals_torch_autograd(model: str, layer: str) -> None:
    ex = og.Explainer(MODELS[model], layer=tensor(model, layer), providers="cpu")
    for key, targets in TARGETS.items():
        res = ex.explain(X, targets)
        np.testing.assert_allclose(res.scores, DATA["logits"], atol=1e-4)
        expected = DATA[MANIFEST["gradients"][layer]["npz_keys"][key]]
        scale = np.abs(expected).max()
        assert np.abs(res.gradients[0] - expected).max() <= 1e-4 * scale


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
