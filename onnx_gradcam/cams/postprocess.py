"""The one post-processing path every method shares (CAM_CONVENTIONS.md, "Post-processing")."""

from __future__ import annotations

import cv2
import numpy as np


def min_max(maps: np.ndarray) -> np.ndarray:
    """Per map: m −= min; m /= (1e-7 + max). A constant map becomes all zeros, never NaN."""
    flat = np.array(maps, dtype=np.float32).reshape(len(maps), -1)  # a copy, worked in place
    flat -= flat.min(axis=1, keepdims=True)
    flat /= 1e-7 + flat.max(axis=1, keepdims=True)
    return flat.reshape(maps.shape)


def upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize each (h, w) map to ``size`` = (H, W) with cv2.resize INTER_LINEAR."""
    height, width = size
    out = np.empty((len(maps), height, width), dtype=np.float32)
    for i, m in enumerate(maps):
        out[i] = cv2.resize(np.float32(m), (width, height))
    return out


def postprocess(per_layer: list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """Coarse maps (one (N, h, w) array per layer) → heatmaps (N, H, W) in [0, 1]:
    ReLU, min-max, upsample per layer; then ReLU, mean over layers, min-max again (always, also
    for one layer, as pytorch-grad-cam does)."""
    layers = [upsample(min_max(np.maximum(coarse, 0)), size) for coarse in per_layer]
    if len(layers) == 1:  # bilinear resizing keeps [0, 1] maps ≥ 0, and a mean of one is itself
        return min_max(layers[0])
    stacked = np.maximum(np.stack(layers, axis=1), 0)
    return min_max(stacked.mean(axis=1))
