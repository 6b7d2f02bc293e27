"""Faithfulness metrics for saliency maps: pure functions over scores, maps and a forward.

``forward(batch) -> (B, C)`` class probabilities; maps are (H, W) in [0, 1] at input size;
inputs are one preprocessed image (C, H, W) or (H, W, C) with ``channel_axis`` saying which.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

Forward = Callable[[np.ndarray], np.ndarray]


def as_probabilities(scores: np.ndarray, kind: str) -> np.ndarray:
    """Class probabilities from scores: kept when they are the model's probabilities (or already
    rows in [0, 1] summing to 1); else softmax of the logits."""
    scores = np.asarray(scores, np.float64)
    if kind == "probabilities" or (
            scores.min() >= 0 and scores.max() <= 1 and np.allclose(scores.sum(1), 1, atol=1e-3)):
        return scores
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def average_drop(full: np.ndarray, masked: np.ndarray) -> float:
    """Average Drop % (Chattopadhyay et al., Grad-CAM++): mean of max(0, Y − O)/Y · 100, with
    Y the class probability on the image and O on the image multiplied by its map. Lower is
    better."""
    full, masked = np.asarray(full, np.float64), np.asarray(masked, np.float64)
    return float(np.mean(np.maximum(0.0, full - masked) / np.maximum(full, 1e-12)) * 100)


def increase_in_confidence(full: np.ndarray, masked: np.ndarray) -> float:
    """Increase in Confidence %: share of images with O > Y. Higher is better."""
    return float(np.mean(np.asarray(masked) > np.asarray(full)) * 100)


def auc(curve: np.ndarray) -> float:
    """Area under a curve sampled at equal steps over the fraction axis [0, 1] (trapezoid)."""
    curve = np.asarray(curve, np.float64)
    return float(((curve[:-1] + curve[1:]) / 2).mean())


def _expand(mask: np.ndarray, x: np.ndarray, channel_axis: int) -> np.ndarray:
    return np.expand_dims(mask, channel_axis).astype(x.dtype)


def perturbation_curve(x: np.ndarray, saliency: np.ndarray, target: int, forward: Forward,
                       start: np.ndarray, finish: np.ndarray, steps: int, channel_axis: int,
                       batch_size: int = 32) -> np.ndarray:
    """Probabilities of ``target`` as pixels switch from ``start`` to ``finish`` in order of
    decreasing saliency, ``steps`` equal chunks (so ``steps + 1`` points, ties broken by
    position). Deletion: start = x, finish = baseline; insertion: the reverse."""
    order = np.argsort(-saliency.ravel(), kind="stable")
    n = order.size
    frames = []
    for step in range(steps + 1):
        switched = np.zeros(n, dtype=bool)
        switched[order[: round(n * step / steps)]] = True
        mask = _expand(switched.reshape(saliency.shape), x, channel_axis)
        frames.append(start * (1 - mask) + finish * mask)
    frames_arr = np.stack(frames).astype(x.dtype)
    probs = np.concatenate([forward(frames_arr[i:i + batch_size])
                            for i in range(0, len(frames_arr), batch_size)])
    return probs[:, target]


def blurred(x: np.ndarray, channel_axis: int, sigma: float = 5.0) -> np.ndarray:
    """The insertion baseline: each channel Gaussian-blurred (as Petsiuk et al. do)."""
    moved = np.moveaxis(x, channel_axis, -1).astype(np.float32)
    out = cv2.GaussianBlur(moved, (0, 0), sigma)
    if out.ndim == 2:
        out = out[..., None]
    return np.moveaxis(out, -1, channel_axis).astype(x.dtype)


def deletion_auc(x: np.ndarray, saliency: np.ndarray, target: int, forward: Forward,
                 steps: int = 20, channel_axis: int = 0) -> float:
    """Deletion AUC (Petsiuk et al., RISE): delete the most salient pixels first (set to 0, the
    dataset mean after normalisation); area under the class probability. Lower is better."""
    curve = perturbation_curve(x, saliency, target, forward, x, np.zeros_like(x), steps,
                               channel_axis)
    return auc(curve)


def insertion_auc(x: np.ndarray, saliency: np.ndarray, target: int, forward: Forward,
                  steps: int = 20, channel_axis: int = 0) -> float:
    """Insertion AUC: start from a blurred image and insert the most salient pixels first;
    area under the class probability. Higher is better."""
    curve = perturbation_curve(x, saliency, target, forward, blurred(x, channel_axis), x,
                               steps, channel_axis)
    return auc(curve)


def pointing_game(cam: np.ndarray, mask: np.ndarray) -> bool:
    """Hit if the map's maximum (after resizing the map to the mask, bilinear) lies inside the
    object mask."""
    if cam.shape != mask.shape:
        cam = cv2.resize(np.float32(cam), (mask.shape[1], mask.shape[0]))
    row, col = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return bool(mask[row, col])


#: the pointing game's tolerance (Zhang et al., "Top-down neural attention by excitation
#: backprop": 15 pixels at ImageNet's 224), as a share of the map's longer side
POINTING_TOLERANCE = 15 / 224


def map_agreement(cam: np.ndarray, reference: np.ndarray) -> dict[str, float | bool]:
    """How far a map is from a reference map of the same image, target and size (both in
    [0, 1], e.g. an int8 model's and its float32 original's):

    - ``mean_abs_delta``: mean |cam − reference| over the pixels;
    - ``correlation``: Pearson's over the pixels; where a map is constant (all zero) it is
      1 if both maps are equal, else 0;
    - ``pointing_agreement``: whether the two maps' maxima (the first in row-major order) lie
      within :data:`POINTING_TOLERANCE` of the longer side of each other (Euclidean).
    """
    cam, reference = np.asarray(cam, np.float64), np.asarray(reference, np.float64)
    if cam.shape != reference.shape:
        raise ValueError(f"maps of shapes {cam.shape} and {reference.shape}")
    if cam.std() == 0 or reference.std() == 0:
        correlation = float(np.array_equal(cam, reference))
    else:
        correlation = float(np.corrcoef(cam.ravel(), reference.ravel())[0, 1])
    peaks = [np.array(np.unravel_index(int(np.argmax(m)), m.shape)) for m in (cam, reference)]
    distance = float(np.linalg.norm(peaks[0] - peaks[1]))
    return {"mean_abs_delta": float(np.abs(cam - reference).mean()), "correlation": correlation,
            "pointing_agreement": distance <= POINTING_TOLERANCE * max(cam.shape)}
