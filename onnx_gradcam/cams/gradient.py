"""Gradient-based CAM methods: pure functions of activations ``A`` and gradients ``G``.

All arrays are NCHW (N, K, h, w). A *channel* method returns its weights w (N, K); the others
return their weighted activations (N, K, h, w). The map is Σ_k w_k·A_k or the sum of the
weighted activations over channels (or, with ``eigen_smooth``, their first principal component),
before the ReLU and normalisation of :mod:`onnx_gradcam.cams.postprocess`.
Formulas follow pytorch-grad-cam (see shared/CAM_CONVENTIONS.md).
"""

from __future__ import annotations

import numpy as np


def channel_weighted(weights: np.ndarray, acts: np.ndarray) -> np.ndarray:
    """w_k · A_k for weights (N, K)."""
    return weights[:, :, None, None] * acts


def gradcam(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """Grad-CAM: w_k = mean_ij G_kij; cam = Σ_k w_k A_k. Returns w."""
    return grads.reshape(*grads.shape[:2], -1).mean(axis=2)


def hirescam(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """HiRes-CAM: cam = Σ_k (G ⊙ A)_k (element-wise, no spatial averaging)."""
    return grads * acts


def gradcam_elementwise(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """Grad-CAM element-wise (pytorch-grad-cam's GradCAMElementWise): cam = Σ_k relu(G ⊙ A)_k."""
    return np.maximum(grads * acts, 0)


def gradcam_plusplus(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """Grad-CAM++ as pytorch-grad-cam computes it (without the paper's exp(S) factor):
    α = G² / (2G² + (Σ_ab A_kab)·G³ + 1e-6), α = 0 where G = 0; w_k = Σ_ij relu(G)·α;
    cam = Σ_k w_k A_k. Returns w."""
    g2 = grads * grads
    g3 = g2 * grads
    sum_a = acts.sum(axis=(2, 3), keepdims=True)
    alpha = g2 / (2 * g2 + sum_a * g3 + 1e-6)
    alpha = np.where(grads != 0, alpha, 0)
    return (np.maximum(grads, 0) * alpha).sum(axis=(2, 3))


def xgradcam(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """XGrad-CAM: w_k = Σ_ij G·A / (Σ_ab A + 1e-7); cam = Σ_k w_k A_k. Returns w."""
    sum_a = acts.sum(axis=(2, 3), keepdims=True)
    return (grads * acts / (sum_a + 1e-7)).sum(axis=(2, 3))


def layercam(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """Layer-CAM: cam = Σ_k relu(G) ⊙ A."""
    return np.maximum(grads, 0) * acts
