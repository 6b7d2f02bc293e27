"""The ``evaluate`` job: faithfulness metrics of each method over a set of images."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from onnx_gradcam import metrics
from onnx_gradcam.errors import OnnxGradCamError
from onnx_gradcam.explainer import Explainer
from onnx_gradcam.images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, decode_image, list_images
from onnx_gradcam.metadata import Preprocessing
from onnx_gradcam.runner import Decoded, check_preprocessing, decoded_chunks, explain_finite


def find_mask(masks: Path, image: Path, size: tuple[int, int] | None = None,
              max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray | None:
    """The ground-truth mask for ``image``: a file with the same stem under ``masks``
    (non-zero pixels = object), or None where there is none. A mask that does not decode, or
    (given the image's ``size`` (H, W)) is not that size, raises one line naming it."""
    for candidate in sorted(masks.glob(_escaped(image.stem) + ".*")):
        if candidate.suffix.lower() in IMAGE_SUFFIXES:
            rgb, original = decode_image(candidate, max_pixels)
            if size is not None and tuple(original) != tuple(size):
                raise OnnxGradCamError(
                    f"{candidate}: mask is {original[1]} × {original[0]} pixels but its image "
                    f"{image} is {size[1]} × {size[0]}")
            return rgb.max(axis=2) > 0
    return None


def _escaped(stem: str) -> str:
    """``stem`` with glob's special characters taken literally."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in stem)


def _probabilities(explainer: Explainer) -> Callable[[np.ndarray], np.ndarray]:
    return lambda batch: metrics.as_probabilities(explainer.forward(batch),
                                                  explainer.score_kind)


def evaluate(explainers: Sequence[Explainer], inputs: Sequence[Path],
             masks: Path | None = None, preprocessing: Preprocessing | None = None,
             steps: int = 20, batch_size: int = 16,
             progress: Callable[[int], None] | None = None,
             max_pixels: int = DEFAULT_MAX_PIXELS, engine: Callable | None = None,
             reference: Sequence[Explainer] | None = None) -> dict:
    """Average Drop, Increase in Confidence, deletion and insertion AUC (and the pointing game
    where masks are given) per method, over every image; bad images are listed, not fatal.
    With ``masks``, each image without a usable mask is listed under ``mask_problems``
    (missing, undecodable or of another size) and the pointing game counts only the others
    (``pointing_images`` of ``images``). ``engine(paths, pre, steps, channel_axis, masks)``
    scores elsewhere (Ray), yielding what :func:`score_batch` gives per batch.

    ``reference``: explainers of the original model (one per method, in the same order; e.g.
    the float32 model an int8 or fp16 copy was made from): each image's map is compared with
    the reference's map of the same target (:func:`metrics.map_agreement`), per image
    (``reference.images``) and averaged per method (``reference_*`` in ``metrics``). Refused
    in one line where the two models do not take the same input."""
    lead = explainers[0]
    pre = lead.preprocessing(preprocessing)
    check_preprocessing(lead, pre, max_pixels)
    if reference:
        _check_same_input(lead, reference[0], preprocessing)
        if engine is not None:
            raise OnnxGradCamError("--reference runs with the local engine only")
    channel_axis = 0 if pre.layout == "NCHW" else 2
    paths = list_images(list(inputs))
    per = _values(explainers)
    errors: list[dict] = []
    problems: list[dict] = []
    if engine is None:
        for decoded in decoded_chunks(lead, paths, pre, batch_size, errors, progress,
                                      max_pixels):
            for part in score_batch(explainers, decoded, masks, max_pixels, steps,
                                    channel_axis, errors, problems, reference):
                _merge(per, part)
    else:
        for parts, failed, missing, count in engine(paths, pre, steps, channel_axis, masks):
            for part in parts:
                _merge(per, part)
            errors += failed
            problems += missing
            if progress:
                progress(count)
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
        if masks is not None:
            row["pointing_images"] = len(values["hits"])
            if values["hits"]:
                row["pointing_game"] = float(np.mean(values["hits"]) * 100)
        if reference:
            row.update(_agreement_summary(values["reference"]))
        summary[method] = row
    result = {"model": lead.model.source, "steps": steps, "metrics": summary, "errors": errors}
    if reference:
        result["reference"] = {
            "model": reference[0].model.source,
            "pointing_tolerance": metrics.POINTING_TOLERANCE,
            "images": [row for values in per.values() for row in values["reference"]]}
    if masks is not None:
        failed = {e["path"] for e in errors}
        result["mask_problems"] = [p for p in problems if p["path"] not in failed]
    return result


def _check_same_input(model: Explainer, reference: Explainer,
                      preprocessing: Preprocessing | None) -> None:
    """One line where ``reference`` takes another input than ``model`` (shape beyond the
    batch, or the preprocessing its metadata asks for): their maps would not be of one image."""
    shapes = [tuple(ex.model.input_shape[1:]) for ex in (model, reference)]
    pres = [ex.preprocessing(preprocessing) for ex in (model, reference)]
    if shapes[0] != shapes[1] or pres[0] != pres[1]:
        what = (f"input shapes {shapes[0]} and {shapes[1]}" if shapes[0] != shapes[1]
                else f"preprocessing {pres[0]} and {pres[1]}")
        raise OnnxGradCamError(f"--reference {reference.model.source}: its input differs from "
                               f"{model.model.source}'s ({what}); compare copies of one model")


def _agreement_summary(rows: list[dict]) -> dict[str, float]:
    """The per-image map agreements of one method, averaged (pointing agreement in %)."""
    if not rows:
        return {}
    return {"reference_mean_abs_delta": float(np.mean([r["mean_abs_delta"] for r in rows])),
            "reference_correlation": float(np.mean([r["correlation"] for r in rows])),
            "reference_pointing_agreement": float(
                np.mean([r["pointing_agreement"] for r in rows]) * 100)}


def _values(explainers: Sequence[Explainer]) -> dict[str, dict[str, list]]:
    return {ex.method.name: {"full": [], "masked": [], "deletion": [], "insertion": [],
                             "hits": [], "reference": []} for ex in explainers}


def _merge(per: dict[str, dict[str, list]], part: dict[str, dict[str, list]]) -> None:
    for method, values in part.items():
        for key, items in values.items():
            per[method][key] += items


def score_batch(explainers: Sequence[Explainer], decoded: list[Decoded], masks: Path | None,
                max_pixels: int, steps: int, channel_axis: int, errors: list[dict],
                problems: list[dict], reference: Sequence[Explainer] | None = None
                ) -> list[dict[str, dict[str, list]]]:
    """Score one decoded chunk with every method: the per-method values to merge (images
    whose scores are not finite go to ``errors``, missing masks to ``problems``)."""
    probabilities = _probabilities(explainers[0])
    truths = _masks(decoded, masks, max_pixels, problems) if masks else {}
    return explain_finite(lambda part: _score_chunk(explainers, part, probabilities, truths,
                                                    steps, channel_axis, reference),
                          decoded, errors)


def _masks(decoded: list[Decoded], masks: Path, max_pixels: int,
           problems: list[dict]) -> dict[Path, np.ndarray]:
    """The usable mask of each decoded image; the others are listed in ``problems``."""
    found = {}
    for item in decoded:
        try:
            mask = find_mask(masks, item.path, item.size, max_pixels)
        except OnnxGradCamError as exc:
            problems.append({"path": str(item.path), "problem": str(exc)})
            continue
        if mask is None:
            problems.append({"path": str(item.path),
                             "problem": f"{item.path}: no mask named {item.path.stem}.* in "
                                        f"{masks}"})
        else:
            found[item.path] = mask
    return found


def _score_chunk(explainers, decoded, probabilities, truths, steps, channel_axis,
                 reference=None):
    """Score one chunk with every method; nothing is returned unless every method explains
    it (a non-finite score raises first), so a retried chunk is never counted twice."""
    batch = np.stack([d.x for d in decoded])
    results = [ex.explain(batch) for ex in explainers]
    originals = ([ref.explain(batch, res.targets) for ref, res in zip(reference, results)]
                 if reference else [None] * len(results))
    per = _values(explainers)
    for ex, res, original in zip(explainers, results, originals):
        values = per[ex.method.name]
        if original is not None:
            values["reference"] += [
                {"path": str(item.path), "method": ex.method.name, "target": int(target),
                 **metrics.map_agreement(cam, ref_cam)}
                for item, target, cam, ref_cam in zip(decoded, res.targets, res.cams,
                                                       original.cams)]
        full = probabilities(batch)[np.arange(len(batch)), res.targets]
        cams = np.expand_dims(res.cams, channel_axis + 1).astype(batch.dtype)
        masked = probabilities(batch * cams)[np.arange(len(batch)), res.targets]
        values["full"] += full.tolist()
        values["masked"] += masked.tolist()
        for i, item in enumerate(decoded):
            target = int(res.targets[i])
            values["deletion"].append(metrics.deletion_auc(
                batch[i], res.cams[i], target, probabilities, steps, channel_axis))
            values["insertion"].append(metrics.insertion_auc(
                batch[i], res.cams[i], target, probabilities, steps, channel_axis))
            mask = truths.get(item.path)
            if mask is not None:
                values["hits"].append(metrics.pointing_game(res.cams[i], mask))
    return per
