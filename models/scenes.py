"""Synthetic cluttered scenes for the bundled demo classifier (numpy + OpenCV only, no torch).

Each scene holds exactly one object of one of :data:`CLASSES` — a filled shape of a random colour,
size (about 18–36 px across) and rotation, fully inside the image — on a cluttered background:
a smooth random colour gradient with a low-frequency colour wash, several thin random lines, a few
small irregular distractor blobs (all smaller than any object, and none of them one of the
classes) and pixel noise. The object is the only class evidence, and its pixel mask is returned as
ground truth for localisation checks (a Grad-CAM "pointing game").

Everything is driven by one ``numpy.random.Generator``, so a seed fixes a dataset exactly.
"""

from __future__ import annotations

import cv2
import numpy as np

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross")

MIN_OBJECT, MAX_OBJECT = 18, 36  # nominal object extent in pixels (for size=96)
MIN_CONTRAST = 90.0  # least sum over channels of |object colour - background under it|


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth colour gradient plus a low-frequency colour wash, float32 (size, size, 3)."""
    c0, c1 = rng.uniform(0, 255, size=(2, 3))
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    t = (np.cos(angle) * xx + np.sin(angle) * yy).astype(np.float32)
    t = (t - t.min()) / (t.max() - t.min() + 1e-6)
    img = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]
    wash = rng.normal(0, 30, size=(4, 4, 3)).astype(np.float32)
    wash = cv2.resize(wash, (size, size), interpolation=cv2.INTER_CUBIC)
    return (img + wash).astype(np.float32)


def _random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, size=3))  # type: ignore[return-value]


def _draw_lines(img: np.ndarray, rng: np.random.Generator, size: int) -> None:
    for _ in range(int(rng.integers(3, 7))):
        p0 = tuple(int(v) for v in rng.integers(-size // 4, size + size // 4, size=2))
        p1 = tuple(int(v) for v in rng.integers(-size // 4, size + size // 4, size=2))
        cv2.line(img, p0, p1, _random_colour(rng), thickness=1, lineType=cv2.LINE_8)


def _draw_distractors(img: np.ndarray, rng: np.random.Generator, size: int) -> None:
    """Small irregular blobs (5–8 random radii around a centre), smaller than any object."""
    scale = size / 96.0
    for _ in range(int(rng.integers(2, 5))):
        n = int(rng.integers(5, 9))
        angles = np.sort(rng.uniform(0, 2 * np.pi, size=n))
        radii = rng.uniform(2.0, 6.0, size=n) * scale
        cx, cy = rng.uniform(0, size, size=2)
        pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
        cv2.fillPoly(img, [np.round(pts).astype(np.int32)], _random_colour(rng),
                     lineType=cv2.LINE_8)


def _rotate(pts: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return pts @ np.array([[c, s], [-s, c]])


def _shape_polygons(label: int, extent: float, angle: float) -> list[np.ndarray]:
    """Polygons (centred on 0,0) whose union is the object; a circle is a 64-gon."""
    r = extent / 2
    if CLASSES[label] == "circle":
        a = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        return [np.stack([r * np.cos(a), r * np.sin(a)], axis=1)]
    if CLASSES[label] == "square":
        h = 0.42 * extent
        sq = np.array([[-h, -h], [h, -h], [h, h], [-h, h]])
        return [_rotate(sq, angle)]
    if CLASSES[label] == "triangle":
        R = 0.62 * extent  # circumradius
        a = np.array([-np.pi / 2, np.pi / 6, 5 * np.pi / 6])
        tri = np.stack([R * np.cos(a), R * np.sin(a)], axis=1)
        tri[:, 1] += R / 4  # centre the bounding box vertically
        return [_rotate(tri, angle)]
    # cross: two bars of half-length r and half-width about r/3
    w = r / 3
    bar_h = np.array([[-r, -w], [r, -w], [r, w], [-r, w]])
    bar_v = bar_h[:, ::-1]
    return [_rotate(bar_h, angle), _rotate(bar_v, angle)]


def make_scene(rng: np.random.Generator, size: int = 96) -> tuple[np.ndarray, int, np.ndarray]:
    """One scene: RGB uint8 image (size, size, 3), class index, bool object mask (size, size)."""
    scale = size / 96.0
    label = int(rng.integers(len(CLASSES)))
    extent = rng.uniform(MIN_OBJECT, MAX_OBJECT) * scale
    angle = rng.uniform(0, 2 * np.pi)
    polys = _shape_polygons(label, extent, angle)
    allpts = np.concatenate(polys)
    lo, hi = allpts.min(axis=0), allpts.max(axis=0)
    # centre so that the whole shape lies inside [1, size - 2]
    cx = rng.uniform(1 - lo[0], size - 2 - hi[0])
    cy = rng.uniform(1 - lo[1], size - 2 - hi[1])
    polys = [np.round(p + [cx, cy]).astype(np.int32) for p in polys]

    img = _background(rng, size)
    _draw_lines(img, rng, size)
    _draw_distractors(img, rng, size)

    mask_u8 = np.zeros((size, size), np.uint8)
    for p in polys:
        cv2.fillPoly(mask_u8, [p], 1, lineType=cv2.LINE_8)
    mask = mask_u8.astype(bool)

    under = np.clip(img[mask], 0, 255).mean(axis=0)
    colour = rng.uniform(0, 255, size=3)
    for _ in range(50):  # a colour that stands out from the background under the object
        if np.abs(colour - under).sum() >= MIN_CONTRAST:
            break
        colour = rng.uniform(0, 255, size=3)
    else:
        colour = np.where(under < 128, 255.0, 0.0)
    img[mask] = colour.astype(np.float32)

    img += rng.normal(0, 8, size=img.shape).astype(np.float32)
    image = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return image, label, mask


def make_dataset(n: int, seed: int, size: int = 96) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` scenes from ``seed``: images (n, size, size, 3) uint8, labels (n,) int64, masks."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), np.uint8)
    labels = np.empty((n,), np.int64)
    masks = np.empty((n, size, size), bool)
    for i in range(n):
        images[i], labels[i], masks[i] = make_scene(rng, size)
    return images, labels, masks
