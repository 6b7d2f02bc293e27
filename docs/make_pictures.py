"""The README's pictures of the Transformers and Targets sections, made with the test fixtures'
models on scikit-image's photos (nothing downloaded):

    PYTHONPATH=$PWD .venv/bin/python docs/make_pictures.py   # docs/transformers.png, targets.png

The models have seeded random weights (tests/fixtures/tokens, tests/fixtures/targets): the
pictures show what the token fold and each target compute on a real photo, not what a trained
network looks at.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import skimage.data

import onnx_gradcam as og
from onnx_gradcam.grid import grid_row
from onnx_gradcam.images import overlay, save_image

ROOT = Path(__file__).resolve().parents[1]
TOKENS = ROOT / "tests" / "fixtures" / "tokens"
TARGETS = ROOT / "tests" / "fixtures" / "targets"
MEAN = np.array([0.485, 0.456, 0.406], np.float32)  # the fixtures' preprocessing (ImageNet)
STD = np.array([0.229, 0.224, 0.225], np.float32)
TILE = 200


def batch(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``rgb`` resized to (H, W) = ``size`` and normalised as the fixtures were, NCHW."""
    small = cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    x = (small.astype(np.float32) / 255 - MEAN) / STD
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def transformers() -> np.ndarray:
    """One exported ViT and one Swin, both with a symbolic input size, explained at the photo's
    own aspect ratio (224 × 336: a 28 × 42 ViT grid the graph gives at run time)."""
    cat = skimage.data.chelsea()
    x = batch(cat, (224, 336))
    panels = []
    for file, caption in (("sym_vit.onnx", "timm ViT, default layer"),
                          ("sym_swin.onnx", "torchvision Swin, default layer")):
        res = og.Explainer(TOKENS / file, providers="cpu").explain(x)
        panels.append((caption, overlay(cat, res.cams[0])))
    return grid_row(cat, "chelsea (random weights)", panels, TILE)


def targets() -> np.ndarray:
    """Segmentation (the pixels the model gives the category), Similarity (to the flipped
    photo's embedding) and Output (a YOLO-style box score) on three photos."""
    coffee, astronaut, cat = skimage.data.coffee(), skimage.data.astronaut(), skimage.data.chelsea()
    T = og.targets
    panels = []

    x = batch(coffee, (64, 96))
    seg = og.Explainer(TARGETS / "segmentation_legacy_opset17.onnx", providers="cpu")
    out = _run(TARGETS / "segmentation_legacy_opset17.onnx", x)[0]
    labels = out.argmax(0)
    category = int(np.bincount(labels.ravel(), minlength=out.shape[0]).argmax())
    res = seg.explain(x, [T.Segmentation(category, labels == category)])
    panels.append((f"Segmentation({category}, mask)", overlay(coffee, res.cams[0])))

    file = TARGETS / "embedding_legacy_opset17.onnx"
    x = batch(astronaut, (64, 64))
    concept = _run(file, batch(astronaut[:, ::-1].copy(), (64, 64)))[0]
    res = og.Explainer(file, providers="cpu").explain(x, [T.Similarity(concept)])
    panels.append(("Similarity(flipped photo)", overlay(astronaut, res.cams[0])))

    file = TARGETS / "detector_legacy_opset17.onnx"
    x = batch(cat, (64, 64))
    out = _run(file, x)[0]  # (4 + classes, anchors)
    row, anchor = np.unravel_index(out[4:].argmax(), out[4:].shape)
    res = og.Explainer(file, providers="cpu").explain(x, [T.Output((4 + int(row), int(anchor)))])
    panels.append((f"Output((4 + {row}, {anchor})) box", overlay(cat, res.cams[0])))
    return grid_row(coffee, "coffee (random weights)", panels, TILE)


def _run(file: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def main() -> None:
    for name, make in (("transformers.png", transformers), ("targets.png", targets)):
        save_image(ROOT / "docs" / name, make())
        print(ROOT / "docs" / name)


if __name__ == "__main__":
    main()
