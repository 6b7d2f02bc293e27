"""The bundled demo model: accuracy and the pointing game on freshly generated scenes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import onnx_gradcam as og
from models.scenes import CLASSES, make_dataset

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "models" / "demo.onnx"
FRESH_SEED = 777_000  # neither the training, held-out nor samples seed


@pytest.fixture(scope="module")
def fresh():
    return make_dataset(300, seed=FRESH_SEED)


def test_demo_model_metadata() -> None:
    ex = og.Explainer(DEMO)
    assert ex.model.metadata.labels == CLASSES
    assert ex.preprocessing().size == (96, 96)
    assert ex.layers[0].shape[2:] == tuple(ex.layers[0].shape[2:])


def test_accuracy_and_pointing_game_on_fresh_scenes(fresh) -> None:
    images, labels, masks = fresh
    ex = og.Explainer(DEMO, providers="cpu")
    res = ex.explain_images(list(images))
    accuracy = float(np.mean(res.targets == labels))
    hits = []
    for cam, mask in zip(res.cams, masks):
        row, col = np.unravel_index(int(np.argmax(cam)), cam.shape)
        hits.append(bool(mask[row, col]))
    pointing = float(np.mean(hits))
    print(f"demo accuracy {accuracy:.3f}, pointing game {pointing:.3f} on {len(labels)} scenes")
    assert accuracy >= 0.95
    assert pointing >= 0.90


def test_evaluate_cli_reports_the_pointing_game_on_the_samples(tmp_path) -> None:
    samples = ROOT / "models" / "samples"
    out = tmp_path / "eval.json"
    proc = subprocess.run(
        [sys.executable, "-m", "onnx_gradcam", "evaluate", str(DEMO), str(samples),
         "--masks", str(samples / "masks"), "--method", "gradcam,layercam", "--steps", "8",
         "-q", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    for row in result["metrics"].values():
        assert row["pointing_images"] == row["images"] > 0
        assert row["pointing_game"] >= 50.0
        assert 0 <= row["deletion_auc"] <= 1 and 0 <= row["insertion_auc"] <= 1
