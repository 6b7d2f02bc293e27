"""CAM methods: one small function per method, one shared post-processing path."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from onnx_gradcam.cams.eigen import eigencam, eigengradcam
from onnx_gradcam.cams.gradient import (
    gradcam,
    gradcam_elementwise,
    gradcam_plusplus,
    hirescam,
    layercam,
    xgradcam,
)
from onnx_gradcam.cams.postprocess import min_max, postprocess, upsample


@dataclass(frozen=True)
class Method:
    """A CAM method: ``cam(acts, grads) -> (N, h, w)``; Score-CAM is computed by the explainer."""

    name: str
    cam: Callable[[np.ndarray, np.ndarray], np.ndarray] | None
    needs_gradient: bool = True


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("gradcam", gradcam),
    Method("hirescam", hirescam),
    Method("gradcam_elementwise", gradcam_elementwise),
    Method("gradcam++", gradcam_plusplus),
    Method("xgradcam", xgradcam),
    Method("layercam", layercam),
    Method("scorecam", None, needs_gradient=False),
    Method("eigencam", eigencam, needs_gradient=False),
    Method("eigengradcam", eigengradcam),
]}

__all__ = ["METHODS", "Method", "min_max", "postprocess", "upsample"]
