"""`evaluate --reference`: how far a deployed copy's maps (int8, fp16) are from its float32
original's, per image and per method, and the map-agreement formulas themselves."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

import onnx_gradcam as og
from onnx_gradcam import metrics
from onnx_gradcam.evaluate import evaluate
from onnx_gradcam.images import decode_image, preprocess
from onnx_gradcam.metadata import PRESETS, Preprocessing
from tests.test_hostile import cli, one_error
from tests.test_quantized import FILES, WILD, _quantize

skimage_data = pytest.importorskip("skimage.data")
PHOTOS = ("astronaut", "chelsea", "coffee")
IMAGENET = Preprocessing(**PRESETS["imagenet"])


def _peak(shape, centre, width=6.0):
    rows, cols = np.indices(shape)
    return np.exp(-((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2) / (2 * width ** 2))


def test_map_agreement_formulas() -> None:
    ref = _peak((64, 64), (20, 30))
    same = metrics.map_agreement(ref, ref)
    assert same == {"mean_abs_delta": 0.0, "correlation": 1.0, "pointing_agreement": True}
    # 15/224 of 64 px is 4.3 px: a peak 3 px away agrees, 6 px away does not
    near, far = _peak((64, 64), (23, 30)), _peak((64, 64), (20, 36))
    assert metrics.map_agreement(near, ref)["pointing_agreement"]
    assert not metrics.map_agreement(far, ref)["pointing_agreement"]
    got = metrics.map_agreement(far, ref)
    a, b = far.ravel() - far.mean(), ref.ravel() - ref.mean()
    assert got["correlation"] == pytest.approx(a @ b / np.sqrt((a @ a) * (b @ b)), rel=1e-12)
    assert got["mean_abs_delta"] == pytest.approx(np.mean(np.abs(far - ref)), rel=1e-12)
    zeros = np.zeros((8, 8))
    assert metrics.map_agreement(zeros, zeros)["correlation"] == 1.0
    assert metrics.map_agreement(zeros, ref[:8, :8])["correlation"] == 0.0


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for name in PHOTOS:
        rgb = getattr(skimage_data, name)()
        cv2.imwrite(str(folder / f"{name}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return folder


def _explainers(model, methods=("gradcam", "gradcam++")):
    return [og.Explainer(model, method=m, providers="cpu") for m in methods]


def test_identical_models_agree_exactly(photos) -> None:
    source = WILD / FILES["resnet"]
    result = evaluate(_explainers(source), [photos], preprocessing=IMAGENET, steps=2,
                      reference=_explainers(source))
    rows = result["reference"]["images"]
    assert len(rows) == 2 * len(PHOTOS)
    assert all(r["mean_abs_delta"] == 0.0 and r["correlation"] == 1.0
               and r["pointing_agreement"] for r in rows)
    for method in ("gradcam", "gradcam++"):
        row = result["metrics"][method]
        assert (row["reference_mean_abs_delta"], row["reference_correlation"],
                row["reference_pointing_agreement"]) == (0.0, 1.0, 100.0)


def test_int8_copy_against_its_float32_original(photos, tmp_path) -> None:
    """Each image's numbers are the map agreement of the two models' maps of the int8 model's
    target (recomputed here from the two explainers), and the summary their mean."""
    source, copy = WILD / FILES["resnet"], tmp_path / "resnet.int8.onnx"
    _quantize(source, copy, "QDQ", per_channel=True)
    int8, original = _explainers(copy, ["gradcam"]), _explainers(source, ["gradcam"])
    result = evaluate(int8, [photos], preprocessing=IMAGENET, steps=2, reference=original)
    rows = result["reference"]["images"]
    pre = int8[0].preprocessing(IMAGENET)
    for row in rows:
        x = preprocess(decode_image(row["path"])[0], pre, pre.size)[None]
        mine = int8[0].explain(x)
        theirs = original[0].explain(x, mine.targets)
        assert row["target"] == int(mine.targets[0])
        a, b = mine.cams[0].ravel().astype(np.float64), theirs.cams[0].ravel()
        assert row["mean_abs_delta"] == pytest.approx(np.abs(a - b).mean(), rel=1e-6)
        if a.std() and b.std():
            assert row["correlation"] == pytest.approx(np.corrcoef(a, b)[0, 1], rel=1e-6)
        else:  # an all-zero map (a random-weight ResNet's class may have no positive evidence)
            assert row["correlation"] == float(np.array_equal(a, b))
    print("int8 vs float32:", [(round(r["mean_abs_delta"], 4), round(r["correlation"], 3),
                                r["pointing_agreement"]) for r in rows])
    assert any(r["mean_abs_delta"] > 0 for r in rows)  # the copy is another model
    summary = result["metrics"]["gradcam"]
    assert summary["reference_correlation"] == pytest.approx(
        np.mean([r["correlation"] for r in rows]))
    assert summary["reference_pointing_agreement"] == pytest.approx(
        100 * np.mean([r["pointing_agreement"] for r in rows]))


def test_cli_reports_the_reference_columns_and_json(photos, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # the summary table on one line per row
    source, copy = WILD / FILES["mobilenet_v3"], tmp_path / "mobilenet_v3.int8.onnx"
    _quantize(source, copy, "dynamic", per_channel=False)
    out = tmp_path / "evaluate.json"
    result = cli("evaluate", copy, photos, "--reference", source, "--steps", "2", "--json", out,
                 "-q")
    assert result.returncode == 0, result.stderr
    assert "|Δcam|" in result.stdout and "pointing agree" in result.stdout
    report = json.loads(out.read_text())
    assert report["reference"]["model"] == str(source)
    assert len(report["reference"]["images"]) == len(PHOTOS)
    assert 0 < report["metrics"]["gradcam"]["reference_mean_abs_delta"] < 0.2


def test_a_reference_with_another_input_is_refused(photos) -> None:
    other = WILD / FILES["mobilenet_v3"]  # 64 × 64, the ResNet 64 × 96
    one_error(cli("evaluate", WILD / FILES["resnet"], photos, "--reference", other,
                  "--steps", "2", "-q"), "--reference", "input differs", "input shapes")
