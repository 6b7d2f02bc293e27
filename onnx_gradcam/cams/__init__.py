"""CAM methods: one small function per method, one shared post-processing path."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from onnx_gradcam.cams import graph
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
from onnx_gradcam.cams.graph import ConstantG, ConstantWeights, GraphCam
from onnx_gradcam.cams.postprocess import min_max, postprocess, upsample

#: why a method without a graph form cannot live in one ONNX graph
_SVD = "it needs an SVD, and no standard ONNX op computes one"


@dataclass(frozen=True)
class Method:
    """A CAM method: its numpy form, its graph form and which of the graph's shortcuts apply.

    ``weighted(acts, grads)`` gives the weighted activations (N, K, h, w), or with ``channel``
    the channel weights (N, K); the coarse map is their channel sum, or their first principal
    component where ``eigen`` (Eigen-CAM's own definition, or any method with
    ``eigen_smooth``). With ``masked_scores`` (Score-CAM) the channel weights come from extra
    forward passes, so the explainer computes them.

    ``graph`` is the same map as ONNX nodes (:mod:`onnx_gradcam.cams.graph`), or None where one
    ONNX graph cannot compute it (``not_in_graph`` says why). The shortcuts
    (:func:`onnx_gradcam.cams.graph.layer_coarse`) each give the map ``graph`` gives:

    - ``mean_weights``: the weights are G's mean over the positions (Grad-CAM), which the head
      can give without forming G;
    - ``broadcast_safe``: a spatially constant G may come as (N, K, 1, 1): G meets A only
      element-wise before any sum over the positions;
    - ``constant_weights(op, g)``: for a spatially constant G = g_k, the map is Σ_k w_k·A_k with
      w = f(g), one weighted sum on A;
    - ``constant_g(op, A, g, mean_ij A or None)``: the same for methods whose constant-G form
      also needs A's mean over the positions;
    - ``when_nonnegative``: the method that gives the same map where A ≥ 0 by construction (a
      ReLU's output), with shortcuts of its own.
    """

    name: str
    weighted: Callable[[np.ndarray, np.ndarray], np.ndarray] | None
    needs_gradient: bool = True
    eigen: bool = False
    channel: bool = False
    masked_scores: bool = False
    graph: GraphCam | None = None
    not_in_graph: str = ""
    mean_weights: bool = False
    broadcast_safe: bool = False
    constant_weights: ConstantWeights | None = None
    constant_g: ConstantG | None = None
    when_nonnegative: Method | None = None

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


_LAYERCAM = Method("layercam", layercam, graph=graph.layercam, broadcast_safe=True,
                   constant_weights=graph.weights_are_relu_g)

METHODS: dict[str, Method] = {m.name: m for m in [
    Method("gradcam", gradcam, channel=True, graph=graph.gradcam, mean_weights=True,
           constant_weights=graph.weights_are_g),
    Method("hirescam", hirescam, graph=graph.hirescam, broadcast_safe=True,
           constant_weights=graph.weights_are_g),
    Method("gradcam_elementwise", gradcam_elementwise, graph=graph.gradcam_elementwise,
           broadcast_safe=True, when_nonnegative=_LAYERCAM),
    Method("gradcam++", gradcam_plusplus, channel=True, graph=graph.gradcam_plusplus,
           constant_g=graph.gradcam_plusplus_constant_g),
    Method("xgradcam", xgradcam, channel=True, graph=graph.xgradcam, broadcast_safe=True,
           constant_g=graph.xgradcam_constant_g),
    _LAYERCAM,
    Method("scorecam", None, needs_gradient=False, masked_scores=True,
           not_in_graph="it runs one extra forward pass per channel of the target layer"),
    Method("eigencam", eigencam, needs_gradient=False, eigen=True, not_in_graph=_SVD),
    Method("eigengradcam", eigengradcam, eigen=True, not_in_graph=_SVD),
]}

#: The methods an exported model can compute: one gradient pass, then element-wise math.
GRAPH_METHODS: dict[str, Method] = {n: m for n, m in METHODS.items() if m.graph is not None}

__all__ = ["GRAPH_METHODS", "METHODS", "Method", "min_max", "postprocess", "reduce_map", "upsample"]
