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
