"""Grad-CAM at the early layers of tf2onnx-converted Keras applications takes its channel
means from the layer's consumers (:func:`onnx_gradcam.autodiff.summed.consumer_gradient_mean`):
the maps graph no longer forms the layer's full gradient, and the maps are those of its mean.

Bounds: a map value is a sum of n ≤ 9·K·h·w products (each channel weight sums dy·W over the
positions and taps), so two summation orders differ by at most n·u (worst case) of the sum of
the magnitudes, and by ~√n·u as independent roundings; both are taken relative to the map's
largest value. A wrong border row or tap moves the map by ~1/h of it, far beyond either."""

from __future__ import annotations

import numpy as np
import pytest

import onnx_gradcam as og
from onnx_gradcam.explainer_graph import COARSE, GRADIENT
from onnx_gradcam.reference import evaluator, to_double
from tests.zoo import zoo

#: the architectures whose early layer the issue's speed floor is about
ARCHS = ["MobileNetV2", "EfficientNetB0", "MobileNetV3Large", "Xception"]


@pytest.fixture(scope="module", params=ARCHS)
def case(request, tf_available) -> zoo.Case:
    return zoo.load_case(zoo.ARCHS[request.param])


def _gradcam(acts: np.ndarray, grads: np.ndarray, layout: str) -> np.ndarray:
    """Σ_k mean(G_k)·A_k (N, h, w) of NCHW or NHWC tensors."""
    if layout == "NHWC":
        acts, grads = acts.transpose(0, 3, 1, 2), grads.transpose(0, 3, 1, 2)
    return np.einsum("nk,nkhw->nhw", grads.mean(axis=(2, 3)), acts)


def test_early_layer_maps_skip_the_full_gradient(case: zoo.Case) -> None:
    layer = case.onnx_names[case.taps[0]]
    explainer = og.Explainer(case.model, layer=layer, providers="cpu")
    graph = explainer.sessions.graph()
    made = {o: n for n in graph.model.graph.node for o in n.output}
    source = made[GRADIENT].input[0]
    while made[source].op_type == "Identity":
        source = made[source].input[0]
    if case.arch.name == "MobileNetV2":  # what is saved: the stride-2 depthwise conv's VJP
        assert made[source].op_type == "ConvTranspose"
    assert not any(source in n.output for n in graph.maps_model().graph.node)

    shape = explainer.layers[0].shape
    terms = 9 * int(np.prod(shape[1:]))
    layout = explainer.layers[0].layout
    # float64 (the graph cast to double): the shortcut's map and the full gradient's, from
    # one forward pass, so only the order of the sums differs
    coarse, grads, acts = evaluator(to_double(graph.model)).run(
        [COARSE, GRADIENT, layer], {explainer.model.input_name: case.x.astype(np.float64)})
    old = _gradcam(acts, grads, layout)
    u64 = np.finfo(np.float64).eps / 2
    assert np.abs(coarse[:, 0] - old).max() <= terms * u64 * np.abs(old).max()
    # float32, ONNX Runtime: the maps session against the full graph's gradient
    res = explainer.explain(case.x, case.targets)
    old32 = _gradcam(res.activations[0].astype(np.float64),
                     res.gradients[0].astype(np.float64), "NCHW")
    u32 = np.finfo(np.float32).eps / 2
    assert np.abs(res.coarse - old32).max() <= 4 * np.sqrt(terms) * u32 * np.abs(old32).max()
