"""The real ``onnx-gradcam`` command on real image files decoded by OpenCV."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from skimage import data

import onnx_gradcam as og
from onnx_gradcam.metadata import metadata_props, write_metadata
from tests.models import small_cnn

LABELS = ["ant", "bee", "cat", "dog", "eel"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnx_gradcam", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    model = small_cnn(size=32, softmax=True)
    write_metadata(model, metadata_props(labels=LABELS))
    path = tmp_path_factory.mktemp("model") / "small.onnx"
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rgb = data.chelsea()
    cv2.imwrite(str(folder / "cat.jpg"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / "gray.png"), data.camera())
    rgba = np.dstack([cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR),
                      np.full(data.astronaut().shape[:2], 128, np.uint8)])
    cv2.imwrite(str(folder / "rgba.png"), rgba)
    cv2.imwrite(str(folder / "deep16.png"), cv2.cvtColor(data.coffee(), cv2.COLOR_RGB2BGR)
                .astype(np.uint16) * 257)
    good = (folder / "cat.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 50])
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.png").write_text("not an image")
    return folder


def test_run_writes_overlays_npy_and_report_and_lists_bad_images(model_path, images, tmp_path):
    out = tmp_path / "out"
    proc = cli("run", model_path, images, "-o", out, "--top-k", "2", "--save-npy", "--quiet")
    assert proc.returncode == 1  # some inputs were bad: the run finishes, then says so
    report = json.loads((out / "report.json").read_text())
    done = {Path(i["path"]).name for i in report["images"]}
    assert done == {"cat.jpg", "gray.png", "rgba.png", "deep16.png"}
    failed = {Path(e["path"]).name: e["error"] for e in report["errors"]}
    assert set(failed) == {"truncated.jpg", "empty.png", "notes.png"}
    assert "empty file" in failed["empty.png"]
    for line in proc.stderr.strip().splitlines():
        assert line.startswith("error: ")
    for item in report["images"]:
        assert len(item["explanations"]) == 2 and item["top"][0]["label"] in LABELS
        for ex in item["explanations"]:
            picture = cv2.imread(ex["overlay"])
            assert picture.shape[:2] == (item["height"], item["width"])  # original size
            cam = np.load(ex["npy"])
            assert cam.shape == (32, 32) and cam.min() >= 0 and cam.max() <= 1
            assert not np.isnan(cam).any()
    assert report["provider"] == "CPUExecutionProvider" and report["layers"] == ["act"]
    assert report["score"] == {"tensor": "logits", "kind": "logits"}


def test_run_cams_equal_the_api(model_path, images, tmp_path):
    out = tmp_path / "out"
    cli("run", model_path, images / "cat.jpg", "-o", out, "--save-npy", "-q", "--target", "dog")
    report = json.loads((out / "report.json").read_text())
    entry = report["images"][0]["explanations"][0]
    assert entry["target"] == 3 and entry["label"] == "dog"
    api = og.Explainer(model_path).explain_images([images / "cat.jpg"], targets=3)
    np.testing.assert_allclose(np.load(entry["npy"]), api.cams[0], atol=1e-6)


@pytest.mark.parametrize("args, message", [
    (["--target", "7"], "target 7 is out of range"),
    (["--target", "zebra"], "unknown label 'zebra'"),
    (["--layer", "acct"], "unknown layer 'acct'"),
    (["--method", "nope"], "unknown method 'nope'"),
])
def test_bad_options_give_one_error_line(model_path, images, tmp_path, args, message):
    proc = cli("run", model_path, images / "cat.jpg", "-o", tmp_path / "o", *args)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_bad_model_files(tmp_path, images):
    missing = cli("run", tmp_path / "none.onnx", images / "cat.jpg", "-o", tmp_path / "o")
    assert missing.returncode != 0 and "no such model file" in missing.stderr
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01garbage")
    proc = cli("inspect", junk)
    assert proc.returncode != 0 and "not an ONNX model" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_output_folder_that_is_an_input_file_is_refused(model_path, images):
    target = images / "cat.jpg"
    before = target.read_bytes()
    proc = cli("run", model_path, target, "-o", target)
    assert proc.returncode != 0 and "existing file" in proc.stderr
    assert target.read_bytes() == before


def test_inspect_shows_layer_score_and_head(model_path):
    proc = cli("inspect", model_path, "--json")
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(proc.stdout)
    assert facts["layer"]["name"] == "act"
    assert facts["score"] == {"tensor": "logits", "kind": "logits"}
    assert facts["head_ops"] == ["GlobalAveragePool", "Flatten", "Gemm"]
    assert [c["name"] for c in facts["candidates"]][-2:] == ["c2", "act"]
    table = cli("inspect", model_path)
    assert table.returncode == 0 and "act" in table.stdout


def test_method_list_with_grid_and_contact_sheet(model_path, images, tmp_path):
    out = tmp_path / "grid"
    proc = cli("run", model_path, images / "cat.jpg", images / "gray.png", "-o", out, "-q",
               "--method", "gradcam,scorecam,eigencam", "--grid", "--save-npy")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["methods"] == ["gradcam", "scorecam", "eigencam"]
    for item in report["images"]:
        assert [e["method"] for e in item["explanations"]] == report["methods"]
        stem = Path(item["path"]).stem
        grid = cv2.imread(str(out / f"{stem}_grid.png"))
        assert grid.shape[1] > 3 * grid.shape[0]  # original + three panels side by side
    sheet = cv2.imread(report["contact_sheet"])
    assert sheet.shape[0] >= 2 * grid.shape[0]
    # each method's cams equal the API's
    for method in report["methods"]:
        api = og.Explainer(model_path, method=method).explain_images([images / "cat.jpg"])
        entry = next(e for e in report["images"][0]["explanations"] if e["method"] == method)
        np.testing.assert_allclose(np.load(entry["npy"]), api.cams[0], atol=1e-5)


def test_outputs_get_the_usual_file_mode(model_path, images, tmp_path):
    out = tmp_path / "mode"
    cli("run", model_path, images / "cat.jpg", "-o", out, "-q")
    for path in out.iterdir():
        assert path.stat().st_mode & 0o644 == 0o644, path


def test_usage_errors_exit_2_without_a_traceback(model_path):
    proc = cli("run", model_path, "--no-such-option")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "no-such-option" in proc.stderr
