"""The ``run`` job: images or folders → overlays, optional .npy cams and report.json.

A bad image never stops the batch: it is listed under ``errors`` in the report.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnx_gradcam.errors import OnnxGradCamError
from onnx_gradcam.explainer import Explainer
from onnx_gradcam.grid import contact_sheet, grid_row
from onnx_gradcam.images import atomic_write, list_images, overlay, save_array, save_image
from onnx_gradcam.kinks import WARN_SHIFT, KnifeEdges
from onnx_gradcam.labels import Labels
from onnx_gradcam.metadata import Preprocessing
from onnx_gradcam.metrics import as_probabilities


@dataclass(frozen=True)
class RunOptions:
    outdir: Path
    target: int | str | None = None  # class index or label; None = top-k classes
    top_k: int = 1
    save_npy: bool = False
    alpha: float = 0.5
    colormap: str = "jet"
    batch_size: int = 16
    grid: bool = False  # one method-grid picture per image and a contact sheet


def check_outdir(outdir: Path, inputs: Sequence[Path]) -> None:
    """The output folder may not be a file, nor an input, nor inside an input file's name."""
    if outdir.exists() and not outdir.is_dir():
        raise OnnxGradCamError(f"{outdir}: output folder is an existing file; pick another -o")
    resolved = outdir.resolve()
    for path in inputs:
        if path.is_file() and path.resolve() == resolved:
            raise OnnxGradCamError(f"{outdir}: output folder is an input file; pick another -o")


class _Names:
    """Unique output stems for images that share a file name."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def __call__(self, path: Path) -> str:
        stem, n = path.stem, 1
        while stem in self.used:
            n += 1
            stem = f"{path.stem}_{n}"
        self.used.add(stem)
        return stem


@dataclass
class Decoded:
    """One image that decoded: its path, model input, RGB original and decode seconds."""

    path: Path
    x: np.ndarray
    rgb: np.ndarray
    seconds: float


def decoded_chunks(explainer: Explainer, paths: Sequence[Path], pre: Preprocessing,
                   batch_size: int, errors: list[dict],
                   progress: Callable[[int], None] | None = None) -> Iterator[list[Decoded]]:
    """Decode and preprocess ``paths`` in chunks of ``batch_size``; an image that fails goes to
    ``errors`` ({path, error}) and the chunk goes on without it (empty chunks are skipped)."""
    for first in range(0, len(paths), batch_size):
        chunk = paths[first:first + batch_size]
        decoded = []
        for path in chunk:
            t0 = time.perf_counter()
            try:
                batch, originals = explainer.prepare([path], pre)
                decoded.append(Decoded(path, batch[0], originals[0], time.perf_counter() - t0))
            except OnnxGradCamError as exc:
                errors.append({"path": str(path), "error": str(exc)})
        if decoded:
            yield decoded
        if progress:
            progress(len(chunk))


def run_job(explainers: Explainer | Sequence[Explainer], inputs: Sequence[Path],
            options: RunOptions, labels: Labels, preprocessing: Preprocessing | None = None,
            progress: Callable[[int], None] | None = None) -> dict:
    """Explain every image under ``inputs`` with each explainer (one per method); write the
    pictures (and with ``options.grid`` one method grid per image plus a contact sheet) and
    report.json; return the report."""
    explainers = [explainers] if isinstance(explainers, Explainer) else list(explainers)
    lead = explainers[0]
    check_outdir(options.outdir, inputs)
    paths = list_images(list(inputs))
    pre = lead.preprocessing(preprocessing)
    fixed_target = None if options.target is None else labels.index(options.target)
    if fixed_target is not None:
        lead.check_targets(fixed_target, 1)  # fail early on an out-of-range target
    options.outdir.mkdir(parents=True, exist_ok=True)
    names = _Names()
    images, errors, rows = [], [], []
    started = time.perf_counter()
    for decoded in decoded_chunks(lead, paths, pre, options.batch_size, errors, progress):
        done, grids = _explain_chunk(explainers, decoded, options, labels, fixed_target, names)
        images += done
        rows += grids
    report = {
        "model": lead.model.source,
        "methods": [ex.method.name for ex in explainers],
        "layers": [layer.name for layer in lead.layers],
        "score": {"tensor": lead.score, "kind": lead.score_kind},
        "provider": lead.provider,
        "preprocessing": {"size": list(pre.size or ()), "layout": pre.layout,
                          "color": pre.color, "scale": pre.scale, "mean": list(pre.mean),
                          "std": list(pre.std)},
        "images": images,
        "errors": errors,
        "seconds": round(time.perf_counter() - started, 4),
    }
    if rows:
        sheet = options.outdir / "contact_sheet.png"
        save_image(sheet, contact_sheet(rows))
        report["contact_sheet"] = str(sheet)
    atomic_write(options.outdir / "report.json", json.dumps(report, indent=2).encode())
    return report


def _cams(explainer: Explainer, batch: np.ndarray, k: int, fixed_target: int | None):
    """(cams (N, k, H, W), targets (N, k), scores (N, C)) for one method."""
    if k == 1:
        res = explainer.explain(batch, fixed_target)
        return res.cams[:, None], res.targets[:, None], res.scores
    res = explainer.explain_many(batch, top_k=k)  # k classes per image, one backbone pass
    return res.cams, res.targets, res.scores


def _knife_edges(explainers: list[Explainer], per_method: list, batch: np.ndarray
                 ) -> list[KnifeEdges]:
    """Per target rank, the knife edges of the first gradient method's explanations (the
    same for every gradient method: they depend on the layer, score and target only)."""
    for ex, (_, targets, _) in zip(explainers, per_method):
        if ex.method.needs_gradient:
            return [ex.knife_edges(batch, targets[:, r]) for r in range(targets.shape[1])]
    return []


def flagged_maps(report: dict) -> list[str]:
    """One line per image whose map sits on a knife edge (:data:`WARN_SHIFT`)."""
    lines = []
    for image in report["images"]:
        worst = max((e["knife_edges"] for e in image["explanations"] if "knife_edges" in e),
                    key=lambda k: k["shift"], default=None)
        if worst and worst["count"] and worst["shift"] > WARN_SHIFT:
            lines.append(f"{image['path']}: {worst['count']} kink decision(s) "
                         f"({', '.join(worst['ops'])}) within float32 rounding of their "
                         f"threshold; a flip could move the gradient by ~{worst['shift']:.0e} "
                         "(--exact rounds as the plain kernels do; `inspect --verify` checks)")
    return lines


def _explain_chunk(explainers: list[Explainer], decoded: list, options: RunOptions,
                   labels: Labels, fixed_target: int | None, names: _Names
                   ) -> tuple[list[dict], list[np.ndarray]]:
    batch = np.stack([d.x for d in decoded])
    lead = explainers[0]
    k = 1 if fixed_target is not None else max(1, min(options.top_k, lead.num_classes or 1000))
    per_method, seconds = [], {}
    for ex in explainers:
        t0 = time.perf_counter()
        per_method.append(_cams(ex, batch, k, fixed_target))
        seconds[ex.method.name] = (time.perf_counter() - t0) / len(decoded)
    knife = _knife_edges(explainers, per_method, batch)
    scores = per_method[0][2]
    probs = as_probabilities(scores, lead.score_kind)
    order = np.argsort(-scores, axis=1)
    out, grids = [], []
    for i, item in enumerate(decoded):
        path, rgb, decode_s = item.path, item.rgb, item.seconds
        stem = names(path)
        top = [{"class": int(c), "label": labels.name(int(c)),
                "score": float(scores[i, c]), "probability": float(probs[i, c])}
               for c in order[i, :max(k, 5)]]
        explained, panels = [], []
        for ex, (cams, targets, _) in zip(explainers, per_method):
            for rank in range(cams.shape[1]):
                target = int(targets[i, rank])
                name = f"{stem}_{ex.method.name}_{labels.slug(target)}"
                picture = overlay(rgb, cams[i, rank], options.alpha, options.colormap)
                save_image(options.outdir / f"{name}.png", picture)
                entry = {"method": ex.method.name, "target": target,
                         "label": labels.name(target), "score": float(scores[i, target]),
                         "overlay": str(options.outdir / f"{name}.png")}
                if ex.method.needs_gradient and knife:
                    entry["knife_edges"] = knife[rank].as_dict(i)
                if options.save_npy:
                    save_array(options.outdir / f"{name}.npy", cams[i, rank])
                    entry["npy"] = str(options.outdir / f"{name}.npy")
                explained.append(entry)
                panels.append((f"{ex.method.name}: {labels.name(target)}", picture))
        if options.grid:
            row = grid_row(rgb, path.name, panels)
            save_image(options.outdir / f"{stem}_grid.png", row)
            grids.append(row)
        out.append({"path": str(path), "width": int(rgb.shape[1]), "height": int(rgb.shape[0]),
                    "top": top, "explanations": explained,
                    "timings_ms": {"decode": round(decode_s * 1e3, 3),
                                   **{f"explain_{m}": round(t * 1e3, 3)
                                      for m, t in seconds.items()}}})
    return out, grids
