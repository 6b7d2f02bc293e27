"""Eigen-CAM family: the first principal component of (weighted) activations."""

from __future__ import annotations

from functools import cache

import numpy as np
from threadpoolctl import ThreadpoolController


@cache
def _blas() -> ThreadpoolController:
    return ThreadpoolController()


def projection_2d(maps: np.ndarray) -> np.ndarray:
    """Per image: X = maps reshaped (h·w, K), NaN → 0, minus its per-channel mean;
    cam = X · V₀ with V₀ the first right singular vector, sign as LAPACK returns it, computed in
    float32 like pytorch-grad-cam's ``get_2d_projection`` (float64 can flip a sign, and a
    flipped sign flips the whole map). See :func:`first_component` for how V₀ is found cheaply
    with the sign ``np.linalg.svd`` gives (checked against its output in tests/test_cams.py and
    against pytorch-grad-cam's in tests/test_torch_parity.py)."""
    maps = np.asarray(maps, dtype=np.float32)
    if not np.isfinite(maps).all():  # one pass to look; a copy only when something needs it
        maps = np.nan_to_num(maps, nan=0.0)
    n, k = maps.shape[:2]
    x = np.swapaxes(maps.reshape(n, k, -1), 1, 2)
    # factorisations this small gain nothing from BLAS threads, and lose much when those
    # threads wait on cores ONNX Runtime's thread pool (or another process) is spinning on
    with _blas().limit(limits=1, user_api="blas"):
        cams = first_component(x - x.mean(axis=1, keepdims=True))
    return cams.reshape(n, *maps.shape[2:])


def first_component(x: np.ndarray) -> np.ndarray:
    """X · V₀ for each X (m, n) of a stack (…, m, n), V₀ = ``np.linalg.svd(X)``'s first right
    singular vector, sign included, at a fraction of its cost, in one LAPACK call per step for
    the whole stack (numpy loops the same routine over it, so each image gets the signs its own
    call would give).

    LAPACK's ``?gesdd`` (behind ``np.linalg.svd``) factors a very wide or very tall matrix
    first (n ≥ ⌊11m/6⌋: X = L·Q; m ≥ ⌊11n/6⌋: X = Q·R) and takes the SVD of the small square
    factor, which is where the signs are decided; its cost is in forming Q and the full
    singular vectors. The same square factor comes from ``np.linalg.qr(…, mode="r")`` (L = Rᵀ of
    Xᵀ), and then X·V₀ = L·V_L₀ = σ₀·U_L₀ (wide) or X·V_R₀ (tall). Other shapes go to
    ``np.linalg.svd`` itself."""
    m, n = x.shape[-2:]
    if n >= int(m * 11 / 6):  # wide: X = L·Q, X·V₀ = σ₀·U_L₀
        u, s, _ = np.linalg.svd(np.swapaxes(np.linalg.qr(np.swapaxes(x, -1, -2), mode="r"),
                                            -1, -2))
        return u[..., 0] * s[..., :1]
    if m >= int(n * 11 / 6):  # tall: X = Q·R, V₀ = V_R₀
        _, _, vt = np.linalg.svd(np.linalg.qr(x, mode="r"))
    else:
        _, _, vt = np.linalg.svd(x, full_matrices=False)
    return np.einsum("...mn,...n->...m", x, vt[..., 0, :])


def eigencam(acts: np.ndarray, grads: np.ndarray | None = None) -> np.ndarray:
    """Eigen-CAM: cam = first principal component of A (needs no gradient)."""
    return acts


def eigengradcam(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """Eigen-Grad-CAM: cam = first principal component of G ⊙ A."""
    return grads * acts
