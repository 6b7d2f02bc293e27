"""Score-CAM: channel weights from the model's scores on activation-masked inputs."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def _align_corners_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) bilinear interpolation weights with align_corners=True."""
    m = np.zeros((n_out, n_in), dtype=np.float64)
    if n_in == 1 or n_out == 1:
        m[:, 0] = 1.0
        return m
    pos = np.arange(n_out) * (n_in - 1) / (n_out - 1)
    low = np.minimum(np.floor(pos).astype(int), n_in - 2)
    frac = pos - low
    m[np.arange(n_out), low] = 1 - frac
    m[np.arange(n_out), low + 1] += frac
    return m


def upsample_align_corners(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of (N, K, h, w) maps to (N, K, H, W), align_corners=True
    (torch's UpsamplingBilinear2d, which pytorch-grad-cam's Score-CAM uses)."""
    rows = _align_corners_matrix(size[0], maps.shape[2])
    cols = _align_corners_matrix(size[1], maps.shape[3])
    return np.einsum("Hh,nkhw,Ww->nkHW", rows, maps, cols).astype(np.float32)


def score_masks(acts: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """M_k = upsampled A_k min-max normalised: (M − min)/(max − min + 1e-8), shape (N, K, H, W)."""
    up = upsample_align_corners(acts, size)
    low = up.min(axis=(2, 3), keepdims=True)
    high = up.max(axis=(2, 3), keepdims=True)
    return (up - low) / (high - low + 1e-8)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def scorecam(acts: np.ndarray, inputs: np.ndarray, targets: np.ndarray,
             forward: Callable[[np.ndarray], np.ndarray], layout: str = "NCHW",
             batch_size: int = 32) -> np.ndarray:
    """Score-CAM: s_k = target score of x ⊙ M_k; w = softmax(s) over channels;
    cam = Σ_k w_k A_k. Returns the channel weights w (N, K).
    ``forward`` maps an input batch to scores (B, C); the masked inputs of all channels are run
    in batches of ``batch_size``."""
    size = inputs.shape[2:4] if layout == "NCHW" else inputs.shape[1:3]
    masks = score_masks(acts, size)
    n, k = acts.shape[:2]
    scores = np.empty((n, k), dtype=np.float64)
    for i in range(n):
        for start in range(0, k, batch_size):
            m = masks[i, start:start + batch_size]
            m = m[:, None] if layout == "NCHW" else m[..., None]
            batch = (inputs[i][None] * m).astype(inputs.dtype)
            scores[i, start:start + len(m)] = forward(batch)[:, targets[i]]
    return softmax(scores, axis=1).astype(np.float32)
