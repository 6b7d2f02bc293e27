"""Method grids: the original image beside each method's overlay, captioned; contact sheets."""

from __future__ import annotations

import cv2
import numpy as np

TILE = 224
CAPTION = 26


def _tile(rgb: np.ndarray, caption: str, tile: int) -> np.ndarray:
    height, width = rgb.shape[:2]
    scale = tile / max(height, width)
    small = cv2.resize(rgb, (max(1, round(width * scale)), max(1, round(height * scale))),
                       interpolation=cv2.INTER_AREA)
    canvas = np.full((tile + CAPTION, tile, 3), 255, np.uint8)
    top, left = CAPTION + (tile - small.shape[0]) // 2, (tile - small.shape[1]) // 2
    canvas[top:top + small.shape[0], left:left + small.shape[1]] = small
    font_scale = min(0.5, 0.5 * tile / max(1, 9 * len(caption)))
    cv2.putText(canvas, caption, (4, CAPTION - 8), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def grid_row(original: np.ndarray, title: str, panels: list[tuple[str, np.ndarray]],
             tile: int = TILE) -> np.ndarray:
    """One picture: the original (captioned ``title``) then each (caption, overlay) panel."""
    tiles = [_tile(original, title, tile)] + [_tile(img, cap, tile) for cap, img in panels]
    gap = np.full((tile + CAPTION, 4, 3), 255, np.uint8)
    out = [tiles[0]]
    for t in tiles[1:]:
        out += [gap, t]
    return np.hstack(out)


def contact_sheet(rows: list[np.ndarray]) -> np.ndarray:
    """Grid rows stacked top to bottom (padded to the widest)."""
    width = max(r.shape[1] for r in rows)
    padded = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255)
              for r in rows]
    return np.vstack(padded)
