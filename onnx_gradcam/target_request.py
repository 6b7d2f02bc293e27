"""What ``run --segment CLASS [--mask FILE]`` and ``run --similar-to IMAGE`` explain per image:
target objects of :mod:`onnx_gradcam.targets` built from the model's own outputs.

- ``--segment CLASS``: :class:`~onnx_gradcam.targets.Segmentation` over an (N, C, H, W) output.
  Without ``--mask``, each image's mask is the pixels the model assigns to CLASS (the argmax
  over the class axis of its output equals CLASS), as pytorch-grad-cam's segmentation tutorial
  builds it, read inside the explainer graph from its own forward pass (a Segmentation with no
  mask); an image with no such pixel has nothing to explain and is an error row. A
  ``--mask`` file (the same for every image) is a PNG (gray levels, 255 = 1) or an ``.npy``
  (H, W) array of weights or bools, either at the output's (H, W), used as it is, or at the
  model input's (H, W), averaged onto the output's pixels (OpenCV's area resize).
- ``--similar-to IMAGE``: :class:`~onnx_gradcam.targets.Similarity` with that image's output
  (its embedding, through the same model and preprocessing) as the concept vector: why the
  model finds each image like IMAGE.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from onnx_gradcam import targets as targets_
from onnx_gradcam.errors import OnnxGradCamError
from onnx_gradcam.graph import readable
from onnx_gradcam.model import score_like

if TYPE_CHECKING:
    from onnx_gradcam.explainer import Explainer
    from onnx_gradcam.labels import Labels
    from onnx_gradcam.metadata import Preprocessing


@dataclass(frozen=True, eq=False)
class TargetRequest:
    """One target kind for every image of a run; :meth:`targets` makes each image's object."""

    kind: str  # a value of og.targets.KINDS: "segmentation" or "similarity"
    category: int = -1  # segmentation: the class
    mask: np.ndarray | None = field(default=None, repr=False)  # at the output's (H, W)
    source: str | None = None  # the --mask file or the --similar-to image
    vector: np.ndarray | None = field(default=None, repr=False)  # similarity: the concept

    def header(self) -> dict:
        """What report.json's ``targets`` records (a resumed run must ask the same)."""
        if self.kind == "segmentation":
            return {"kind": self.kind, "category": self.category,
                    "mask": self.source or "predicted"}
        return {"kind": self.kind, "similar_to": self.source}

    def label(self, labels: Labels) -> str:
        """The rows' ``label``: the class's name, or the concept image."""
        return labels.name(self.category) if self.kind == "segmentation" else str(self.source)

    @property
    def predicted(self) -> bool:
        """Whether each image's mask is the model's prediction (``--segment`` alone)."""
        return self.kind == "segmentation" and self.mask is None

    def targets(self, n: int) -> list[Any]:
        """The target of each of ``n`` images (the same object for all)."""
        if self.kind == "similarity":
            return [targets_.Similarity(self.vector)] * n
        return [targets_.Segmentation(self.category, self.mask)] * n


def segment_request(explainer: Explainer, category: str, labels: Labels, mask: Path | None,
                    pre: Preprocessing) -> TargetRequest:
    """``--segment CATEGORY [--mask FILE]``, checked against the scored output's shape."""
    score = explainer.score
    shape = explainer.model.info.shapes.get(score)
    if shape is None or len(shape) != 4 or score_like(shape):
        raise OnnxGradCamError(f"--segment explains an (N, C, H, W) segmentation map; output "
                               f"{score!r} is {readable(shape)}: pick one with --target-output "
                               "NAME")
    index = labels.index(category)
    classes = shape[1]
    if index < 0 or (classes is not None and index >= classes):
        raise OnnxGradCamError(f"--segment {category}: out of range; output {score!r} "
                               f"{readable(shape)} has {classes} classes (0..{classes - 1})")
    if mask is None:
        return TargetRequest("segmentation", index)
    return TargetRequest("segmentation", index, _mask(mask, tuple(shape[2:]), pre.size, score),
                         str(mask))


def _mask(path: Path, out_hw: tuple, in_hw: tuple[int, int] | None, score: str) -> np.ndarray:
    """The --mask file's weights at the output's (H, W) (see the module docstring)."""
    if path.suffix.lower() == ".npy":
        try:
            weights = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise OnnxGradCamError(f"--mask {path}: cannot read it as .npy ({exc})") from None
        if weights.dtype.kind not in "biuf":
            raise OnnxGradCamError(f"--mask {path}: holds {weights.dtype}, not numbers or bools")
        weights = weights.astype(np.float32)
    else:
        pixels = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH)
        if pixels is None:
            raise OnnxGradCamError(f"--mask {path}: cannot read it as an image (PNG) or .npy")
        weights = pixels.astype(np.float32) / float(np.iinfo(pixels.dtype).max
                                                    if pixels.dtype.kind in "iu" else 1.0)
    if weights.ndim != 2 or not np.isfinite(weights).all():
        raise OnnxGradCamError(f"--mask {path}: must be a finite 2-D (H, W) array, got "
                               f"{weights.shape}")
    if None not in out_hw and weights.shape == out_hw:
        return weights
    if in_hw is not None and weights.shape == tuple(in_hw):
        if None in out_hw or tuple(in_hw) == out_hw:
            return weights
        return cv2.resize(weights, (out_hw[1], out_hw[0]), interpolation=cv2.INTER_AREA)
    sizes = " or ".join(dict.fromkeys(f"{h}×{w}" for h, w in (in_hw, out_hw)
                                      if h is not None and w is not None))
    raise OnnxGradCamError(f"--mask {path} is {weights.shape[0]}×{weights.shape[1]} (H×W); "
                           f"the model input and output {score!r} take {sizes}")


def similar_request(explainer: Explainer, image: Path, pre: Preprocessing,
                    max_pixels: int) -> TargetRequest:
    """``--similar-to IMAGE``: the concept vector is IMAGE's output."""
    x, _ = explainer.prepare([image], pre, max_pixels)
    vector = explainer.outputs(x)[0].reshape(-1).astype(np.float32)
    if not np.isfinite(vector).all() or not vector.any():
        raise OnnxGradCamError(f"--similar-to {image}: its output {explainer.score!r} is zero or "
                               "not finite, so no direction to compare with")
    return TargetRequest("similarity", source=str(image), vector=vector)
