"""examples/node: the Node.js example (onnxruntime-node) gives Python's cams.

Needs Node.js and ``npm ci`` in examples/node; set ONNX_GRADCAM_SKIP_NODE=1 to skip.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.examples_support import EXAMPLES, exported, require_node, run_node, scene, write_png

FOLDER = EXAMPLES / "node"
SCRIPT = FOLDER / "explain.mjs"


@pytest.fixture(scope="module")
def node() -> str:
    return require_node(FOLDER, "ONNX_GRADCAM_SKIP_NODE")


def model_size(ex) -> tuple[int, int]:
    size = ex.preprocessing().size
    assert size is not None
    return size


def test_node_cam_equals_python_on_the_same_tensor(node: str, tmp_path: Path) -> None:
    ex, model = exported(tmp_path, method="gradcam++")
    h, w = model_size(ex)
    images = [scene(h, w, seed) for seed in range(3)]
    x, _ = ex.prepare(images)
    np.save(tmp_path / "input.npy", x)
    proc = run_node(node, FOLDER, SCRIPT, model, "--tensor", tmp_path / "input.npy",
                    "--cam-npy", tmp_path / "cam.npy", "--json")
    assert proc.returncode == 0, proc.stderr
    cam = np.load(tmp_path / "cam.npy")
    want = ex.explain(x)
    assert cam.shape == want.cams.shape
    assert np.abs(cam - want.cams).max() <= 1e-4
    summary = json.loads(proc.stdout)
    assert summary["target"] == int(want.targets[0]) and summary["method"] == "gradcam++"


def test_node_explains_an_image_file_and_writes_the_overlay(node: str, tmp_path: Path) -> None:
    """The image path: pure-JS PNG decoding and bilinear resize (±1 grey level against
    OpenCV's fixed-point INTER_LINEAR), so the cam is compared loosely."""
    ex, model = exported(tmp_path)
    h, w = model_size(ex)
    image = write_png(tmp_path / "scene.png", scene(int(h * 1.7), int(w * 1.3)))
    out = tmp_path / "overlay.png"
    proc = run_node(node, FOLDER, SCRIPT, model, image, "-o", out, "--cam-npy",
                    tmp_path / "cam.npy")
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stdout
    want = ex.explain_images([image]).cams
    assert np.abs(np.load(tmp_path / "cam.npy") - want).max() <= 0.01  # measured ≤ 0.005
    picture = cv2.imread(str(out))
    assert picture.shape == (int(h * 1.7), int(w * 1.3), 3)


def test_node_chooses_the_target_when_it_is_a_required_input(node: str, tmp_path: Path) -> None:
    ex, model = exported(tmp_path, target_required=True)
    h, w = model_size(ex)
    x, _ = ex.prepare([scene(h, w)])
    np.save(tmp_path / "input.npy", x)
    proc = run_node(node, FOLDER, SCRIPT, model, "--tensor", tmp_path / "input.npy",
                    "--target", "1", "--cam-npy", tmp_path / "cam.npy", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["target"] == 1
    assert np.abs(np.load(tmp_path / "cam.npy") - ex.explain(x, 1).cams).max() <= 1e-4


def test_node_refuses_a_target_it_cannot_feed(node: str, tmp_path: Path) -> None:
    ex, model = exported(tmp_path)
    h, w = model_size(ex)
    x, _ = ex.prepare([scene(h, w)])
    np.save(tmp_path / "input.npy", x)
    proc = run_node(node, FOLDER, SCRIPT, model, "--tensor", tmp_path / "input.npy",
                    "--target", "1")
    assert proc.returncode == 1
    assert "--target-required" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
