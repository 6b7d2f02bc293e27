"""The ``evaluate`` job: faithfulness metrics of each method over a set of images."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from onnx_gradcam import metrics
from onnx_gradcam.errors import OnnxGradCamError
from onnx_gradcam.explainer import Explainer
from onnx_gradcam.images import IMAGE_SUFFIXES, list_images
from onnx_gradcam.metadata import Preprocessing
from onnx_gradcam.runner import decoded_chunks


def find_mask(masks: Path, image: Path) -> np.ndarray | None:
    """The ground-truth mask for ``image``: a file with the same stem under ``masks``
    (non-zero pixels = object), or None."""
    for candidate in sorted(masks.glob(image.stem + ".*")):
        if candidate.suffix.lower() in IMAGE_SUFFIXES:
            mask = cv2.imread(str(candidate), cv2.IMREAD_GRAYSCALE)
            if mask is None:
                raise OnnxGradCamError(f"{candidate}: cannot decode mask")
            return mask > 0
    return None


def _probabilities(explainer: Explainer) -> Callable[[np.ndarray], np.ndarray]:
    return lambda batch: metrics.as_probabilities(explainer.forward(batch),
                                                  explainer.score_kind)


def evaluate(explainers: Sequence[Explainer], inputs: Sequence[Path],
             masks: Path | None = None, preprocessing: Preprocessing | None = None,
             steps: int = 20, batch_size: int = 16,
             progress: Callable[[int], None] | None = None) -> dict:
    """Average Drop, Increase in Confidence, deletion and insertion AUC (and the pointing game
    where masks are given) per method, over every image; bad images are listed, not fatal."""
    lead = explainers[0]
    pre = lead.preprocessing(preprocessing)
    probabilities = _probabilities(lead)
    channel_axis = 0 if pre.layout == "NCHW" else 2
    paths = list_images(list(inputs))
    per: dict[str, dict[str, list]] = {
        ex.method.name: {"full": [], "masked": [], "deletion": [], "insertion": [], "hits": []}
        for ex in explainers}
    errors = []
    for decoded in decoded_chunks(lead, paths, pre, batch_size, errors, progress):
        _score_chunk(explainers, [d.path for d in decoded], np.stack([d.x for d in decoded]),
                     per, probabilities, masks, steps, channel_axis)
    summary = {}
    for method, values in per.items():
        if not values["full"]:
            continue
        row = {
            "images": len(values["full"]),
            "average_drop": metrics.average_drop(values["full"], values["masked"]),
            "increase_in_confidence": metrics.increase_in_confidence(values["full"],
                                                                     values["masked"]),
            "deletion_auc": float(np.mean(values["deletion"])),
            "insertion_auc": float(np.mean(values["insertion"])),
        }
        if values["hits"]:
            row["pointing_game"] = float(np.mean(values["hits"]) * 100)
            row["pointing_images"] = len(values["hits"])
        summary[method] = row
    return {"model": lead.model.source, "steps": steps, "metrics": summary, "errors": errors}


def _score_chunk(explainers, paths, batch, per, probabilities, masks, steps, channel_axis):
    for ex in explainers:
        res = ex.explain(batch)
        values = per[ex.method.name]
        full = probabilities(batch)[np.arange(len(batch)), res.targets]
        cams = np.expand_dims(res.cams, channel_axis + 1).astype(batch.dtype)
        masked = probabilities(batch * cams)[np.arange(len(batch)), res.targets]
        values["full"] += full.tolist()
        values["masked"] += masked.tolist()
        for i, path in enumerate(paths):
            target = int(res.targets[i])
            values["deletion"].append(metrics.deletion_auc(
                batch[i], res.cams[i], target, probabilities, steps, channel_axis))
            values["insertion"].append(metrics.insertion_auc(
                batch[i], res.cams[i], target, probabilities, steps, channel_axis))
            mask = find_mask(masks, path) if masks else None
            if mask is not None:
                values["hits"].append(metrics.pointing_game(res.cams[i], mask))
