"""Input layout and channels come from the model; flags override them, never reset them.
Graphs we cannot explain say precisely why.

The input cases go through the real command (``onnx-gradcam run``) on image files.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from skimage import data

import onnx_gradcam as og
from onnx_gradcam.metadata import metadata_props, write_metadata
from onnx_gradcam.model import candidate_layers

ROOT = Path(__file__).resolve().parents[1]
KERAS = ROOT / "tests/fixtures/export/keras_small.onnx"  # tf2onnx, NHWC input (N, 40, 48, 3)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnx_gradcam", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def conv_model(channels: int, nhwc: bool = False, size: int = 20) -> onnx.ModelProto:
    """A small classifier of ``channels``-channel images (Conv-Relu ×2, GAP, Gemm)."""
    rng = np.random.default_rng(channels)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["act"]),
             helper.make_node("GlobalAveragePool", ["act"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "wfc"], ["logits"])]
    shape = ["N", channels, size, size]
    if nhwc:
        nodes.insert(0, helper.make_node("Transpose", ["image"], ["x"], perm=[0, 3, 1, 2]))
        shape = ["N", size, size, channels]
    inits = {"w1": rng.standard_normal((6, channels, 3, 3)),
             "w2": rng.standard_normal((6, 6, 3, 3)), "wfc": rng.standard_normal((6, 4))}
    graph = helper.make_graph(
        nodes, "conv", [helper.make_tensor_value_info("image" if nhwc else "x",
                                                      TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "astronaut.png"
    cv2.imwrite(str(path), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    return path


def _npy(out: Path) -> np.ndarray:
    return np.load(next(out.glob("*.npy")))


def _api_cam(model, x: np.ndarray) -> np.ndarray:
    return og.Explainer(model, providers="cpu").explain(x[None]).cams[0]


def test_nhwc_model_without_metadata_is_fed_nhwc_under_scale_mean_std(photo, tmp_path):
    raw = onnx.load(KERAS)
    del raw.metadata_props[:]
    path = tmp_path / "raw_nhwc.onnx"
    onnx.save(raw, path)
    out = tmp_path / "out"
    proc = cli("run", path, photo, "-o", out, "--scale", "0.5", "--mean", "10",
               "--std", "20", "--save-npy", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "report.json").read_text())["preprocessing"]["layout"] == "NHWC"
    rgb = cv2.resize(data.astronaut(), (48, 40), interpolation=cv2.INTER_LINEAR)
    x = ((rgb.astype(np.float32) * 0.5 - 10) / 20).astype(np.float32)  # (H, W, C): NHWC
    np.testing.assert_allclose(_npy(out), _api_cam(path, x), atol=1e-6)


@pytest.mark.parametrize("metadata", [False, True])
def test_nhwc_model_with_a_preset_stays_nhwc(photo, tmp_path, metadata):
    model = onnx.load(KERAS)
    if not metadata:
        del model.metadata_props[:]
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    proc = cli("run", path, photo, "-o", tmp_path / "out", "--preset", "imagenet", "--quiet")
    assert proc.returncode == 0, proc.stderr


def test_a_layout_flag_overrides_the_model(photo, tmp_path):
    proc = cli("run", KERAS, photo, "-o", tmp_path / "out", "--nchw", "--quiet")
    assert proc.returncode == 1
    assert "(1, 3, 40, 48)" in proc.stderr and "'input:0'" in proc.stderr


@pytest.mark.parametrize("nhwc", [False, True])
def test_one_channel_models_get_gray_images(photo, tmp_path, nhwc):
    path = tmp_path / "gray.onnx"
    onnx.save(conv_model(1, nhwc), path)
    out = tmp_path / "out"
    proc = cli("run", path, photo, "-o", out, "--save-npy", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "report.json").read_text())["preprocessing"]["color"] == "GRAY"
    rgb = cv2.resize(data.astronaut(), (20, 20), interpolation=cv2.INTER_LINEAR)
    luma = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])  # ITU-R BT.601
    x = (luma / 255).astype(np.float32)[None] if not nhwc else (luma / 255)[..., None]
    np.testing.assert_allclose(_npy(out), _api_cam(path, x.astype(np.float32)), atol=1e-5)


def test_gray_flag_metadata_and_preset(photo, tmp_path):
    model = conv_model(1)
    write_metadata(model, {"onnx_gradcam.color": "GRAY", "onnx_gradcam.scale": "1.0"})
    path = tmp_path / "gray_meta.onnx"
    onnx.save(model, path)
    for flags in ([], ["--gray"], ["--preset", "imagenet"]):
        out = tmp_path / f"out{len(flags)}"
        proc = cli("run", path, photo, "-o", out, "--quiet", *flags)
        assert proc.returncode == 0, proc.stderr
        assert json.loads((out / "report.json").read_text())["preprocessing"]["color"] == "GRAY"


@pytest.mark.parametrize("channels,flags,message", [
    (1, ["--rgb"], "1 channel(s) (NCHW), but the preprocessing makes 3; the model takes gray"),
    (3, ["--gray"], "3 channel(s) (NCHW), but the preprocessing makes 1"),
    (4, [], "input 'x' has shape (None, 4, 20, 20): 4 channel(s)"),
    (4, [], "neither RGB nor gray"),
])
def test_channel_mismatch_is_refused_in_one_line(photo, tmp_path, channels, flags, message):
    path = tmp_path / "m.onnx"
    onnx.save(conv_model(channels), path)
    proc = cli("run", path, photo, "-o", tmp_path / "out", "--quiet", *flags)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_four_channel_nhwc_input_is_recognised_and_refused(photo, tmp_path):
    path = tmp_path / "rgba.onnx"
    onnx.save(conv_model(4, nhwc=True), path)
    proc = cli("run", path, photo, "-o", tmp_path / "out", "--quiet")
    assert proc.returncode == 1
    assert "(None, 20, 20, 4): 4 channel(s) (NHWC)" in proc.stderr


def test_bad_color_metadata_names_the_choices():
    model = conv_model(3)
    write_metadata(model, {"onnx_gradcam.color": "CMYK"})
    with pytest.raises(og.OnnxGradCamError, match="use RGB, BGR or GRAY"):
        og.Explainer(model)


def test_metadata_round_trip_keeps_gray():
    props = metadata_props(preprocessing=og.Preprocessing(color="GRAY"))
    assert props["onnx_gradcam.color"] == "GRAY"


def test_quantized_qoperator_graph_says_what_is_unsupported(tmp_path):
    """A quantized graph whose op has no gradient rule (ONNX Runtime's fused
    DynamicQuantizeMatMul): its only float 4-D tensor is the input, and the refusal names the
    op."""
    consts = {"w": np.full((192, 4), 3, np.int8), "ws": np.float32(0.01)}
    nodes = [helper.make_node("Flatten", ["x"], ["f"]),
             helper.make_node("DynamicQuantizeMatMul", ["f", "w", "ws"], ["logits"],
                              domain="com.microsoft")]
    graph = helper.make_graph(
        nodes, "qop", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    path = tmp_path / "q.onnx"
    onnx.save(model, path)
    proc = cli("inspect", path)
    assert proc.returncode == 1
    assert "quantized QOperator ops" in proc.stderr and "DynamicQuantizeMatMul" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_weights_stored_as_constant_nodes_are_not_candidate_layers():
    """paddle2onnx stores conv weights as Constant nodes: 4-D tensors, but not activations."""
    model = conv_model(3)
    graph = model.graph
    weights = [t for t in graph.initializer if t.name in ("w1", "w2")]
    for tensor in weights:
        graph.node.insert(0, helper.make_node("Constant", [], [tensor.name], value=tensor))
        graph.initializer.remove(tensor)
    names = [layer.name for layer in candidate_layers(og.load_model(model))]
    assert names == ["c1", "r1", "c2", "act"]


@pytest.mark.parametrize("layout, color, scale, mean, std", [
    ("NCHW", "RGB", 1 / 255, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    ("NCHW", "BGR", 1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ("NHWC", "RGB", 1.0, (103.939, 116.779, 123.68), (1.0, 1.0, 1.0)),
    ("NHWC", "BGR", 1 / 127.5, (1.0, 1.0, 1.0), (1.0, 1.0, 1.0)),
    ("NCHW", "GRAY", 1 / 255, (0.5,), (0.5,)),
])
def test_preprocess_is_the_formula_to_the_bit(layout, color, scale, mean, std):
    """x = (pixels · scale − mean) / std in float32, in the model's colour order and layout,
    after the resize: written out here, compared bit for bit (preprocess works in place)."""

    from onnx_gradcam.images import preprocess
    from onnx_gradcam.metadata import Preprocessing

    rgb = np.random.default_rng(7).integers(0, 256, (61, 47, 3), dtype=np.uint8)
    pre = Preprocessing(size=(32, 40), layout=layout, color=color, scale=scale, mean=mean,
                        std=std)
    pixels = cv2.resize(rgb, (40, 32), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    if color == "BGR":
        pixels = pixels[..., ::-1]
    if color == "GRAY":
        pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)[..., None]
    want = (pixels * np.float32(scale) - np.float32(mean)) / np.float32(std)
    if layout == "NCHW":
        want = want.transpose(2, 0, 1)
    got = preprocess(rgb, pre, pre.size)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    assert np.array_equal(got, want)
