"""CAM methods: one small function per method, one shared post-processing path."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from onnx_gradcam.cams.eigen import eigencam, eigengradcam, projection_2d
from onnx_gradcam.cams.gradient import (
    channel_weighted,
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
    """A CAM method. ``weighted(acts, grads)`` gives the weighted activations (N, K, h, w);
    the coarse map is their channel sum, or their first principal component where ``eigen``
    (Eigen-CAM's own definition, or any method with ``eigen_smooth``). Score-CAM's weights come
    from extra forward passes, so the explainer computes them."""

    name: str
    weighted: Callable[[np.ndarray, np.ndarray], np.ndarray] | None
    needs_gradient: bool = True
    eigen: bool = False
    channel: bool = False  # ``weighted`` returns channel weights (N, K)

    def cam(self, acts: np.ndarray, grads: np.ndarray, eigen_smooth: bool = False) -> np.ndarray:
        """The coarse map (N, h, w) before ReLU and normalisation."""
        assert self.weighted is not None
        return reduce_map(self.weighted(acts, grads), acts, self.channel,
                          self.eigen or eigen_smooth)


def reduce_map(weighted: np.ndarray, acts: np.ndarray, channel: bool, eigen: bool) -> np.ndarray:
    """Σ_k w_k·A_k for channel weights (N, K), or the channel sum of weighted activations
    (N, K, h, w); with ``eigen``, the first principal component of w_k·A_k instead."""
    if channel:
        if eigen:
            return projection_2d(channel_weighted(weighted, acts))
        n, k, h, w = acts.shape
        return np.matmul(weighted[:, None, :], acts.reshape(n, k, h * w)).reshape(n, h, w)
    return projection_2d(weighted) if eigen else weighted.sum(axis=1)


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("gradcam", gradcam, channel=True),
    Method("hirescam", hirescam),
    Method("gradcam_elementwise", gradcam_elementwise),
    Method("gradcam++", gradcam_plusplus, channel=True),
    Method("xgradcam", xgradcam, channel=True),
    Method("layercam", layercam),
    Method("scorecam", None, needs_gradient=False),
    Method("eigencam", eigencam, needs_gradient=False, eigen=True),
    Method("eigengradcam", eigengradcam, eigen=True),
]}

__all__ = ["METHODS", "Method", "min_max", "postprocess", "reduce_map", "upsample"]
