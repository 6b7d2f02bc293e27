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
from tests.oracle import NOISE_FACTOR

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


SYMBOLIC = json.loads((HERE / "manifest_symbolic.json").read_text())["models"]
SYMBOLIC_DATA = np.load(HERE / "expected_symbolic.npz")


def _reshape(spec: dict, size: list[int], tokens: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's reshape_transform for an input of ``size`` (numpy)."""
    if spec["reshape"] is None:
        return tokens.transpose(0, 3, 1, 2)
    patch, skip = spec["reshape"]["patch"], spec["reshape"]["leading_tokens"]
    n, _, c = tokens.shape
    return tokens[:, skip:].reshape(n, size[0] // patch, size[1] // patch, c).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("model", list(SYMBOLIC))
def test_one_symbolic_size_export_explains_two_input_sizes(model: str) -> None:
    """Exported with a symbolic batch, height and width (the token count symbolic in the graph):
    the grid follows each input's size through the patch embedding, and the maps equal
    pytorch-grad-cam's with the reshape_transform written for that size."""
    spec = SYMBOLIC[model]
    ex = og.Explainer(HERE / spec["file"], providers="cpu")
    layer = ex.layers[0]
    assert None in layer.shape[1:], "the fixture must have a symbolic layer shape"
    if spec["reshape"] is None:
        assert layer.layout == "NHWC" and layer.grid is None
    else:
        assert layer.grid is not None and (layer.grid.h, layer.grid.w) == (None, None)
        assert layer.grid.skip == spec["reshape"]["leading_tokens"] and layer.grid.readers
        patch = spec["reshape"]["patch"]
        assert layer.grid.sizes == (f"H/{patch}", f"W/{patch}")
    for size in spec["sizes_hw"]:
        key = f"{model}__{size[0]}x{size[1]}"
        x, targets = SYMBOLIC_DATA[f"{key}__input"], SYMBOLIC_DATA[f"{key}__targets"]
        res = ex.explain(x, targets)
        assert res.cams.shape == (len(x), *size)
        diff = np.abs(res.cams - SYMBOLIC_DATA[f"{key}__cam"]).max()
        assert diff <= TOLERANCE, f"{size}: map {diff:.2e} off pytorch-grad-cam"
        act = _reshape(spec, size, SYMBOLIC_DATA[f"{key}__act"])
        assert np.abs(res.activations[0] - act).max() <= TOLERANCE * np.abs(act).max()
        grad = _reshape(spec, size, SYMBOLIC_DATA[f"{key}__grad"])
        rel = np.abs(res.gradients[0] - grad).max() / np.abs(grad).max()
        assert rel <= TOLERANCE, f"{size}: gradient {rel:.2e} off torch autograd"


def test_a_symbolic_grid_is_exported_and_inspected() -> None:
    """The exported file reads the grid off the patch embedding at run time (both sizes in
    plain ONNX Runtime); ``inspect`` prints it as formulas of the input size."""
    import onnxruntime as ort

    spec = SYMBOLIC["sym_vit"]
    proto = og.Explainer(HERE / spec["file"], providers="cpu").export()
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for size in spec["sizes_hw"]:
        key = f"sym_vit__{size[0]}x{size[1]}"
        cams = session.run(["cam"], {"input": SYMBOLIC_DATA[f"{key}__input"],
                                     "target": SYMBOLIC_DATA[f"{key}__targets"]})[0]
        assert np.abs(cams - SYMBOLIC_DATA[f"{key}__cam"]).max() <= TOLERANCE
    out = CliRunner().invoke(app, ["inspect", str(HERE / spec["file"])])
    assert out.exit_code == 0, out.output
    assert "grid H/8 × W/8 (symbolic: from the input size) after 1 leading token" in out.output
    out = CliRunner().invoke(app, ["inspect", "--json", str(HERE / "sym_deit.onnx")])
    layer = json.loads(out.output)["layer"]
    assert (layer["grid"], layer["leading_tokens"]) == (["H/8", "W/8"], 2)


def test_a_token_count_fixed_at_export_is_refused_naming_the_tensor(tmp_path: Path) -> None:
    """The legacy exporter given ``dynamic_axes`` on H and W writes a timm ViT's token count
    as the traced constant: the input is symbolic, the tokens are not. Emulated by making a
    static export's input size symbolic: the probes see 25 tokens at every size, and the
    explainer refuses in one line naming the tensor and what to do."""
    import onnx

    proto = onnx.load(str(HERE / "vit_timm_legacy_opset17.onnx"))
    for dim, name in zip(proto.graph.input[0].type.tensor_type.shape.dim[2:], "HW"):
        dim.Clear()
        dim.dim_param = name
    del proto.graph.value_info[:]
    path = tmp_path / "fixed_tokens.onnx"
    onnx.save(proto, str(path))
    layer = "/blocks/blocks.1/norm1/LayerNormalization_output_0"
    with pytest.raises(og.OnnxGradCamError) as caught:
        og.Explainer(path, providers="cpu")
    message = str(caught.value)
    assert "\n" not in message and repr(layer) in message
    assert "25 at 32×48 and 25 at 56×40" in message and "--layer" in message
    out = CliRunner().invoke(app, ["inspect", str(path), "--layer", layer])
    assert out.exit_code != 0 and "static input size" in str(out.exception)


@pytest.mark.parametrize("attrs", [
    {"kernel_shape": [16, 16], "strides": [16, 16]},
    {"kernel_shape": [7, 5], "strides": [4, 3], "pads": [3, 2, 3, 1]},
    {"kernel_shape": [3, 3], "strides": [2, 2], "dilations": [2, 1]},
    {"kernel_shape": [4, 4], "strides": [4, 3], "auto_pad": "SAME_UPPER"},
], ids=["vit", "pads", "dilation", "same"])
def test_patch_geometry_is_the_conv_arithmetic(attrs: dict) -> None:
    """PatchGeometry's grid and inverse against ONNX Runtime's own Conv at odd input sizes."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from onnx_gradcam.graph import GraphInfo
    from onnx_gradcam.tokens import PatchGeometry

    weight = helper.make_tensor("w", TensorProto.FLOAT, [2, 1, *attrs["kernel_shape"]],
                                [0.0] * (2 * int(np.prod(attrs["kernel_shape"]))))
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], **attrs)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    geometry = PatchGeometry.of(GraphInfo(model), model.graph.node[0])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for size in [(37, 53), (64, 48), (101, 17)]:
        y = session.run(None, {"x": np.zeros((1, 1, *size), np.float32)})[0]
        assert geometry.size(*size) == y.shape[2:], size
    for grid in [(4, 6), (7, 5)]:
        assert geometry.size(*geometry.input_for(*grid)) == grid


@pytest.mark.parametrize("file, narrowed", [
    ("vit_legacy_opset17.onnx", True), ("vit_legacy_opset14.onnx", True),
    ("vit_timm_dynamo.onnx", True), ("sym_vit.onnx", True),
    ("deit_legacy_opset17.onnx", False),  # two picks (class and distillation tokens)
    ("swin_legacy_opset17.onnx", False),  # the head averages every token
])
def test_a_head_that_reads_one_token_is_differentiated_on_that_token(file, narrowed):
    """The class-token head's token-wise ops (MLP, LayerNorms, residuals) are differentiated on
    the picked row only (onnx_gradcam/narrow.py); the gradient equals the whole head's, built
    without narrowing, to float32 rounding."""
    from onnx_gradcam.explainer_graph import GRADIENT, SEED, gradient_model
    from onnx_gradcam.narrow import narrow_head

    ex = og.Explainer(HERE / file, providers="cpu")
    info, layer = ex.model.info, ex.layer_names[0]
    found = narrow_head(info, layer, ex.score, "__t")
    assert (found is not None) == narrowed
    if not narrowed:
        return
    nodes, _ = found
    assert not any(n.op_type in ("Softmax", "Reshape", "Transpose") for n in nodes)
    size = (32, 48) if file.startswith("sym_") else ex.preprocessing().size
    x = np.random.default_rng(3).standard_normal((1, 3, *size)).astype(np.float32)
    result = ex.explain(x, targets=[2])  # batch 1: the dynamo files' batch is fixed
    import onnxruntime as ort

    whole = ort.InferenceSession(gradient_model(info, layer, ex.score).SerializeToString(),
                                 providers=["CPUExecutionProvider"])
    scores = ex.outputs(x)
    seed = np.zeros_like(scores)
    seed[0, 2] = 1
    feeds = {ex.model.info.graph_inputs[0]: x, SEED: seed}
    expected = whole.run([GRADIENT], feeds)[0]
    # the bound: the whole head's own float32 rounding, measured against the same graph in
    # float64; the narrowed gradient rounds the same products on one row instead of all
    from onnx_gradcam.reference import evaluator, to_double

    graph64 = to_double(gradient_model(info, layer, ex.score))
    exact = evaluator(graph64).run([GRADIENT],
                                   {k: v.astype(np.float64) for k, v in feeds.items()})[0]
    noise = np.abs(expected - exact).max()
    n, c, h, w = result.gradients[0].shape  # the grid the explainer folded the tokens into
    expected = expected[:, -h * w:].reshape(n, h, w, c).transpose(0, 3, 1, 2)
    assert noise > 0
    assert np.abs(result.gradients[0] - expected).max() <= NOISE_FACTOR * noise
