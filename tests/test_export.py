"""`onnx-gradcam export`: one standard ONNX model whose cams equal the Explainer's."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import onnx_gradcam as og
from onnx_gradcam.autodiff.emitter import Emitter
from onnx_gradcam.cams import GRAPH_METHODS, min_max
from onnx_gradcam.cams.graph import extreme_samples, heatmap, linear_taps, upsample
from onnx_gradcam.triton import triton_config, write_triton
from tests.models import nhwc_cnn, small_cnn
from tests.test_cams import coarse_cases, two_step_heatmap

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "models" / "demo.onnx"
KERAS = ROOT / "tests" / "fixtures" / "export" / "keras_small.onnx"
COARSE_TOL, CAM_TOL = 1e-5, 1e-4


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # ORT warns that the optional `target` is an initializer input
    return ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def run(model: onnx.ModelProto, feeds: dict) -> dict[str, np.ndarray]:
    sess = session(model)
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def batch_for(ex: og.Explainer, n: int, seed: int = 0) -> np.ndarray:
    shape = [n, *(d for d in ex.model.input_shape[1:])]
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def models() -> dict[str, tuple[onnx.ModelProto | Path, str | None]]:
    out: dict[str, tuple[onnx.ModelProto | Path, str | None]] = {
        "small_cnn": (small_cnn(), None), "keras": (KERAS, None),
        "nhwc_layer": (nhwc_cnn(), "act_nhwc"), "batch_of_one": (small_cnn(batch=1), None),
        "softmax_opset13": (small_cnn(softmax=True, opset=13, head="mean_matmul"), None)}
    if DEMO.exists():
        out["demo"] = (DEMO, None)
    return out


MODELS = models()


def assert_same_as_explainer(ex: og.Explainer, exported: onnx.ModelProto, x: np.ndarray,
                             targets: np.ndarray | None) -> None:
    feeds = {ex.model.input_name: x}
    if targets is not None:
        feeds["target"] = targets
    got = run(exported, feeds)
    want = ex.explain(x, targets)
    np.testing.assert_array_equal(got["cam_target"], want.targets)
    coarse = min_max(np.maximum(want.coarse, 0))
    assert float(coarse.std()) > 0.01, "degenerate maps would prove nothing"
    assert np.abs(got["cam_coarse"] - coarse).max() <= COARSE_TOL
    assert np.abs(got["cam"] - want.cams).max() <= CAM_TOL
    plain = run(ex.model.proto, feeds={ex.model.input_name: x})
    for name, value in plain.items():  # the original outputs pass through unchanged
        np.testing.assert_allclose(got[name], value, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", list(GRAPH_METHODS))
@pytest.mark.parametrize("name", sorted(MODELS))
def test_exported_cams_equal_explainer(name: str, method: str) -> None:
    source, layer = MODELS[name]
    ex = og.Explainer(source, layer=layer, method=method, providers="cpu")
    exported = ex.export()
    onnx.checker.check_model(exported, full_check=True)
    n = ex.model.input_shape[0] or 3
    x = batch_for(ex, n)
    assert_same_as_explainer(ex, exported, x, None)  # target omitted: argmax
    classes = ex.num_classes or 2
    assert_same_as_explainer(ex, exported, x, np.arange(1, n + 1, dtype=np.int64) % classes)


def test_demo_model_is_covered() -> None:
    if not DEMO.exists():
        pytest.skip("models/demo.onnx is not built yet (make demo trains it)")
    assert "demo" in MODELS


def test_a_single_target_broadcasts_and_bad_targets_give_zero_maps() -> None:
    ex = og.Explainer(small_cnn(), providers="cpu")
    exported = ex.export()
    x = batch_for(ex, 4)
    got = run(exported, {"input": x, "target": np.array([2], np.int64)})
    np.testing.assert_array_equal(got["cam_target"], [2, 2, 2, 2])
    np.testing.assert_allclose(got["cam"], ex.explain(x, 2).cams, atol=CAM_TOL)
    out_of_range = run(exported, {"input": x, "target": np.array([7], np.int64)})
    assert not out_of_range["cam"].any() and np.isfinite(out_of_range["cam"]).all()


def test_target_is_an_optional_input_unless_required() -> None:
    ex = og.Explainer(small_cnn(), providers="cpu")
    optional = session(ex.export())
    assert [i.name for i in optional.get_inputs()] == ["input"]
    assert [i.name for i in optional.get_overridable_initializers()] == ["target"]
    required = ex.export(target_required=True)
    sess = session(required)
    assert [(i.name, i.type) for i in sess.get_inputs()] == [("input", "tensor(float)"),
                                                              ("target", "tensor(int64)")]
    x = batch_for(ex, 2)
    with pytest.raises(Exception, match="target"):
        sess.run(None, {"input": x})
    got = run(required, {"input": x, "target": np.array([-1], np.int64)})
    np.testing.assert_allclose(got["cam"], ex.explain(x).cams, atol=CAM_TOL)


def test_symbolic_input_size_upsamples_to_each_batch_size() -> None:
    model = small_cnn()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    onnx.helper.set_model_props(model, {"onnx_gradcam.input_size": "16,16"})
    ex = og.Explainer(model, providers="cpu")
    exported = ex.export()
    cam_dims = exported.graph.output[1].type.tensor_type.shape.dim
    assert [d.dim_param for d in cam_dims[1:]] == ["H", "W"]  # the graph's, not the metadata's
    for h, w in [(16, 16), (24, 20)]:
        x = np.random.default_rng(h).uniform(-1, 1, (2, 3, h, w)).astype(np.float32)
        got = run(exported, {"input": x})
        assert got["cam"].shape == (2, h, w)
        np.testing.assert_allclose(got["cam"], ex.explain(x).cams, atol=CAM_TOL)


def test_no_upsample_outputs_only_the_coarse_map() -> None:
    ex = og.Explainer(small_cnn(), providers="cpu")
    exported = ex.export(upsample=False)
    assert [o.name for o in exported.graph.output] == ["logits", "cam_coarse", "cam_target"]
    x = batch_for(ex, 2)
    got = run(exported, {"input": x})
    np.testing.assert_allclose(got["cam_coarse"], min_max(np.maximum(ex.explain(x).coarse, 0)),
                               atol=COARSE_TOL)


def test_several_layers_combine_as_the_explainer_does() -> None:
    ex = og.Explainer(small_cnn(), layer=["r1", "act"], method="layercam", providers="cpu")
    x = batch_for(ex, 2)
    got = run(ex.export(), {"input": x})
    np.testing.assert_allclose(got["cam"], ex.explain(x).cams, atol=CAM_TOL)
    with pytest.raises(og.OnnxGradCamError, match="one target layer"):
        ex.export(upsample=False)


@pytest.mark.parametrize("method", ["scorecam", "eigencam", "eigengradcam"])
def test_methods_that_cannot_live_in_one_graph_fail_clearly(method: str) -> None:
    ex = og.Explainer(small_cnn(), method=method, providers="cpu")
    with pytest.raises(og.OnnxGradCamError) as info:
        ex.export()
    message = str(info.value)
    assert "\n" not in message and f"cannot export {method!r}" in message
    assert ("forward pass per channel" in message) == (method == "scorecam")
    assert "exportable methods: gradcam, hirescam, gradcam_elementwise, gradcam++, xgradcam, " \
           "layercam" in message


def test_smoothing_options_are_refused() -> None:
    for option in ("eigen_smooth", "aug_smooth"):
        ex = og.Explainer(small_cnn(), providers="cpu", **{option: True})
        with pytest.raises(og.OnnxGradCamError, match=f"cannot export {option}"):
            ex.export()


def test_taken_output_names_are_refused() -> None:
    model = small_cnn()
    for node in model.graph.node:
        node.output[:] = ["cam" if o == "r1" else o for o in node.output]
        node.input[:] = ["cam" if i == "r1" else i for i in node.input]
    with pytest.raises(og.OnnxGradCamError, match="already has a tensor named 'cam'"):
        og.Explainer(model, providers="cpu").export()


def test_metadata_carries_over_and_records_the_export() -> None:
    ex = og.Explainer(KERAS, providers="cpu")
    exported = ex.export()
    before = {p.key: p.value for p in onnx.load(str(KERAS)).metadata_props}
    after = {p.key: p.value for p in exported.metadata_props}
    assert before.items() <= after.items()
    assert after["onnx_gradcam.export.method"] == "gradcam"
    assert after["onnx_gradcam.export.score"] == "logits"
    assert after["onnx_gradcam.export.target"] == "optional"
    pre = json.loads(after["onnx_gradcam.export.preprocessing"])
    assert pre == {"size": [40, 48], "layout": "NHWC", "color": "RGB",
                   "scale": pytest.approx(1 / 127.5), "mean": [1.0, 1.0, 1.0],
                   "std": [1.0, 1.0, 1.0]}


def test_exported_file_is_less_than_ten_percent_bigger(tmp_path: Path) -> None:
    """Weights are shared by the forward and gradient graphs: the export adds ~70 small nodes
    (a fixed ~7 KB), nothing that grows with the model."""
    from bench.nets import resnet

    sources = {"resnet": resnet(blocks=(1, 1, 1, 1), width=16, classes=10, size=64)}
    if DEMO.exists():
        sources["demo"] = onnx.load(str(DEMO))
    for name, source in sources.items():
        ex = og.Explainer(source, providers="cpu")
        path = tmp_path / f"{name}.onnx"
        ex.export(path)
        original = ex.model.proto.ByteSize()
        assert path.stat().st_size <= 1.10 * original, (name, path.stat().st_size, original)
    for name, (model, layer) in MODELS.items():  # toy models: only the fixed overhead
        ex = og.Explainer(model, layer=layer, providers="cpu")
        added = ex.export().ByteSize() - ex.model.proto.ByteSize()
        assert added <= 12_000, (name, added)


# ---- Resize against cv2.resize -------------------------------------------------------------
SIZES = [(7, 7, 224, 224), (8, 8, 16, 16), (14, 14, 224, 224), (17, 21, 40, 48), (5, 3, 48, 40),
         (13, 13, 299, 299), (1, 1, 8, 8), (2, 9, 31, 100), (7, 7, 7, 7), (6, 6, 331, 331)]


def test_in_graph_upsampling_matches_cv2_resize() -> None:
    """ONNX Resize (linear, half_pixel) = cv2.resize INTER_LINEAR up to float rounding of the
    source coordinates: measured ≤ 1.3e-6 on [0, 1] maps."""
    op = Emitter(opset=17, dtype=np.dtype(np.float32), prefix="t/")
    out = upsample(op, "maps", "size")
    graph = helper.make_graph(
        [*op.nodes, helper.make_node("Identity", [out], ["y"])], "resize",
        [helper.make_tensor_value_info("maps", TensorProto.FLOAT, ["n", 1, "h", "w"]),
         helper.make_tensor_value_info("size", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1, "H", "W"])],
        op.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    sess = session(model)
    rng = np.random.default_rng(0)
    for h, w, height, width in SIZES:
        maps = rng.random((2, 1, h, w), dtype=np.float32)
        got = sess.run(None, {"maps": maps, "size": np.array([height, width])})[0]
        want = np.stack([cv2.resize(m[0], (width, height))[None] for m in maps])
        assert np.abs(got - want).max() <= 2e-6, (h, w, height, width)


def test_static_upsampling_is_two_matmuls_that_match_cv2_resize(tmp_path: Path) -> None:
    """With static sizes the maps are upsampled by constant interpolation matrices (built by
    nodes ONNX Runtime folds at load): ≤ 1e-6 from cv2.resize, no Resize left in the graph,
    nothing but two MatMuls left after ONNX Runtime's constant folding."""
    rng = np.random.default_rng(1)
    for h, w, height, width in [s for s in SIZES if s[2] >= s[0] and s[3] >= s[1]]:
        op = Emitter(opset=17, dtype=np.dtype(np.float32), prefix="t/")
        out = upsample(op, "maps", (height, width), (h, w))
        assert "Resize" not in {n.op_type for n in op.nodes}
        graph = helper.make_graph(
            [*op.nodes, helper.make_node("Identity", [out], ["y"])], "mm",
            [helper.make_tensor_value_info("maps", TensorProto.FLOAT, ["n", 1, h, w])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1, height, width])],
            op.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        maps = rng.random((3, 1, h, w), dtype=np.float32)
        got = session(model).run(None, {"maps": maps})[0]
        want = np.stack([cv2.resize(m[0], (width, height))[None] for m in maps])
        assert np.abs(got - want).max() <= 1e-6, (h, w, height, width)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "folded.onnx")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    folded = onnx.load(options.optimized_model_filepath)
    ops = [n.op_type for n in folded.graph.node]
    assert ops.count("MatMul") == 2 and set(ops) <= {"MatMul", "Identity"}, ops


# ---- Triton --------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(6, 6), (7, 9), (24, 30), (96, 96)])
def test_in_graph_heatmap_equals_the_two_min_max_steps(size: tuple[int, int]) -> None:
    """One layer upsampled in the graph takes one division (cams.graph.heatmap): within 1e-6
    of pytorch-grad-cam's two steps written out with cv2 in the test."""
    op = Emitter(opset=17, dtype=np.dtype(np.float32), prefix="t/")
    out = heatmap(op, ["maps"], size, [(6, 6)])
    assert [n.op_type for n in op.nodes].count("Div") == 1
    graph = helper.make_graph(
        [*op.nodes, helper.make_node("Identity", [out], ["y"])], "heatmap",
        [helper.make_tensor_value_info("maps", TensorProto.FLOAT, ["n", 1, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1, *size])],
        op.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    sess = session(model)
    for coarse in coarse_cases():
        got = sess.run(None, {"maps": coarse[:, None]})[0][:, 0]
        assert np.abs(got - two_step_heatmap(coarse, size)).max() <= 1e-6, size
        assert got.min() >= 0 and got.max() <= 1


@pytest.mark.parametrize("src, dst", [(1, 8), (2, 3), (5, 160), (6, 7), (7, 224), (24, 96),
                                      (13, 299), (9, 9)])
def test_extreme_samples_hold_every_interpolated_minimum_and_maximum(src: int, dst: int) -> None:
    """heatmap finds the extremes of the upsampled map on a subgrid: for random signals and
    one-hot ones, the min and max over all outputs of the interpolation (the matrix built
    from linear_taps, which matches cv2.resize above) are taken at extreme_samples too."""
    left, frac = linear_taps(src, dst)
    interp = np.zeros((dst, src), np.float64)
    interp[np.arange(dst), left] += 1 - frac
    interp[np.arange(dst), np.minimum(left + 1, src - 1)] += frac
    keep = extreme_samples(src, dst)
    assert len(keep) <= 2 * src
    rng = np.random.default_rng(src * 1000 + dst)
    for signal in [*rng.standard_normal((50, src)), *np.eye(src)]:
        out = interp @ signal
        assert out[keep].min() == out.min() and out[keep].max() == out.max()


def test_triton_repository_layout(tmp_path: Path) -> None:
    ex = og.Explainer(small_cnn(), providers="cpu")
    exported = ex.export()
    folder = write_triton(exported, tmp_path, "small_explain")
    assert (folder / "1" / "model.onnx").read_bytes() == exported.SerializeToString()
    config = (folder / "config.pbtxt").read_text()
    assert config == triton_config(exported, "small_explain")
    assert 'name: "small_explain"' in config and 'backend: "onnxruntime"' in config
    assert "max_batch_size: 0" in config
    target = config[config.index('name: "target"'):].split("}")[0]
    assert "TYPE_INT64" in target and "dims: [ -1 ]" in target and "optional: true" in target
    cam = config[config.index('name: "cam"'):].split("}")[0]
    assert "TYPE_FP32" in cam and "dims: [ -1, 16, 16 ]" in cam
    required = triton_config(ex.export(target_required=True), "x")
    assert "optional" not in required
    with pytest.raises(og.OnnxGradCamError, match="Triton model name"):
        write_triton(exported, tmp_path, "../evil")


# ---- CLI -----------------------------------------------------------------------------------
def cli(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    """``onnx-gradcam ARGS`` in-process through the real entry point (its error boundary)."""
    from onnx_gradcam.cli import app, main
    from onnx_gradcam.cli.export import export_command

    if not any(c.name == "export" for c in app.registered_commands):
        app.command("export")(export_command)  # until cli/__init__.py registers it
    monkeypatch.setattr(sys, "argv", ["onnx-gradcam", *args])
    try:
        main()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_cli_export_and_triton(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "explain.onnx"
    code = cli(monkeypatch, "export", str(KERAS), "-o", str(out), "--method", "gradcam++",
               "--triton", str(tmp_path / "repo"))
    err = capsys.readouterr().err
    assert code == 0, err
    assert "exported gradcam++" in err and "cam, cam_coarse, cam_target" in err
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    assert (tmp_path / "repo" / "keras_small_explain" / "config.pbtxt").exists()
    ex = og.Explainer(KERAS, method="gradcam++", providers="cpu")
    x = batch_for(ex, 2)
    np.testing.assert_allclose(run(model, {ex.model.input_name: x})["cam"], ex.explain(x).cams,
                               atol=CAM_TOL)


@pytest.mark.parametrize("args, message", [
    (["--method", "scorecam", "-o", "x.onnx"], "cannot export 'scorecam'"),
    ([], "nowhere to write"),
])
def test_cli_errors_are_one_line(args: list[str], message: str, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    code = cli(monkeypatch, "export", str(KERAS), *args)
    err = capsys.readouterr().err.strip()
    assert code == 1 and message in err and "\n" not in err
    assert not (tmp_path / "x.onnx").exists()
