"""CAM methods: one :class:`Method` record per method in :data:`METHODS`, one shared
post-processing path. A new method is a numpy form (:mod:`~onnx_gradcam.cams.gradient`), a graph
form where one ONNX graph can compute it (:mod:`~onnx_gradcam.cams.graph`) and one record here."""

from __future__ import annotations

from onnx_gradcam.cams import graph
from onnx_gradcam.cams.eigen import eigencam, eigengradcam
from onnx_gradcam.cams.gradient import (
    gradcam,
    gradcam_elementwise,
    gradcam_plusplus,
    hirescam,
    layercam,
    xgradcam,
)
from onnx_gradcam.cams.method import Method, reduce_map
from onnx_gradcam.cams.postprocess import min_max, postprocess, upsample

#: why a method without a graph form cannot live in one ONNX graph
_SVD = "it needs an SVD, and no standard ONNX op computes one"


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
