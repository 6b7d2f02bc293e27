"""Token models: torchvision's ViT and Swin, timm's ViT (non-square input) and DeiT, each exported
by torch's two exporters (tests/fixtures/tokens/make_tokens.py; torch is not needed here). With
no layer given, the explainer picks pytorch-grad-cam's recommended layer (the last block's first
LayerNorm), folds its tokens into the grid the graph shows, and equals pytorch-grad-cam with the
documented ``reshape_transform``; the gradient there equals torch autograd's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import onnx_gradcam as og
from onnx_gradcam.cli import app

HERE = Path(__file__).parent / "fixtures" / "tokens"
MANIFEST = json.loads((HERE / "manifest.json").read_text())["models"]
DATA = np.load(HERE / "expected.npz")
TOLERANCE = 1e-4  # the bar
#: (leading tokens, h, w) that the graph must show, from the models' configurations
GRIDS = {"vit": (1, 4, 4), "vit_timm": (1, 4, 6), "deit": (2, 4, 4)}


def _files():
    for model, spec in MANIFEST.items():
        for file in spec["files"]:
            yield pytest.param(model, file, id=file.removesuffix(".onnx"))


def _as_nchw(model: str, tokens: np.ndarray) -> np.ndarray:
    """torch's layer tensor as pytorch-grad-cam's reshape_transform makes it."""
    if model == "swin":
        return tokens.transpose(0, 3, 1, 2)
    skip, h, w = GRIDS[model]
    n, _, c = tokens.shape
    return tokens[:, skip:].reshape(n, h, w, c).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("model, file", list(_files()))
def test_default_layer_and_maps_equal_pytorch_grad_cam(model: str, file: str) -> None:
    spec = MANIFEST[model]["files"][file]
    ex = og.Explainer(HERE / file, providers="cpu")
    layer = ex.layers[0]
    assert layer.name in spec["all_matching_tensors"], (
        f"auto-detected {layer.name!r}; expected {spec['layer']!r} "
        f"({MANIFEST[model]['torch_layer']})")
    if model in GRIDS:
        assert layer.grid is not None
        assert (layer.grid.skip, layer.grid.h, layer.grid.w) == GRIDS[model]
        assert layer.grid.readers, "the head's read of the class token is the evidence"
    else:
        assert layer.layout == "NHWC" and layer.grid is None
    x, targets = DATA[f"{model}__input"], DATA[f"{model}__targets"]
    act = _as_nchw(model, DATA[f"{model}__act"])
    for row, key in enumerate(("t0", "t1")):
        res = ex.explain(x, targets[row])
        diff = np.abs(res.cams - DATA[f"{model}__cam__{key}"]).max(axis=(1, 2))
        assert diff.max() <= TOLERANCE, f"{key}: map max abs diff per image {diff}"
        assert np.abs(res.activations[0] - act).max() <= TOLERANCE * np.abs(act).max()
        grad = _as_nchw(model, DATA[f"{model}__grad__{key}"])
        rel = np.abs(res.gradients[0] - grad).max() / np.abs(grad).max()
        assert rel <= TOLERANCE, f"{key}: gradient {rel:.2e} off torch autograd"


def test_inspect_prints_the_grid() -> None:
    out = CliRunner().invoke(app, ["inspect", str(HERE / "vit_timm_legacy_opset17.onnx")])
    assert out.exit_code == 0, out.output
    assert "grid 4 × 6 after 1 leading token" in out.output
    out = CliRunner().invoke(app, ["inspect", "--json", str(HERE / "deit_dynamo.onnx")])
    layer = json.loads(out.output)["layer"]
    assert (layer["grid"], layer["leading_tokens"], layer["layout"]) == ([4, 4], 2, "tokens")


def test_a_token_tensor_without_a_grid_is_refused_naming_it() -> None:
    ex_model = og.load_model(HERE / "vit_legacy_opset17.onnx")
    attention = next(n for n, s in ex_model.info.shapes.items()
                     if s is not None and len(s) == 3 and s[1] is not None and s[1] != 17
                     and n in ex_model.info.producer)
    with pytest.raises(og.OnnxGradCamError, match="no\\s+patch-embedding Conv"):
        og.Explainer(HERE / "vit_legacy_opset17.onnx", layer=attention, providers="cpu")


@pytest.mark.parametrize("file", ["vit_legacy_opset17.onnx", "swin_dynamo.onnx"])
def test_export_carries_the_grid(file: str) -> None:
    """The exported model folds the tokens itself: plain ONNX Runtime gives pytorch-grad-cam's
    maps for the classes fed as ``target``."""
    import onnxruntime as ort

    model = file.split("_")[0]
    proto = og.Explainer(HERE / file, providers="cpu").export()
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x, targets = DATA[f"{model}__input"], DATA[f"{model}__targets"]
    name = session.get_inputs()[0].name
    batch_one = MANIFEST[model]["files"][file]["batch"] == "fixed 1"
    for row, key in enumerate(("t0", "t1")):
        cams = np.concatenate([session.run(["cam"], {name: x[i:i + 1],
                                                     "target": targets[row][i:i + 1]})[0]
                               for i in range(len(x))]) if batch_one else session.run(
            ["cam"], {name: x, "target": targets[row]})[0]
        assert np.abs(cams - DATA[f"{model}__cam__{key}"]).max() <= TOLERANCE


def test_every_method_and_explain_many_read_the_grid() -> None:
    """Methods computed outside the graph (Score-CAM, Eigen-CAM) fold the fetched tokens the
    same way; explain_many's replicated head gives explain's maps."""
    ex = og.Explainer(HERE / "deit_legacy_opset17.onnx", providers="cpu")
    x, targets = DATA["deit__input"], DATA["deit__targets"]
    many = ex.explain_many(x, targets.T)
    for row, key in enumerate(("t0", "t1")):
        assert np.abs(many.cams[:, row] - DATA[f"deit__cam__{key}"]).max() <= TOLERANCE
    for method in og.METHODS:
        res = og.Explainer(HERE / "deit_legacy_opset17.onnx", method=method,
                           providers="cpu").explain(x, targets[0])
        assert res.coarse.shape == (3, 4, 4) and res.cams.shape == (3, 32, 32), method
        assert res.activations[0].shape == (3, 32, 4, 4), method


def test_a_classifiers_final_softmax_is_no_attention() -> None:
    """ConvNeXt's blocks hold LayerNorms; a Softmax on its logits must not make the last of them
    the 'attention input': the default layer stays the CNN's."""
    import onnx
    from onnx import helper

    wild = Path(__file__).parent / "fixtures" / "wild" / "convnext_legacy_opset14.onnx"
    proto = onnx.load(str(wild))
    logits = proto.graph.output[0].name
    proto.graph.node.append(helper.make_node("Softmax", [logits], ["probs"], axis=1))
    proto.graph.output.append(helper.make_tensor_value_info("probs", onnx.TensorProto.FLOAT,
                                                            None))
    del proto.graph.output[0]
    plain = og.Explainer(wild, providers="cpu").layer_names
    assert og.Explainer(proto, providers="cpu", score="probabilities").layer_names == plain


@pytest.mark.parametrize("model, method", [
    (m, method) for m in ("vit", "deit", "swin") for method in ("eigencam", "scorecam",
                                                                 "gradcam++")])
def test_other_methods_equal_pytorch_grad_cam(model: str, method: str) -> None:
    """Eigen-CAM and Score-CAM fold the fetched tokens in Python, Grad-CAM++ in the graph."""
    file = next(f for f in MANIFEST[model]["files"] if "legacy_opset17" in f)
    ex = og.Explainer(HERE / file, method=method, providers="cpu")
    x, targets = DATA[f"{model}__input"], DATA[f"{model}__targets"]
    diff = np.abs(ex.explain(x, targets[0]).cams - DATA[f"{model}__{method}__t0"]).max()
    assert diff <= TOLERANCE, f"{method}: map {diff:.2e} off pytorch-grad-cam"
