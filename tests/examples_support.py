"""Shared by the Node and browser example tests: tool checks, the model and images they use."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

import onnx_gradcam as og

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
DEMO = ROOT / "models" / "demo.onnx"
KERAS = ROOT / "tests" / "fixtures" / "export" / "keras_small.onnx"


def require(ok: bool, what: str, fix: str, skip_env: str) -> None:
    """Fail with what to install, unless ``skip_env``=1 says to skip these tests."""
    if ok:
        return
    if os.environ.get(skip_env) == "1":
        pytest.skip(f"{what} is missing and {skip_env}=1")
    pytest.fail(f"{what} is missing: {fix} (or set {skip_env}=1 to skip these tests)",
                pytrace=False)


def require_node(folder: Path, skip_env: str) -> str:
    node = shutil.which("node")
    require(node is not None, "Node.js (node)", "install Node.js >= 18, e.g. apt-get install "
            "nodejs npm", skip_env)
    require((folder / "node_modules").is_dir(), f"{folder.relative_to(ROOT)}/node_modules",
            f"run `npm ci` in {folder.relative_to(ROOT)}", skip_env)
    assert node is not None
    return node


def run_node(node: str, folder: Path, *args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([node, *map(str, args)], cwd=folder, capture_output=True, text=True,
                          timeout=300)


def source_model() -> Path:
    """The demo model once it is built, else the converted Keras fixture."""
    return DEMO if DEMO.exists() else KERAS


def exported(tmp_path: Path, method: str = "gradcam",
             target_required: bool = False) -> tuple[og.Explainer, Path]:
    ex = og.Explainer(source_model(), method=method, providers="cpu")
    path = tmp_path / ("explain_required.onnx" if target_required else "explain.onnx")
    ex.export(path, target_required=target_required)
    return ex, path


def scene(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A deterministic RGB picture: a soft gradient, a disc and a bar."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.stack([xx * 200 / width, yy * 200 / height, np.full_like(xx, 90.0)], axis=-1)
    cy, cx = height * rng.uniform(0.3, 0.7), width * rng.uniform(0.3, 0.7)
    r = min(height, width) / 5
    img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = (250, 240, 30)
    img[int(height * 0.75):int(height * 0.85), int(width * 0.1):int(width * 0.5)] = (20, 20, 220)
    return img.astype(np.uint8)


def write_png(path: Path, rgb: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path
