"""``run --segment CLASS [--mask FILE]``, ``--similar-to IMAGE`` and ``--target-output``: the real
command on image files, against the Python API and the targets' scores written out here, on the
torch fixtures of tests/test_targets.py (DeepLabV3 and a ResNet embedding)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

import onnx_gradcam as og
from onnx_gradcam.results import read_rows

FIXTURES = Path(__file__).parent / "fixtures" / "targets"
SEGMENTER = FIXTURES / "deeplabv3_legacy_opset17.onnx"  # (N, 5, 48, 64)
EMBEDDER = FIXTURES / "embedding_legacy_opset17.onnx"  # (N, 32)
MAPS = 1e-6  # the command and the API run the same graph on the same input


def cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnx_gradcam", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    for name, rgb in (("cat", data.chelsea()), ("coffee", data.coffee())):
        cv2.imwrite(str(folder / f"{name}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return folder


@pytest.fixture(scope="module")
def concept(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("concept") / "astronaut.png"
    cv2.imwrite(str(path), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    return path


def _batch(ex: og.Explainer, path: Path) -> np.ndarray:
    return ex.prepare([path])[0]


def _one_error_line(proc: subprocess.CompletedProcess, words: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and words in lines[0], lines[0]


def _class_with_pixels(ex: og.Explainer, images: Path) -> tuple[int, int | None]:
    """A class every image has pixels of, and one some image has none of (None if none)."""
    labels = [ex.outputs(_batch(ex, p)).argmax(1)[0] for p in sorted(images.iterdir())]
    counts = np.array([np.bincount(lab.ravel(), minlength=5) for lab in labels])
    present = np.flatnonzero((counts > 0).all(axis=0))
    absent = np.flatnonzero((counts == 0).any(axis=0))
    return int(present[0]), (int(absent[0]) if absent.size else None)


def test_segment_explains_the_predicted_pixels_of_a_class(images, tmp_path):
    ex = og.Explainer(SEGMENTER, providers="cpu")
    category, _ = _class_with_pixels(ex, images)
    out = tmp_path / "out"
    proc = cli("run", SEGMENTER, images, "-o", out, "--segment", category, "--save-npy",
               "--quiet", "--provider", "cpu")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["targets"] == {"kind": "segmentation", "category": category,
                                 "mask": "predicted"}
    assert report["layers"] == ex.layer_names  # the backbone's layer4, by default
    for item in report["images"]:
        [entry] = item["explanations"]
        assert entry["target_kind"] == "segmentation" and entry["target"] == category
        assert item["top"] == []
        x = _batch(ex, Path(item["path"]))
        logits = ex.outputs(x)[0]
        mask = (logits.argmax(0) == category).astype(np.float32)
        assert entry["score"] == pytest.approx(float((logits[category] * mask).sum()),
                                               rel=1e-5)
        api = ex.explain(x, [og.targets.Segmentation(category, mask)]).cams[0]
        assert np.abs(np.load(entry["npy"]) - api).max() <= MAPS
        assert Path(entry["overlay"]).name.endswith(f"_gradcam_segment-{category}.png")
    rows = read_rows(out, ["target_kind", "label"])
    assert {r["target_kind"] for r in rows} == {"segmentation"}
    assert {r["label"] for r in rows} == {str(category)}


def test_segment_takes_a_mask_file(images, tmp_path):
    """A PNG mask at the output's size: its gray levels are the weights (255 = 1)."""
    ex = og.Explainer(SEGMENTER, providers="cpu")
    mask = np.zeros((48, 64), np.uint8)
    mask[10:30, 20:50] = 255
    mask[30:40, 5:15] = 128
    path = tmp_path / "mask.png"
    cv2.imwrite(str(path), mask)
    out = tmp_path / "out"
    proc = cli("run", SEGMENTER, images, "-o", out, "--segment", 2, "--mask", path,
               "--save-npy", "--quiet", "--method", "gradcam,scorecam", "--provider", "cpu")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["targets"]["mask"] == str(path)
    weights = mask.astype(np.float32) / 255
    for item in report["images"]:
        x = _batch(ex, Path(item["path"]))
        score = float((ex.outputs(x)[0, 2] * weights).sum())
        for entry in item["explanations"]:
            assert entry["score"] == pytest.approx(score, rel=1e-5)
            api = og.Explainer(SEGMENTER, providers="cpu", method=entry["method"]).explain(
                x, [og.targets.Segmentation(2, weights)]).cams[0]
            assert np.abs(np.load(entry["npy"]) - api).max() <= MAPS


def test_similar_to_explains_the_cosine_with_the_concept_image(images, concept, tmp_path):
    ex = og.Explainer(EMBEDDER, providers="cpu")
    vector = ex.outputs(_batch(ex, concept))[0]
    out = tmp_path / "out"
    proc = cli("run", EMBEDDER, images, "-o", out, "--similar-to", concept, "--save-npy",
               "--quiet", "--provider", "cpu")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["targets"] == {"kind": "similarity", "similar_to": str(concept)}
    for item in report["images"]:
        [entry] = item["explanations"]
        assert entry["target_kind"] == "similarity" and entry["label"] == str(concept)
        x = _batch(ex, Path(item["path"]))
        e = ex.outputs(x)[0]
        cos = float(e @ vector / (np.linalg.norm(e) * np.linalg.norm(vector)))
        assert entry["score"] == pytest.approx(cos, rel=1e-5)
        api = ex.explain(x, [og.targets.Similarity(vector)]).cams[0]
        assert np.abs(np.load(entry["npy"]) - api).max() <= MAPS
        assert Path(entry["overlay"]).name.endswith("_gradcam_similarity.png")


def test_an_image_without_pixels_of_the_class_is_an_error_row(images, tmp_path):
    ex = og.Explainer(SEGMENTER, providers="cpu")
    _, absent = _class_with_pixels(ex, images)
    if absent is None:
        pytest.skip("every class has pixels in every image")
    out = tmp_path / "out"
    proc = cli("run", SEGMENTER, images, "-o", out, "--segment", absent, "--quiet",
               "--provider", "cpu")
    assert proc.returncode == 1
    report = json.loads((out / "report.json").read_text())
    assert report["errors"] and all("assigns no pixel to class" in e["error"]
                                    for e in report["errors"])
    assert all(line.startswith("error: ") for line in proc.stderr.strip().splitlines())


@pytest.mark.parametrize("model, args, words", [
    (SEGMENTER, ["--segment", "5"], "--segment 5: out of range"),
    (SEGMENTER, ["--segment", "-1"], "--segment -1: out of range"),
    (SEGMENTER, ["--segment", "nosuchlabel"], "nosuchlabel"),
    (EMBEDDER, ["--segment", "1"], "--segment explains an (N, C, H, W) segmentation map"),
    (SEGMENTER, ["--mask", "MASK"], "--mask is an option of --segment"),
    (SEGMENTER, ["--segment", "1", "--mask", "MASK"], "--mask MASK is 10×12 (H×W)"),
    (SEGMENTER, ["--segment", "1", "--similar-to", "CONCEPT"], "pass one"),
    (SEGMENTER, ["--segment", "1", "--top-k", "2"], "drop --target and --top-k"),
    (SEGMENTER, [], "not class scores"),
    (SEGMENTER, ["--target-output", "nosuch"], "nosuch"),
], ids=["class-too-large", "class-negative", "unknown-label", "not-a-map", "mask-alone",
        "mask-wrong-size", "two-targets", "with-top-k", "no-target", "unknown-output"])
def test_bad_target_flags_fail_with_one_line(images, concept, tmp_path, model, args, words):
    mask = tmp_path / "small.npy"
    np.save(mask, np.ones((10, 12), np.float32))
    args = [str(mask) if a == "MASK" else str(concept) if a == "CONCEPT" else a for a in args]
    words = words.replace("MASK", str(mask))
    out = tmp_path / "out"
    proc = cli("run", model, images, "-o", out, "--quiet", "--provider", "cpu", *args)
    _one_error_line(proc, words)
    assert not (out / "report.json").exists()


def test_evaluate_scores_the_named_output_and_refuses_a_map(images, tmp_path):
    """evaluate's metrics are of class scores: --target-output names which output; a
    segmentation map is refused in one line before any work."""
    proc = cli("evaluate", SEGMENTER, images, "--quiet", "--provider", "cpu")
    _one_error_line(proc, "not class scores")
    result = tmp_path / "eval.json"
    proc = cli("evaluate", FIXTURES / "regression_legacy_opset17.onnx", images, "--quiet",
               "--provider", "cpu", "--target-output", "logits", "--steps", "4", "--json",
               result)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(result.read_text())["metrics"]["gradcam"]["images"] == 2


@pytest.fixture(scope="module")
def three(tmp_path_factory) -> Path:
    """Three images; DeepLabV3's fixture assigns some class pixels in some and none in
    another (the test finds which)."""
    folder = tmp_path_factory.mktemp("three")
    for name in ("chelsea", "coffee", "astronaut"):
        rgb = getattr(data, name)()
        cv2.imwrite(str(folder / f"{name}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return folder


def _present_and_absent(ex: og.Explainer, paths: list[Path]) -> int:
    """A class that some image has pixels of and another has none of."""
    counts = np.array([np.bincount(ex.outputs(_batch(ex, p)).argmax(1).ravel(), minlength=5)
                       for p in paths])
    both = np.flatnonzero((counts > 0).any(axis=0) & (counts == 0).any(axis=0))
    assert both.size, f"the fixture images no longer split a class: {counts}"
    return int(both[0])


def test_an_empty_predicted_mask_is_an_error_row_and_the_others_are_explained(three, tmp_path):
    """Per method, an image whose predicted mask has no pixel of the class is the same error
    row as ever; the batch's other images get the maps of their own predicted masks."""
    ex = og.Explainer(SEGMENTER, providers="cpu")
    paths = sorted(three.iterdir())
    category = _present_and_absent(ex, paths)
    out = tmp_path / "out"
    proc = cli("run", SEGMENTER, three, "-o", out, "--segment", category, "--save-npy",
               "--quiet", "--method", "gradcam,scorecam", "--provider", "cpu")
    assert proc.returncode == 1, proc.stderr
    report = json.loads((out / "report.json").read_text())
    masks = {str(p): ex.outputs(_batch(ex, p)).argmax(1)[0] == category for p in paths}
    empty = sorted(p for p, m in masks.items() if not m.any())
    assert [e["path"] for e in report["errors"]] == empty
    for e in report["errors"]:
        assert e["error"] == (f"{e['path']}: the model assigns no pixel to class {category}, "
                              "so --segment has nothing to explain; pass --mask FILE")
    explained = {item["path"]: item for item in report["images"]}
    assert sorted(explained) == sorted(set(masks) - set(empty))
    for path, item in explained.items():
        x, mask = _batch(ex, Path(path)), masks[path].astype(np.float32)
        assert len(item["explanations"]) == 2
        for entry in item["explanations"]:
            assert entry["target"] == category
            api = og.Explainer(SEGMENTER, providers="cpu", method=entry["method"]).explain(
                x, [og.targets.Segmentation(category, mask)]).cams[0]
            assert np.abs(np.load(entry["npy"]) - api).max() <= MAPS


def test_segment_runs_the_model_once_per_batch(three, tmp_path, monkeypatch):
    """``--segment`` without ``--mask`` reads the masks inside the explainer graph: the model's
    plain forward (Explainer.outputs) never runs, and each batch is one session run."""
    import onnxruntime as ort
    from typer.testing import CliRunner

    from onnx_gradcam.cli import app

    ex = og.Explainer(SEGMENTER, providers="cpu")
    category = _present_and_absent(ex, sorted(three.iterdir()))
    rows = []
    real = ort.InferenceSession.run

    def counted(session, names, feeds, *args, **kwargs):
        rows.append(len(feeds[ex.model.input_name]))
        return real(session, names, feeds, *args, **kwargs)

    monkeypatch.setattr(ort.InferenceSession, "run", counted)
    monkeypatch.setattr(og.Explainer, "outputs",
                        lambda *a: pytest.fail("the model ran a forward outside the graph"))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", str(SEGMENTER), str(three), "-o", str(out),
                                      "--segment", str(category), "--batch-size", "2",
                                      "--quiet", "--provider", "cpu"])
    assert result.exit_code == 1, result.output  # the image without the class: an error row
    report = json.loads((out / "report.json").read_text())
    assert len(report["errors"]) + len(report["images"]) == 3
    assert rows == [2, 1]  # two batches, one run each
