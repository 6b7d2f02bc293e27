"""The one post-processing path every method shares (CAM_CONVENTIONS.md, "Post-processing").

Maps are worked one (h, w) plane at a time with OpenCV (``minMaxLoc``, ``resize`` into the
output buffer) and in-place float32 arithmetic: per image this is about half the time of the
same steps vectorised over the batch in numpy, and bit-identical to them.
"""

from __future__ import annotations

import cv2
import numpy as np

EPS = np.float32(1e-7)


def normalise_plane(plane: np.ndarray, eps: np.float32 = EPS) -> np.ndarray:
    """In place on a float32 (h, w) plane: m −= min; m /= (eps + max). A constant plane
    becomes all zeros, never NaN. Returns ``plane``."""
    low, high = cv2.minMaxLoc(plane)[:2]  # float32 values, exact as Python floats
    plane -= np.float32(low)
    plane /= eps + (np.float32(high) - np.float32(low))
    return plane


def min_max(maps: np.ndarray) -> np.ndarray:
    """Per map of an (N, h, w) stack: m −= min; m /= (1e-7 + max), on a float32 copy."""
    out = np.array(maps, dtype=np.float32)
    for plane in out:
        normalise_plane(plane)
    return out


def upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize each (h, w) map to ``size`` = (H, W) with cv2.resize INTER_LINEAR."""
    height, width = size
    out = np.empty((len(maps), height, width), dtype=np.float32)
    for m, dst in zip(maps, out):
        cv2.resize(np.asarray(m, dtype=np.float32), (width, height), dst=dst)
    return out


def postprocess(per_layer: list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """Coarse maps (one (N, h, w) array per layer) → heatmaps (N, H, W) in [0, 1]:
    ReLU, min-max, upsample per layer; then ReLU, mean over layers, min-max again (always, also
    for one layer, as pytorch-grad-cam does). One layer that is upsampled takes the shortcut
    of :func:`_one_layer`."""
    coarse = per_layer[0]
    if len(per_layer) == 1 and size[0] >= coarse.shape[1] and size[1] >= coarse.shape[2]:
        return _one_layer(coarse, size)
    layers = []
    for coarse in per_layer:
        relu = np.maximum(coarse, 0, dtype=np.float32)  # a fresh array, normalised in place
        for plane in relu:
            normalise_plane(plane)
        layers.append(upsample(relu, size))
    out = np.maximum(np.stack(layers, axis=1), 0).mean(axis=1, dtype=np.float32)
    for plane in out:
        normalise_plane(plane)
    return out


#: ε² of :func:`_one_layer`'s one min-max
EPS_SQUARED = np.float32(1e-14)


def _one_layer(coarse: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """:func:`postprocess` of one layer's maps upsampled to ``size``, with one division
    instead of two. Bilinear weights sum to 1 (U·1 = 1), so with c = relu(coarse), r = max − min
    and c₀ = c − min c, the normalised map n = c₀/(ε + r_c) upsamples to U·n = U·c₀/(ε + r_c),
    and the final min-max of U·n is, exactly,

        (U·c₀ − min U·c₀) / (r_u + ε·(ε + r_c)),   r_u = r(U·c₀).

    This takes ε² for ε·(ε + r_c): a relative change of ε·r_c/r_u, ~1e-7 where the upsampled
    map spans about the coarse range, as an upsampling does (≤ 1e-6 from the two steps in
    tests/test_cams.py). The minimum is still taken off before upsampling: that makes a
    constant map exactly zero, where resizing it would leave rounding noise for the division
    to blow up. :func:`onnx_gradcam.cams.graph.heatmap`
    computes the same map in ONNX nodes."""
    height, width = size
    out = np.empty((len(coarse), height, width), dtype=np.float32)
    for plane, dst in zip(coarse, out):
        shifted = np.maximum(plane, 0, dtype=np.float32)
        shifted -= np.float32(cv2.minMaxLoc(shifted)[0])
        cv2.resize(shifted, (width, height), dst=dst)
        normalise_plane(dst, EPS_SQUARED)
    return out
