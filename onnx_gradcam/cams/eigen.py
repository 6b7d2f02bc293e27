"""Eigen-CAM family: the first principal component of (weighted) activations."""

from __future__ import annotations

import numpy as np


def projection_2d(maps: np.ndarray) -> np.ndarray:
    """Per image: X = maps reshaped (h·w, K), NaN → 0, minus its per-channel mean;
    cam = X · V₀ with V₀ the first right singular vector, sign as LAPACK returns it, computed in
    float32 like pytorch-grad-cam's ``get_2d_projection`` (float64 can flip a sign, and a
    flipped sign flips the whole map). The reduced SVD gives the same V₀ as pytorch-grad-cam's
    ``full_matrices=True`` (checked against its output in tests/test_torch_parity.py) without
    forming the K×K matrix, which made Eigen-Grad-CAM 14× a ResNet-50 inference."""
    maps = np.nan_to_num(np.float32(maps), nan=0.0)
    out = []
    for image in maps:
        k = image.shape[0]
        x = image.reshape(k, -1).T
        x = x - x.mean(axis=0)
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        out.append((x @ vt[0, :]).reshape(image.shape[1:]))
    return np.float32(out)


def eigencam(acts: np.ndarray, grads: np.ndarray | None = None) -> np.ndarray:
    """Eigen-CAM: cam = first principal component of A (needs no gradient)."""
    return acts


def eigengradcam(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """Eigen-Grad-CAM: cam = first principal component of G ⊙ A."""
    return grads * acts
