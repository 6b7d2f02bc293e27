"""Targets other than a class (og.targets): segmentation maps, embeddings, regression and
YOLO-style detector outputs, against pytorch-grad-cam's GradCAM with the matching target on small
torch models exported by both exporters (tests/fixtures/targets/make_targets.py; torch is not
needed here). The targets' scores are checked against formulas written here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import onnx_gradcam as og

HERE = Path(__file__).parent / "fixtures" / "targets"
MANIFEST = json.loads((HERE / "manifest.json").read_text())["models"]
DATA = np.load(HERE / "expected.npz")
TOLERANCE = 1e-4  # the bar; each head takes no ReLU decision near its kink
SEGMENTATION = ("segmentation", "deeplabv3", "lraspp")  # torchvision's FCN, DeepLabV3, LRASPP
MAPS = 1e-6  # two graphs that differ only in how the seed is made, on the same input


def _files():
    for model, spec in MANIFEST.items():
        for file in spec["files"]:
            yield pytest.param(model, file, id=file.removesuffix(".onnx"))


def _ours(model: str, key: str, n: int) -> list:
    """Our targets for the fixture's target set ``key``."""
    get = lambda field: DATA[f"{model}__{key}__{field}"]  # noqa: E731
    if model in SEGMENTATION:
        return [og.targets.Segmentation(int(c), m) for c, m in zip(get("category"), get("mask"))]
    if model == "embedding":
        return [og.targets.Similarity(get("vector"))] * n
    if model == "regression":
        return [og.targets.Output(int(i)) for i in get("index")]
    if key == "t0":
        return [og.targets.Output(tuple(int(v) for v in i)) for i in get("index")]
    return [og.targets.Output((slice(4, 7), int(a))) for a in get("slice_anchor")]


def _score(model: str, target, out: np.ndarray) -> float:
    """The target's score, written out from its definition."""
    if model in SEGMENTATION:
        return float((out[target.category] * target.mask).sum())
    if model == "embedding":
        v = target.vector
        return float(out @ v / (np.linalg.norm(out) * np.linalg.norm(v)))
    return float(np.sum(out[target.index]))


@pytest.mark.parametrize("model, file", list(_files()))
def test_targets_equal_pytorch_grad_cam(model: str, file: str) -> None:
    spec = MANIFEST[model]["files"][file]
    ex = og.Explainer(HERE / file, layer=spec["layer"], providers="cpu", output=spec["output"])
    x, out = DATA[f"{model}__input"], DATA[f"{model}__output"]
    for key in MANIFEST[model]["targets"]:
        targets = _ours(model, key, len(x))
        res = ex.explain(x, targets)
        expected = [_score(model, t, o) for t, o in zip(targets, out)]
        assert np.allclose(res.scores[:, 0], expected, rtol=TOLERANCE,
                           atol=TOLERANCE * np.abs(out).max())
        diff = np.abs(res.cams - DATA[f"{model}__cam__{key}"]).max(axis=(1, 2))
        assert diff.max() <= TOLERANCE, f"{key}: map max abs diff per image {diff}"


def test_a_class_target_on_a_segmentation_output_is_refused_with_the_fix() -> None:
    ex = og.Explainer(HERE / "segmentation_legacy_opset17.onnx", providers="cpu",
                      layer=MANIFEST["segmentation"]["files"][
                          "segmentation_legacy_opset17.onnx"]["layer"])
    x = DATA["segmentation__input"]
    with pytest.raises(og.OnnxGradCamError, match="not class scores.*Segmentation"):
        ex.explain(x, [0, 1, 2])
    with pytest.raises(og.OnnxGradCamError, match="mask is"):
        ex.explain(x[:1], [og.targets.Segmentation(0, np.ones((4, 4)))])


def test_int_and_class_targets_mean_the_same() -> None:
    ex = og.Explainer(HERE / "regression_legacy_opset17.onnx", providers="cpu")
    x = DATA["regression__input"]
    a = ex.explain(x, [1, 2, 0])
    b = ex.explain(x, [og.targets.Class(1), og.targets.Class(2), og.targets.Class(0)])
    c = ex.explain(x, [og.targets.Output(1), og.targets.Output(2), og.targets.Output(0)])
    assert np.array_equal(a.cams, b.cams)
    assert np.abs(a.cams - c.cams).max() <= 1e-6
    one = ex.explain(x, og.targets.Output(1))  # one target object for the whole batch
    assert np.abs(one.cams - ex.explain(x, 1).cams).max() <= 1e-6
    with pytest.raises(og.OnnxGradCamError, match="different kinds"):
        ex.explain(x, [1, og.targets.Output(2), 0])


def _export_feeds(model: str, key: str) -> dict[str, np.ndarray]:
    """The exported model's target inputs, written from the fixture's own description."""
    get = lambda field: DATA[f"{model}__{key}__{field}"]  # noqa: E731
    if model in SEGMENTATION:
        return {"category": get("category").astype(np.int64),
                "mask": get("mask").astype(np.float32)}
    if model == "embedding":
        return {"vector": np.tile(get("vector"), (3, 1)).astype(np.float32)}
    if key == "t0":
        index = get("index").astype(np.int64)[:, None, :]  # one element per sample
        return {"index": index, "index_weight": np.ones((3, 1), np.float32)}
    anchors = get("slice_anchor").astype(np.int64)
    index = np.stack([np.stack([np.arange(4, 7), np.full(3, a)], axis=1) for a in anchors])
    return {"index": index, "index_weight": np.ones((3, 3), np.float32)}


@pytest.mark.parametrize("model, file, kind", [
    ("segmentation", "segmentation_legacy_opset17.onnx", "segmentation"),
    ("embedding", "embedding_dynamo.onnx", "similarity"),
    ("detector", "detector_legacy_opset17.onnx", "output"),
    ("deeplabv3", "deeplabv3_dynamo.onnx", "segmentation"),
    ("deeplabv3", "deeplabv3_legacy_opset17.onnx", "segmentation"),
    ("lraspp", "lraspp_dynamo.onnx", "segmentation"),
    ("lraspp", "lraspp_legacy_opset17.onnx", "segmentation")])
def test_export_carries_the_target(model: str, file: str, kind: str) -> None:
    """The exported model takes the target kind's inputs and gives pytorch-grad-cam's maps in
    plain ONNX Runtime."""
    import onnxruntime as ort

    spec = MANIFEST[model]["files"][file]
    ex = og.Explainer(HERE / file, layer=spec["layer"], providers="cpu", output=spec["output"])
    session = ort.InferenceSession(ex.export(target_kind=kind).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    x = DATA[f"{model}__input"]
    step = 1 if spec["batch"] == "fixed 1" else len(x)
    for key in MANIFEST[model]["targets"]:
        feeds = _export_feeds(model, key)
        cams = np.concatenate([session.run(["cam"], {
            "input": x[i:i + step], **{k: v[i:i + step] for k, v in feeds.items()}})[0]
            for i in range(0, len(x), step)])
        diff = np.abs(cams - DATA[f"{model}__cam__{key}"]).max()
        assert diff <= TOLERANCE, f"{key}: exported map {diff:.2e} off pytorch-grad-cam"


def test_cli_exports_a_target_kind(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from onnx_gradcam.cli import app

    spec = MANIFEST["segmentation"]["files"]["segmentation_legacy_opset17.onnx"]
    out = tmp_path / "seg_explain.onnx"
    result = CliRunner().invoke(app, [
        "export", str(HERE / "segmentation_legacy_opset17.onnx"), "-o", str(out),
        "--layer", spec["layer"], "--target-output", "logits", "--target-kind", "segmentation"])
    assert result.exit_code == 0, result.output
    import onnx

    inputs = [i.name for i in onnx.load(str(out)).graph.input]
    assert inputs == ["input", "category", "mask"]


@pytest.mark.parametrize("model, file", list(_files()))
def test_default_layer(model: str, file: str) -> None:
    """With no layer named, the default is the layer pytorch-grad-cam's users explain (the
    fixture's): the trunk's output for an embedding, a regression head and a detector (a
    pooled embedding with no Linear is no SqueezeNet-style class map, a detector's prediction
    conv reads the trunk); for a segmentation net the backbone's last feature map before its
    head (FCN's layer3, DeepLabV3's layer4 before ASPP, LRASPP's high features), whose maps
    then equal pytorch-grad-cam's."""
    spec = MANIFEST[model]["files"][file]
    ex = og.Explainer(HERE / file, providers="cpu", output=spec["output"])
    assert ex.layer_names == [spec["layer"]]
    if model in SEGMENTATION:
        x = DATA[f"{model}__input"]
        cams = ex.explain(x, _ours(model, "t0", len(x))).cams
        assert np.abs(cams - DATA[f"{model}__cam__t0"]).max() <= TOLERANCE


def test_segmentation_without_block_structure_is_refused_naming_layer() -> None:
    """A segmentation map behind a plain chain of convs: no split or join tells where the
    backbone ends, so the default layer is refused with the flag to use."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    w1 = helper.make_tensor("w1", TensorProto.FLOAT, [4, 3, 3, 3], rng.normal(size=108))
    w2 = helper.make_tensor("w2", TensorProto.FLOAT, [5, 4, 1, 1], rng.normal(size=20))
    scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2])
    nodes = [helper.make_node("Conv", ["input", "w1"], ["c1"], strides=[2, 2], pads=[1] * 4),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"]),
             helper.make_node("Resize", ["c2", "", "scales"], ["logits"], mode="linear")]
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                       [1, 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5, 16, 16])],
        [w1, w2, scales])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    with pytest.raises(og.OnnxGradCamError, match="segmentation map.*--layer"):
        og.Explainer(model, providers="cpu")
    ex = og.Explainer(model, layer="r1", providers="cpu")  # naming it works
    x = np.random.default_rng(1).normal(size=(1, 3, 16, 16)).astype(np.float32)
    assert ex.explain(x, [og.targets.Segmentation(0, np.ones((16, 16)))]).cams.shape == (
        1, 16, 16)


def _scorecam_cases():
    for name in DATA.files:
        if "__scorecam__" in name:
            model, _, key = name.split("__")
            for file in MANIFEST[model]["files"]:
                yield pytest.param(model, file, key, id=f"{file.removesuffix('.onnx')}-{key}")


@pytest.mark.parametrize("model, file, key", list(_scorecam_cases()))
def test_scorecam_scores_the_target(model: str, file: str, key: str) -> None:
    """Score-CAM with a target object weighs each channel by that target's score of the
    masked input: pytorch-grad-cam's ScoreCAM with the same target."""
    spec = MANIFEST[model]["files"][file]
    ex = og.Explainer(HERE / file, layer=spec["layer"], method="scorecam", providers="cpu",
                      output=spec["output"])
    x = DATA[f"{model}__input"]
    targets = _ours(model, key, len(x))
    res = ex.explain(x, targets)
    diff = np.abs(res.cams - DATA[f"{model}__scorecam__{key}"]).max()
    assert diff <= TOLERANCE, f"Score-CAM {diff:.2e} off pytorch-grad-cam"
    expected = [_score(model, t, o) for t, o in zip(targets, DATA[f"{model}__output"])]
    assert np.allclose(res.scores[:, 0], expected, rtol=TOLERANCE,
                       atol=TOLERANCE * np.abs(DATA[f"{model}__output"]).max())


@pytest.mark.parametrize("model, file", [("segmentation", "segmentation_legacy_opset17.onnx"),
                                         ("deeplabv3", "deeplabv3_dynamo.onnx"),
                                         ("detector", "detector_legacy_opset17.onnx")])
def test_explain_many_takes_rows_of_target_objects(model: str, file: str) -> None:
    """k target objects per image: each rank's map is pytorch-grad-cam's for that target, and
    the scores are each target's."""
    spec = MANIFEST[model]["files"][file]
    ex = og.Explainer(HERE / file, layer=spec["layer"], providers="cpu", output=spec["output"])
    x, out = DATA[f"{model}__input"], DATA[f"{model}__output"]
    keys = MANIFEST[model]["targets"]
    per_key = [_ours(model, key, len(x)) for key in keys]
    rows = [list(row) for row in zip(*per_key)]
    res = ex.explain_many(x, rows)
    assert res.cams.shape == (len(x), len(keys), *x.shape[2:])
    for r, key in enumerate(keys):
        assert np.abs(res.cams[:, r] - DATA[f"{model}__cam__{key}"]).max() <= TOLERANCE
        expected = [_score(model, t, o) for t, o in zip(per_key[r], out)]
        assert np.allclose(res.scores[:, r], expected, rtol=TOLERANCE,
                           atol=TOLERANCE * np.abs(out).max())
    with pytest.raises(og.OnnxGradCamError, match="rows of k target objects"):
        ex.explain_many(x, rows[:1])


def test_two_layers_with_a_target_average_their_maps() -> None:
    """A multi-layer map for a target object is pytorch-grad-cam's aggregation (written out
    here) of each layer's coarse map: ReLU, min-max, resize, then the mean's ReLU and min-max."""
    import cv2

    file = "deeplabv3_legacy_opset17.onnx"
    spec = MANIFEST["deeplabv3"]["files"][file]
    early = "/model/backbone/layer3/layer3.0/relu_2/Relu_output_0"
    x = DATA["deeplabv3__input"]
    targets = _ours("deeplabv3", "t0", len(x))
    both = og.Explainer(HERE / file, layer=[spec["layer"], early], providers="cpu")
    coarse = [og.Explainer(HERE / file, layer=name, providers="cpu").explain(x, targets).coarse
              for name in (spec["layer"], early)]

    def minmax(a: np.ndarray) -> np.ndarray:
        a = a - a.min()
        return a / (1e-7 + a.max())

    h, w = x.shape[2:]
    for i in range(len(x)):
        layers = [cv2.resize(minmax(np.maximum(c[i], 0)).astype(np.float32), (w, h))
                  for c in coarse]
        expected = minmax(np.maximum(np.mean(np.maximum(layers, 0), axis=0), 0))
        assert np.abs(both.explain(x[i:i + 1], targets[i]).cams[0] - expected).max() <= 1e-5


@pytest.mark.parametrize("file", [f for m in SEGMENTATION for f in MANIFEST[m]["files"]])
def test_inspect_shows_the_segmentation_default_layer(file: str) -> None:
    from typer.testing import CliRunner

    from onnx_gradcam.cli import app

    model = file.split("_")[0]
    result = CliRunner().invoke(app, ["inspect", str(HERE / file), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["layer"]["name"] == MANIFEST[model]["files"][file]["layer"]


def _two_pass(ex: og.Explainer, x: np.ndarray, categories: np.ndarray) -> tuple:
    """The two-pass path, written here: each image's mask from a forward run of its own
    (argmax over C == category), explained as an explicit mask; the label −1 where it is
    empty."""
    masks = ex.outputs(x).argmax(axis=1) == categories[:, None, None]
    res = ex.explain(x, [og.targets.Segmentation(int(c), m.astype(np.float32))
                         for c, m in zip(categories, masks)])
    return res, np.where(masks.any(axis=(1, 2)), categories, -1)


def _predicted_cases():
    for model in SEGMENTATION:
        for file in MANIFEST[model]["files"]:
            yield pytest.param(model, file, "gradcam", id=f"{file.removesuffix('.onnx')}")
    yield pytest.param("deeplabv3", "deeplabv3_legacy_opset17.onnx", "scorecam", id="scorecam")
    yield pytest.param("lraspp", "lraspp_dynamo.onnx", "gradcam+aug", id="aug_smooth")


@pytest.mark.parametrize("model, file, method", list(_predicted_cases()))
def test_a_predicted_mask_equals_the_mask_read_in_a_pass_of_its_own(model: str, file: str,
                                                                    method: str) -> None:
    """Segmentation(c) with no mask (the mask read inside the explainer graph) gives the maps
    and scores of the explicit mask read from a forward pass of its own, for every class (some
    with an empty mask in some image: label −1 there), per-sample classes, and one target for
    the batch. Score-CAM and aug_smooth read the mask of ``x`` up front (their passes run the
    model on other inputs)."""
    spec = MANIFEST[model]["files"][file]
    name, _, aug = method.partition("+")
    ex = og.Explainer(HERE / file, layer=spec["layer"], providers="cpu", output=spec["output"],
                      method=name, aug_smooth=bool(aug))
    x = DATA[f"{model}__input"]
    classes = ex.outputs(x).shape[1]
    per_sample = np.arange(len(x)) * 2 % classes
    cases = [np.full(len(x), c) for c in range(classes)] + [per_sample]
    empty = 0
    for categories in cases:
        expected, labels = _two_pass(ex, x, categories)
        if len(set(categories)) == 1:
            res = ex.explain(x, og.targets.Segmentation(int(categories[0])))
        else:
            res = ex.explain(x, [og.targets.Segmentation(int(c)) for c in categories])
        assert np.array_equal(res.targets, labels), (categories, res.targets, labels)
        assert np.abs(res.cams - expected.cams).max() <= MAPS, categories
        assert np.abs(res.scores - expected.scores).max() <= MAPS * np.abs(
            expected.scores).max(), categories
        empty += int((labels == -1).sum())
    assert empty and empty < len(cases) * len(x)  # both kinds of image were seen


@pytest.mark.parametrize("file", MANIFEST["deeplabv3"]["files"])
def test_a_predicted_mask_runs_the_model_once(file: str) -> None:
    """The mask is read from the explainer graph's own forward: each image goes through one
    session once (in chunks where the model takes a fixed batch of 1), and the model's plain
    forward (Explainer.outputs) never runs."""
    import onnxruntime as ort

    spec = MANIFEST["deeplabv3"]["files"][file]
    ex = og.Explainer(HERE / file, layer=spec["layer"], providers="cpu")
    x = DATA["deeplabv3__input"]
    ex.explain(x, og.targets.Segmentation(0))  # sessions built and warm
    runs = []
    real = ort.InferenceSession.run

    def counted(session, names, feeds, *args, **kwargs):
        runs.append((session, len(feeds[ex.model.input_name])))
        return real(session, names, feeds, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ort.InferenceSession, "run", counted)
        mp.setattr(og.Explainer, "outputs", lambda *a: pytest.fail("a forward of its own"))
        ex.explain(x, og.targets.Segmentation(0))
    assert len({session for session, _ in runs}) == 1 and sum(n for _, n in runs) == len(x)


@pytest.mark.parametrize("model, file", [("deeplabv3", "deeplabv3_legacy_opset17.onnx"),
                                         ("lraspp", "lraspp_dynamo.onnx")])
def test_export_of_a_predicted_mask_takes_the_class_alone(model: str, file: str) -> None:
    """``target_kind="predicted_segmentation"``: the exported model's only target input is
    ``category``; in plain ONNX Runtime its maps and ``cam_target`` (−1 where the mask is
    empty) are the Python API's."""
    import onnxruntime as ort

    spec = MANIFEST[model]["files"][file]
    ex = og.Explainer(HERE / file, layer=spec["layer"], providers="cpu", output=spec["output"])
    exported = ex.export(target_kind="predicted_segmentation")
    assert [i.name for i in exported.graph.input] == ["input", "category"]
    session = ort.InferenceSession(exported.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    x = DATA[f"{model}__input"]
    step = 1 if spec["batch"] == "fixed 1" else len(x)
    for c in range(ex.outputs(x).shape[1]):
        category = np.full(len(x), c, np.int64)
        cams, labels = (np.concatenate(parts) for parts in zip(*[session.run(
            ["cam", "cam_target"], {"input": x[i:i + step], "category": category[i:i + step]})
            for i in range(0, len(x), step)]))
        api = ex.explain(x, og.targets.Segmentation(c))
        assert np.array_equal(labels, api.targets)
        assert np.abs(cams - api.cams).max() <= TOLERANCE
