"""The ``run`` job: images or folders → overlays, optional .npy cams and report.json.

A bad image never stops the batch: it is listed under ``errors`` in the report. Inputs are never
outputs, no file the run did not write is overwritten, and report.json lists every file the run
wrote (so ``--overwrite`` knows what a later run may remove).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from onnx_gradcam.errors import NonFiniteError, OnnxGradCamError
from onnx_gradcam.explainer import Explainer, check_finite_input
from onnx_gradcam.grid import contact_sheet, grid_row
from onnx_gradcam.images import (
    DEFAULT_MAX_PIXELS,
    bounded,
    fit_name,
    header_size,
    list_images,
    name_max,
    overlay,
    save_array,
    save_image,
    write_json,
)
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
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger images are error rows, never decoded
    overwrite: bool = False  # replace a previous run's outputs in ``outdir``
    demo_model: bool = False  # no model was given: the report says the demo model ran
    knife_edges: bool = True  # count near-kink decisions per map (one more head pass per chunk)


T = TypeVar("T")
REPORT = "report.json"
#: The report's keys that name files the run wrote.
_WRITTEN = ("overlay", "npy", "grid", "contact_sheet")


def check_outdir(outdir: Path, inputs: Sequence[Path]) -> None:
    """Inputs are never outputs: the output folder may not be a file, an input, an input
    folder or inside one, nor the folder an input file lies in."""
    if outdir.exists() and not outdir.is_dir():
        raise OnnxGradCamError(f"{outdir}: output folder is an existing file; pick another -o")
    out = outdir.resolve()
    for path in inputs:
        where = path.resolve()
        if path.is_dir() and (where == out or where in out.parents):
            what = "is the input folder" if where == out else "is inside the input folder"
            raise OnnxGradCamError(f"{outdir}: output folder {what} {path}; pick another -o")
        if not path.is_dir() and where == out:
            raise OnnxGradCamError(f"{outdir}: output folder is an input file; pick another -o")
        if not path.is_dir() and where.parent == out:
            raise OnnxGradCamError(f"{outdir}: output folder holds the input {path}; "
                                   "pick another -o")


def clear_previous_run(outdir: Path, overwrite: bool) -> None:
    """A folder holding a previous run's report.json is refused, or with ``overwrite`` the
    files that report lists (only those, and only directly in ``outdir``) are removed."""
    report = outdir / REPORT
    if not os.path.lexists(report):
        return
    if not overwrite:
        raise OnnxGradCamError(f"{outdir}: holds a previous run's {REPORT}; pass --overwrite "
                               "to replace its outputs, or pick another -o")
    try:
        previous = json.loads(report.read_text(encoding="utf-8"))
        listed = [*(e.get(k) for i in previous["images"] for e in i.get("explanations", [])
                    for k in _WRITTEN), *(i.get("grid") for i in previous["images"]),
                  previous.get("contact_sheet")]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise OnnxGradCamError(f"{report}: not a report of `onnx-gradcam run`, so --overwrite "
                               "cannot tell its files; pick another -o") from None
    for value in listed:
        if not isinstance(value, str):
            continue
        name = Path(value).name
        path = outdir / name
        if Path(name).suffix in (".png", ".npy") and (path.is_symlink() or path.is_file()):
            path.unlink()
    report.unlink()


class _Names:
    """Output names: one stem per image (unique in the run), whose files neither repeat a
    name of this run nor replace a file already in the folder (a symlink there is replaced,
    not followed), each within the file system's name limit."""

    def __init__(self, outdir: Path) -> None:
        self.outdir = outdir
        self.limit = name_max(outdir)
        self.stems: set[str] = set()
        self.files: set[str] = set()

    def file(self, base: str, suffix: str) -> str:
        return fit_name(base, suffix, self.limit)

    def stem(self, path: Path, files: Callable[[str], list[str]]) -> str:
        """A stem for ``path`` whose ``files(stem)`` are all free; they are taken."""
        stem, n = path.stem, 1
        while stem in self.stems or any(self._taken(f) for f in files(stem)):
            n += 1
            stem = f"{path.stem}_{n}"
        self.stems.add(stem)
        self.files.update(files(stem))
        return stem

    def _taken(self, name: str) -> bool:
        path = self.outdir / name
        return name in self.files or (os.path.lexists(path) and not path.is_symlink())


@dataclass
class Decoded:
    """One image that decoded: its path, model input, RGB original (decoded reduced where the
    file is large), the original's (H, W) and decode seconds."""

    path: Path
    x: np.ndarray
    rgb: np.ndarray
    seconds: float
    size: tuple[int, int]


def error_row(path: Path, exc: Exception) -> dict:
    """An ``errors`` entry: the path and one line that names it."""
    text = str(exc)
    return {"path": str(path), "error": text if text.startswith(str(path)) else f"{path}: {text}"}


def check_preprocessing(explainer: Explainer, pre: Preprocessing, max_pixels: int) -> None:
    """The input size must be positive, the model's own where its input is fixed, and within
    the pixel budget where it is not (checked before any image is decoded)."""
    assert pre.size is not None
    height, width = pre.size
    if height < 1 or width < 1:
        raise OnnxGradCamError(f"input size {height},{width} (--size): both sides must be at "
                               "least 1")
    shape = explainer.model.input_shape
    static = shape[2:4] if explainer.model.input_layout == "NCHW" else shape[1:3]
    if None not in static and pre.layout == explainer.model.input_layout:
        if tuple(static) != (height, width):
            raise OnnxGradCamError(
                f"input size {height},{width} (--size): the model's input "
                f"{explainer.model.input_name!r} is fixed at {static[0]},{static[1]}")
    elif height * width > max_pixels:
        raise OnnxGradCamError(f"input size {height},{width} (--size) is over the pixel budget "
                               f"of {max_pixels} (--max-pixels)")


def decoded_chunks(explainer: Explainer, paths: Sequence[Path], pre: Preprocessing,
                   batch_size: int, errors: list[dict],
                   progress: Callable[[int], None] | None = None,
                   max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[list[Decoded]]:
    """Decode (within ``max_pixels``) and preprocess ``paths`` in chunks of ``batch_size``; an
    image that fails, or whose input is not finite, goes to ``errors`` ({path, error}) and the
    chunk goes on without it (empty chunks are skipped)."""
    for first in range(0, len(paths), batch_size):
        chunk = paths[first:first + batch_size]
        decoded = []
        for path in chunk:
            t0 = time.perf_counter()
            try:
                batch, originals = explainer.prepare([path], pre, max_pixels)
                check_finite_input(batch)
                size = header_size(path) or originals[0].shape[:2]
                decoded.append(Decoded(path, batch[0], originals[0], time.perf_counter() - t0,
                                       (int(size[0]), int(size[1]))))
            except OnnxGradCamError as exc:
                errors.append(error_row(path, exc))
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
    check_preprocessing(lead, pre, options.max_pixels)
    fixed_target = None if options.target is None else labels.index(options.target)
    if fixed_target is not None:
        lead.check_targets(fixed_target, 1)  # fail early on an out-of-range target
    elif lead.num_classes and options.top_k > lead.num_classes:
        raise OnnxGradCamError(f"--top-k {options.top_k} is more than the model's "
                               f"{lead.num_classes} classes")
    options.outdir.mkdir(parents=True, exist_ok=True)
    clear_previous_run(options.outdir, options.overwrite)
    names = _Names(options.outdir)
    images, errors, rows = [], [], []
    started = time.perf_counter()
    report = {
        "model": lead.model.source,
        "demo_model": options.demo_model,
        "methods": [ex.method.name for ex in explainers],
        "layers": [layer.name for layer in lead.layers],
        "score": {"tensor": lead.score, "kind": lead.score_kind},
        "provider": lead.provider,
        "preprocessing": {"size": list(pre.size or ()), "layout": pre.layout,
                          "color": pre.color, "scale": pre.scale, "mean": list(pre.mean),
                          "std": list(pre.std)},
        "images": images,
        "errors": errors,
    }
    try:
        for decoded in decoded_chunks(lead, paths, pre, options.batch_size, errors, progress,
                                      options.max_pixels):
            for done, grids in explain_finite(
                    lambda part: _explain_chunk(explainers, part, options, labels,
                                                fixed_target, names, errors), decoded, errors):
                images += done
                rows += grids
    except BaseException as exc:  # Ctrl-C, or a failure the run cannot go on from
        # list what was written, so a later --overwrite can remove it
        report["interrupted"] = f"{type(exc).__name__}: {exc}".strip(": ")
        write_json(options.outdir / REPORT, report)
        raise
    report["seconds"] = round(time.perf_counter() - started, 4)
    if rows:
        sheet = options.outdir / "contact_sheet.png"
        save_image(sheet, contact_sheet(rows))
        report["contact_sheet"] = str(sheet)
    write_json(options.outdir / REPORT, report)
    return report


def explain_finite(work: Callable[[list[Decoded]], T], decoded: list[Decoded],
                   errors: list[dict]) -> list[T]:
    """``[work(decoded)]``; where that raises :class:`NonFiniteError` (a NaN weight, an input
    that overflows), ``work([image])`` for each image alone, those that fail again going to
    ``errors``: one image's non-finite scores never cost the others theirs."""
    try:
        return [work(decoded)]
    except NonFiniteError:
        pass
    out = []
    for item in decoded:
        try:
            out.append(work([item]))
        except NonFiniteError as exc:
            errors.append(error_row(item.path, exc))
    return out


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


def _explain_chunk(explainers: list[Explainer], decoded: list[Decoded], options: RunOptions,
                   labels: Labels, fixed_target: int | None, names: _Names, errors: list[dict]
                   ) -> tuple[list[dict], list[np.ndarray]]:
    """Explain one chunk with every method, then write each image's pictures; an image whose
    files cannot be written (a full disk, a read-only folder) is an error row."""
    batch = np.stack([d.x for d in decoded])
    lead = explainers[0]
    k = 1 if fixed_target is not None else max(1, min(options.top_k, lead.num_classes or 1000))
    per_method, seconds = [], {}
    for ex in explainers:
        t0 = time.perf_counter()
        per_method.append(_cams(ex, batch, k, fixed_target))
        seconds[ex.method.name] = (time.perf_counter() - t0) / len(decoded)
    knife = _knife_edges(explainers, per_method, batch) if options.knife_edges else []
    scores = per_method[0][2]
    probs = as_probabilities(scores, lead.score_kind)
    order = np.argsort(-scores, axis=1)
    out, grids = [], []
    for i, item in enumerate(decoded):
        bases = [(ex, cams, rank, int(targets[i, rank]),
                  knife[rank].as_dict(i) if ex.method.needs_gradient and knife else None)
                 for ex, (cams, targets, _) in zip(explainers, per_method)
                 for rank in range(cams.shape[1])]

        def files(stem: str, bases=bases) -> list[str]:
            suffixes = (".png", ".npy") if options.save_npy else (".png",)
            out = [names.file(_base(stem, ex, labels, t), s)
                   for ex, _, _, t, _ in bases for s in suffixes]
            return out + ([names.file(f"{stem}_grid", ".png")] if options.grid else [])

        stem = names.stem(item.path, files)
        written: list[Path] = []
        try:
            explained, grid, row = _write_image(item, stem, bases, i, scores[i], options,
                                                labels, names, written)
        except BaseException as exc:
            for path in written:  # no image's files stay behind half-written and unlisted
                path.unlink(missing_ok=True)
            if not isinstance(exc, OSError):
                raise
            errors.append(error_row(item.path, OnnxGradCamError(
                f"cannot write its outputs: {exc.strerror or exc}")))
            continue
        top = [{"class": int(c), "label": labels.name(int(c)), "score": float(scores[i, c]),
                "probability": float(probs[i, c])} for c in order[i, :max(k, 5)]]
        out.append({"path": str(item.path), "width": item.size[1], "height": item.size[0],
                    "top": top, "explanations": explained, **({"grid": grid} if grid else {}),
                    "timings_ms": {"decode": round(item.seconds * 1e3, 3),
                                   **{f"explain_{m}": round(t * 1e3, 3)
                                      for m, t in seconds.items()}}})
        if row is not None:
            grids.append(row)
    return out, grids


def _base(stem: str, explainer: Explainer, labels: Labels, target: int) -> str:
    """An overlay's (and its .npy's) name before the suffix and any shortening."""
    return f"{stem}_{explainer.method.name}_{labels.slug(target)}"


def _write_image(item: Decoded, stem: str, bases: list, i: int, scores: np.ndarray,
                 options: RunOptions, labels: Labels, names: _Names, written: list[Path]
                 ) -> tuple[list[dict], str | None, np.ndarray | None]:
    """Write one image's overlays (drawn on the original scaled to a bounded size), .npy cams
    and grid: (explanations, grid path, grid picture); ``written`` collects each file as it
    lands."""
    rgb = bounded(item.rgb)
    explained, panels = [], []
    for ex, cams, rank, target, knife_edges in bases:
        base = _base(stem, ex, labels, target)
        picture = overlay(rgb, cams[i, rank], options.alpha, options.colormap)
        path = options.outdir / names.file(base, ".png")
        save_image(path, picture)
        written.append(path)
        entry = {"method": ex.method.name, "target": target, "label": labels.name(target),
                 "score": float(scores[target]), "overlay": str(path)}
        if knife_edges is not None:
            entry["knife_edges"] = knife_edges
        if options.save_npy:
            npy = options.outdir / names.file(base, ".npy")
            save_array(npy, cams[i, rank])
            written.append(npy)
            entry["npy"] = str(npy)
        explained.append(entry)
        panels.append((f"{ex.method.name}: {labels.name(target)}", picture))
    if not options.grid:
        return explained, None, None
    row = grid_row(rgb, item.path.name, panels)
    path = options.outdir / names.file(f"{stem}_grid", ".png")
    save_image(path, row)
    written.append(path)
    return explained, str(path), row
