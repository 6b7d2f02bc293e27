"""Grad-CAM weights of VGG-style heads taken without forming the gradient
(onnx_gradcam.autodiff.summed), against float64 finite differences of the head."""

from __future__ import annotations

import numpy as np
import pytest

import onnx_gradcam as og
from tests.gradcheck import make_model, session
from tests.models import FLAT_HEADS, flat_head, flat_head_cnn


def average_pool(a: np.ndarray, kernel: int, pad: int) -> np.ndarray:
    """Stride-2 average pooling that counts the zero pads (ONNX Runtime has no float64 one)."""
    padded = np.pad(a, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    size = (padded.shape[2] - kernel) // 2 + 1
    out = np.zeros((*a.shape[:2], size, size))
    for i in range(size):
        for j in range(size):
            out[:, :, i, j] = padded[:, :, 2 * i:2 * i + kernel, 2 * j:2 * j + kernel].mean(
                axis=(2, 3))
    return out


def head_function(head: str, acts_shape: tuple[int, ...]):
    """The head as a float64 function of the layer: ONNX Runtime on the head's nodes, with
    an average pooling done by :func:`average_pool` first."""
    nodes, weights = flat_head(head)
    if nodes[0].op_type == "AveragePool":
        kernel, pad = (3, 1) if head.startswith("padded") else (2, 0)
        pooled = average_pool(np.zeros(acts_shape), kernel, pad)
        run = session(make_model(nodes[1:], [("pool", ["N", *pooled.shape[1:]])],
                                 output="logits", inits=weights))
        return lambda a: run.run(["logits"], {"pool": average_pool(a, kernel, pad)})[0]
    run = session(make_model(nodes, [("act", ["N", *acts_shape[1:]])], output="logits",
                             inits=weights))
    return lambda a: run.run(["logits"], {"act": a})[0]


def finite_difference_weights(head: str, acts: np.ndarray, targets: np.ndarray,
                              eps: float = 1e-6) -> np.ndarray:
    """w_nk = (1/h·w) Σ_ij ∂s/∂A_kij: the derivative of the target score along the direction
    that adds 1 to every position of channel k, by float64 central differences of the head."""
    f = head_function(head, acts.shape)
    n, k, h, w = acts.shape
    out = np.zeros((n, k))
    for c in range(k):
        step = np.zeros_like(acts, dtype=np.float64)
        step[:, c] = eps
        out[:, c] = (f(acts + step) - f(acts - step))[np.arange(n), targets] / (2 * eps) / (h * w)
    return out


@pytest.mark.parametrize("head", FLAT_HEADS)
def test_gradcam_weights_of_flattening_heads_equal_finite_differences(head: str) -> None:
    x = np.random.default_rng(3).standard_normal((3, 3, 16, 16)).astype(np.float32)
    ex = og.Explainer(flat_head_cnn(head), layer="act")
    res = ex.explain(x, targets=[0, 3, 4])
    acts = res.activations[0].astype(np.float64)
    w = finite_difference_weights(head, acts, res.targets)
    expected = np.einsum("nk,nkhw->nhw", w, acts)  # coarse maps come before the ReLU
    scale = np.abs(expected).max()
    assert np.abs(res.coarse - expected).max() <= 1e-5 * scale
    # the same weights as the full gradient's mean (the other methods' input)
    np.testing.assert_allclose(res.gradients[0].mean(axis=(2, 3)), w, rtol=1e-4,
                               atol=1e-6 * np.abs(w).max())
    # the maps graph reads the first weight for the forward product and, with the shortcut,
    # for the constant-folded sums Q, never for the backward product g·Wᵀ; a padded pooling
    # that counts its pads does not keep the sums: the gradient is formed and averaged
    first = "wh" if "wh" in flat_head(head)[1] else "wo"
    ops = [n.op_type for n in ex.graph.maps_model().graph.node if first in n.input]
    if head == "padded_avgpool_matmul":
        assert len(ops) == 2 and "Reshape" not in ops, ops
    else:
        assert sorted(ops) == ["MatMul" if "matmul" in head else "Gemm", "Reshape"]
