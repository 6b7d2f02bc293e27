"""Write the demo's sample images and their ground-truth masks (numpy + OpenCV only).

    python models/make_samples.py

writes ``models/samples/<idx>_<class>.png`` (96x96 RGB scenes, the model's input size),
``models/samples/<idx>_<class>_200x150.png`` (one scene resized up to a non-square 200x150, to show
heatmaps mapped back onto an original image size) and the masks under ``models/samples/masks/``
with the same names (uint8, 0 = background, 255 = object). Scenes come from a fixed seed that is
neither the training nor the held-out seed, and cover every class.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from scenes import CLASSES, make_scene  # noqa: E402

SAMPLES_SEED = 2024
N_SAMPLES = 6
LARGE_SIZE = (200, 150)  # (width, height)


def main() -> None:
    out = HERE / "samples"
    (out / "masks").mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("*.png"), *(out / "masks").glob("*.png")]:
        old.unlink()
    rng = np.random.default_rng(SAMPLES_SEED)
    per_class = {c: 0 for c in range(len(CLASSES))}
    quota = -(-N_SAMPLES // len(CLASSES))  # at most 2 of a class, so all 4 appear in 6
    written = 0
    while written <= N_SAMPLES:
        image, label, mask = make_scene(rng)
        if written < N_SAMPLES:
            if per_class[label] >= quota:
                continue
            per_class[label] += 1
            name = f"{written}_{CLASSES[label]}.png"
        else:  # one larger, non-square picture
            image = cv2.resize(image, LARGE_SIZE, interpolation=cv2.INTER_LINEAR)
            mask = cv2.resize(mask.astype(np.uint8), LARGE_SIZE,
                              interpolation=cv2.INTER_NEAREST).astype(bool)
            name = f"{written}_{CLASSES[label]}_{LARGE_SIZE[0]}x{LARGE_SIZE[1]}.png"
        cv2.imwrite(str(out / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(out / "masks" / name), mask.astype(np.uint8) * 255)
        print(out / name)
        written += 1


if __name__ == "__main__":
    main()
