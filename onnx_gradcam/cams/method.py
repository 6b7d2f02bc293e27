"""What a CAM method is: its numpy form, its graph form and which graph shortcuts apply."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from onnx_gradcam.autodiff.emitter import Emitter, Value
from onnx_gradcam.cams.eigen import projection_2d
from onnx_gradcam.cams.gradient import channel_weighted

#: a method's coarse map (N, 1, h, w) from (op, A, G)
GraphCam = Callable[[Emitter, Value, Value], Value]
#: weights w (N, K, 1, 1) from a spatially constant G = g (N, K, 1, 1)
ConstantWeights = Callable[[Emitter, Value], Value]
#: a coarse map from (op, A, g, mean_ij A or None) for a spatially constant G = g
ConstantG = Callable[[Emitter, Value, Value, Value | None], Value]


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
