"""The ``run`` job: images or folders → rows (``OUT/results``, Parquet), overlays, optional
.npy cams and report.json.

A bad image never stops the batch: it is an error row, listed under ``errors`` in the report.
Inputs are never outputs, no file the run did not write is overwritten, and the rows list every
file the run wrote (so ``--overwrite`` knows what a later run may remove, and ``--resume`` which
images are done).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from onnx_gradcam.errors import NonFiniteError, OnnxGradCamError
from onnx_gradcam.explainer import Explainer, check_finite_input
from onnx_gradcam.grid import contact_sheet, grid_row
from onnx_gradcam.images import (
    DEFAULT_MAX_PIXELS,
    bounded,
    decode_image,
    fit_name,
    list_images,
    name_max,
    overlay,
    preprocess,
    save_array,
    save_image,
    strict_json,
    write_json,
)
from onnx_gradcam.kinks import WARN_SHIFT, KnifeEdges
from onnx_gradcam.labels import Labels
from onnx_gradcam.metadata import Preprocessing
from onnx_gradcam.metrics import as_probabilities
from onnx_gradcam.results import (
    COLUMNS,
    RESULTS,
    Ledger,
    cam_bytes,
    has_rows,
    read_rows,
    report_entries,
)

if TYPE_CHECKING:
    from onnx_gradcam.target_request import TargetRequest


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
    format: str = "files"  # files: overlay pictures; parquet: the maps in the rows instead
    resume: bool = False  # skip the images a previous run in ``outdir`` completed
    image_column: str = "image"  # a Parquet input's column of encoded images
    knife_edges: bool = True  # count near-kink decisions per map (see Explainer.knife_edges)
    request: TargetRequest | None = None  # --segment / --similar-to: a target object per image


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


def clear_previous_run(outdir: Path, overwrite: bool, resume: bool = False) -> None:
    """A folder holding a previous run (its report.json or rows) is refused; with ``resume``
    it is continued; with ``overwrite`` the files its rows and report list (only those, and
    only directly in ``outdir``) are removed."""
    report = outdir / REPORT
    if resume or not (os.path.lexists(report) or has_rows(outdir)):
        return
    if not overwrite:
        raise OnnxGradCamError(f"{outdir}: holds a previous run; pass --resume to finish it, "
                               "--overwrite to replace its outputs, or pick another -o")
    listed = [row[c] for row in read_rows(outdir, ["overlay", "npy", "grid"])
              for c in ("overlay", "npy", "grid")]
    if os.path.lexists(report):
        try:
            previous = json.loads(report.read_text(encoding="utf-8"))
            listed += [*(e.get(k) for i in previous["images"]
                         for e in i.get("explanations", []) for k in _WRITTEN),
                       *(i.get("grid") for i in previous["images"]),
                       previous.get("contact_sheet")]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise OnnxGradCamError(f"{report}: not a report of `onnx-gradcam run`, so "
                                   "--overwrite cannot tell its files; pick another -o") from None
    for value in listed:
        if not isinstance(value, str):
            continue
        name = Path(value).name
        path = outdir / name
        if Path(name).suffix in (".png", ".npy") and (path.is_symlink() or path.is_file()):
            path.unlink()
    remove_unlisted(outdir)
    Ledger(outdir).remove()
    report.unlink(missing_ok=True)


#: What a resumed run must share with the run it continues (the engine and provider may change).
_SAME_RUN = ("model", "methods", "layers", "score", "preprocessing", "format", "targets",
             "save_npy")


def check_same_run(outdir: Path, header: dict) -> None:
    """``--resume`` continues a run only with its options, as far as its report.json tells
    (a killed run may have written none)."""
    try:
        previous = json.loads((outdir / REPORT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    for key in _SAME_RUN:
        if key in previous and json.loads(strict_json(header[key])) != previous[key]:
            raise OnnxGradCamError(
                f"{outdir}: --resume with other options than the run it continues ({key}: "
                f"{previous[key]} then, {header[key]} now); pass the same options, or "
                "--overwrite")


def remove_unlisted(outdir: Path) -> None:
    """Remove the files a killed run was writing: named in the ledger's pending list but in
    no part. Only regular files go (the run writes no symlinks: one there is not its own)."""
    listed = {Path(row[c]).name for row in read_rows(outdir, ["overlay", "npy", "grid"])
              for c in ("overlay", "npy", "grid") if row[c]}
    for name in set(Ledger(outdir).pending_names()) - listed:
        path = outdir / Path(name).name
        if path.is_file() and not path.is_symlink():
            path.unlink()


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
    target: Any = None  # its og.targets object (``RunOptions.request``), else classes


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
    chunk goes on without it (empty chunks are skipped). The next chunk is decoded in a
    thread while the caller works on this one (OpenCV and ONNX Runtime release the GIL);
    ``errors`` and ``progress`` are updated in the caller's thread."""
    def chunks() -> Iterator[tuple[list[Decoded], list[dict], int]]:
        for first in range(0, len(paths), batch_size):
            chunk = paths[first:first + batch_size]
            decoded, failed = [], []
            for path in chunk:
                try:
                    decoded.append(decode_one(path, pre, max_pixels))
                except OnnxGradCamError as exc:
                    failed.append(error_row(path, exc))
            yield decoded, failed, len(chunk)

    for decoded, failed, count in ahead(chunks()):
        errors += failed
        if decoded:
            yield decoded
        if progress:
            progress(count)


def ahead(items: Iterator[T]) -> Iterator[T]:
    """``items``, each computed in a thread while the caller works on the one before."""
    done = object()
    with ThreadPoolExecutor(1, thread_name_prefix="onnx-gradcam-decode") as pool:
        future = pool.submit(next, items, done)
        while (item := future.result()) is not done:
            future = pool.submit(next, items, done)
            yield item


def decode_one(path: Path, pre: Preprocessing, max_pixels: int) -> Decoded:
    """Decode (within ``max_pixels``) and preprocess one image with ``pre`` (resolved: its
    size set); :class:`OnnxGradCamError` where it fails or its input is not finite."""
    assert pre.size is not None
    t0 = time.perf_counter()
    rgb, size = decode_image(path, max_pixels, pre.size)
    x = preprocess(rgb, pre, pre.size)
    check_finite_input(x[None])
    return Decoded(path, x, rgb, time.perf_counter() - t0, (int(size[0]), int(size[1])))


def run_job(explainers: Explainer | Sequence[Explainer], inputs: Sequence[Path],
            options: RunOptions, labels: Labels, preprocessing: Preprocessing | None = None,
            progress: Callable[[int], None] | None = None,
            engine: Callable[..., None] | None = None) -> dict:
    """Explain every image under ``inputs`` with each explainer (one per method); write the
    rows (``OUT/results``), the pictures (and with ``options.grid`` one method grid per image
    plus a contact sheet) and report.json; return the report. ``engine(paths, pre, k,
    fixed_target, sink, progress)`` explains elsewhere (Ray) and hands results to ``sink``."""
    explainers = [explainers] if isinstance(explainers, Explainer) else list(explainers)
    lead = explainers[0]
    paths = list_images(list(inputs), options.image_column)
    check_outdir(options.outdir, [*inputs, *paths])  # listed files too (a .txt, a pattern)
    pre = lead.preprocessing(preprocessing)
    check_preprocessing(lead, pre, options.max_pixels)
    fixed_target = None if options.target is None else labels.index(options.target)
    if options.request is not None:
        if fixed_target is not None or options.top_k > 1:
            raise OnnxGradCamError("--segment and --similar-to choose the target: drop "
                                   "--target and --top-k")
    else:
        lead.class_graph  # noqa: B018 - refused before any output where not class scores
        if fixed_target is not None:
            lead.check_targets(fixed_target, 1)  # fail early on an out-of-range target
        elif lead.num_classes and options.top_k > lead.num_classes:
            raise OnnxGradCamError(f"--top-k {options.top_k} is more than the model's "
                                   f"{lead.num_classes} classes")
    k = 1 if fixed_target is not None else max(1, min(options.top_k, lead.num_classes or 1000))
    header = {
        "model": lead.model.source,
        "demo_model": options.demo_model,
        "methods": [ex.method.name for ex in explainers],
        "layers": [layer.name for layer in lead.layers],
        "score": {"tensor": lead.score, "kind": lead.score_kind},
        "provider": getattr(engine, "provider", lead.provider),
        "preprocessing": {"size": list(pre.size or ()), "layout": pre.layout,
                          "color": pre.color, "scale": pre.scale, "mean": list(pre.mean),
                          "std": list(pre.std)},
        "format": options.format,
        "targets": (options.request.header() if options.request else
                    {"top_k": k, "target": fixed_target}),
        "save_npy": options.save_npy,
        "engine": getattr(engine, "name", "local"),
    }
    options.outdir.mkdir(parents=True, exist_ok=True)
    clear_previous_run(options.outdir, options.overwrite, options.resume)
    if options.resume:
        check_same_run(options.outdir, header)
    sink = Sink(explainers, options, labels)
    todo = [p for p in paths if str(p) not in sink.done]
    if progress and len(todo) < len(paths):
        progress(len(paths) - len(todo))
    started = time.perf_counter()
    try:
        if engine is not None:
            engine(todo, pre, k, fixed_target, sink, progress)
        else:
            for decoded in decoded_chunks(lead, todo, pre, options.batch_size, sink.errors,
                                          progress, options.max_pixels):
                for done in explain_chunk(explainers, decoded, k, fixed_target, labels,
                                          options.knife_edges, options.request, sink.errors):
                    sink.write(done)
        sink.write([])  # the error rows of a last chunk with no good image
    except BaseException as exc:  # Ctrl-C, or a failure the run cannot go on from
        sink.abort()  # list what was written, so --resume and --overwrite know it
        report = sink.report(header)
        report["interrupted"] = f"{type(exc).__name__}: {exc}".strip(": ")
        write_json(options.outdir / REPORT, report)
        raise
    report = sink.report(header)
    report["seconds"] = round(time.perf_counter() - started, 4)
    report["explained_this_run"] = sink.explained
    if sink.grids:
        sheet = options.outdir / "contact_sheet.png"
        save_image(sheet, contact_sheet(sink.grids))
        report["contact_sheet"] = str(sheet)
    write_json(options.outdir / REPORT, report)
    return report


def explain_chunk(explainers: list[Explainer], decoded: list[Decoded], k: int,
                  fixed_target: int | None, labels: Labels, knife_edges: bool,
                  request: TargetRequest | None, errors: list[dict]) -> list[list[Explained]]:
    """One chunk explained by :func:`explain_images` (through :func:`explain_finite`), each
    image given its target object of ``request`` first; an image whose target had nothing to
    explain (a predicted mask with no pixel of the class, label −1) goes to ``errors``."""
    if request is not None:
        for item, target in zip(decoded, request.targets(len(decoded))):
            item.target = target
    done = explain_finite(lambda part: explain_images(explainers, part, k, fixed_target, labels,
                                                      knife_edges, request), decoded, errors)
    if request is None or not request.predicted:
        return done
    kept: list[list[Explained]] = [[] for _ in done]
    for part, out in zip(done, kept):
        for e in part:
            if all(m[2] >= 0 for m in e.maps):
                out.append(e)
            else:
                errors.append(error_row(e.item.path, OnnxGradCamError(
                    f"the model assigns no pixel to class {request.category}, so --segment "
                    "has nothing to explain; pass --mask FILE")))
    return kept


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


@dataclass
class Explained:
    """One image's results, whichever engine made them: per (method, rank) its map."""

    item: Decoded
    maps: list[tuple[str, int, int, float, float, np.ndarray, dict | None]]  # method, rank,
    #              target, score, probability, cam, knife edges (gradient methods, if counted)
    top: list[dict]
    explain_ms: dict[str, float]
    request: TargetRequest | None = None  # the target kind, where not classes


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


def explain_images(explainers: list[Explainer], decoded: list[Decoded], k: int,
                   fixed_target: int | None, labels: Labels, knife_edges: bool = False,
                   request: TargetRequest | None = None) -> list[Explained]:
    """Explain one chunk with every method (``k`` targets each, or ``fixed_target``, or each
    image's target object of ``request``), with the knife edges of each gradient map when
    ``knife_edges`` (classes only)."""
    batch = np.stack([d.x for d in decoded])
    if request is not None:
        return _explain_objects(explainers, decoded, batch, request)
    lead = explainers[0]
    per_method, seconds = [], {}
    for ex in explainers:
        t0 = time.perf_counter()
        per_method.append(_cams(ex, batch, k, fixed_target))
        seconds[ex.method.name] = round((time.perf_counter() - t0) / len(decoded) * 1e3, 3)
    knife = _knife_edges(explainers, per_method, batch) if knife_edges else []
    scores = per_method[0][2]
    probs = as_probabilities(scores, lead.score_kind)
    order = np.argsort(-scores, axis=1)
    out = []
    for i, item in enumerate(decoded):
        maps = []
        for ex, (cams, targets, _) in zip(explainers, per_method):
            for rank in range(cams.shape[1]):
                t = int(targets[i, rank])
                edges = knife[rank].as_dict(i) if ex.method.needs_gradient and knife else None
                maps.append((ex.method.name, rank, t, float(scores[i, t]), float(probs[i, t]),
                             cams[i, rank], edges))
        top = [{"class": int(c), "label": labels.name(int(c)), "score": float(scores[i, c]),
                "probability": float(probs[i, c])} for c in order[i, :max(k, 5)]]
        out.append(Explained(item, maps, top, seconds))
    return out


def _explain_objects(explainers: list[Explainer], decoded: list[Decoded], batch: np.ndarray,
                     request: TargetRequest) -> list[Explained]:
    """Explain one chunk for each image's target object: the row's score is the target's own
    (no probability, no top classes)."""
    targets = [d.target for d in decoded]
    results, seconds = [], {}
    for ex in explainers:
        t0 = time.perf_counter()
        results.append(ex.explain(batch, targets))
        seconds[ex.method.name] = round((time.perf_counter() - t0) / len(decoded) * 1e3, 3)
    return [Explained(item, [(res.method, 0, int(res.targets[i]), float(res.scores[i, 0]),
                              None, res.cams[i], None) for res in results], [], seconds, request)
            for i, item in enumerate(decoded)]


class Sink:
    """Writes results as they come: each image's files (overlays unless ``format`` is
    parquet, .npy cams, grid), then the chunk's rows as one atomic part (see
    :mod:`onnx_gradcam.results`). ``errors`` collects error rows until the next part."""

    def __init__(self, explainers: list[Explainer], options: RunOptions, labels: Labels) -> None:
        self.options, self.labels = options, labels
        self.layer = ",".join(layer.name for layer in explainers[0].layers)
        self.names = _Names(options.outdir)
        self.ledger = Ledger(options.outdir)
        self.errors: list[dict] = []
        self.grids: list[np.ndarray] = []
        self.explained = 0
        self._unlisted: list[Path] = []  # files written for rows not yet in a part
        self._part: Path | None = None  # the part that lists them once it lands
        self.done: set[str] = set()
        remove_unlisted(options.outdir)
        for row in read_rows(options.outdir, ["path", "stem", "overlay", "npy", "grid"]):
            self.done.add(row["path"])  # a listed image is complete, error rows too
            if row["stem"]:
                self.names.stems.add(row["stem"])
            self.names.files.update(Path(row[c]).name for c in ("overlay", "npy", "grid")
                                    if row[c])

    def write(self, explained: list[Explained]) -> None:
        rows: list[dict] = []
        stems = [self.names.stem(d.item.path, lambda stem, d=d: self._files(d, stem))
                 for d in explained]
        if stems:  # should the process die, --resume and --overwrite remove these
            self.ledger.pending([f for d, stem in zip(explained, stems)
                                 for f in self._files(d, stem)])
        for done, stem in zip(explained, stems):
            written: list[Path] = []
            try:
                rows += self._image(done, stem, written)
            except OSError as exc:  # a full disk, a read-only folder: this image's error row
                for path in written:
                    path.unlink(missing_ok=True)
                self.errors.append(error_row(done.item.path, OnnxGradCamError(
                    f"cannot write its outputs: {exc.strerror or exc}")))
                continue
            finally:
                self._unlisted += written
            self.explained += 1
        rows += [{"path": e["path"], "error": e["error"]} for e in self.errors]
        self._part = self.ledger.upcoming()
        self.ledger.write(rows)
        self.errors.clear()
        self._unlisted.clear()
        self._part = None

    def abort(self) -> None:
        """After an interruption: the files of rows not yet in a part are removed (a part
        that did land lists them), and pending error rows are written."""
        if self._part and self._part.exists():
            self.errors.clear()  # the part that landed holds them
        else:
            for path in self._unlisted:
                path.unlink(missing_ok=True)
        self._unlisted.clear()
        if self.errors:
            self.ledger.write([{"path": e["path"], "error": e["error"]} for e in self.errors])
            self.errors.clear()

    def report(self, header: dict) -> dict:
        columns = [c for c, _ in COLUMNS if c != "cam"]
        images, errors = report_entries(read_rows(self.options.outdir, columns))
        folder = self.options.outdir / RESULTS
        return {**header, **({"results": str(folder)} if folder.is_dir() else {}),
                "images": images, "errors": errors}

    def _files(self, done: Explained, stem: str) -> list[str]:
        """The names of the files one image's results take under ``stem``."""
        options, names = self.options, self.names
        suffixes = (((".png",) if options.format == "files" else ())
                    + ((".npy",) if options.save_npy else ()))
        out = [names.file(_base(stem, m, self.labels, t, done.request), s)
               for m, _, t, _, _, _, _ in done.maps for s in suffixes]
        return out + ([names.file(f"{stem}_grid", ".png")] if options.grid else [])

    def _image(self, done: Explained, stem: str, written: list[Path]) -> list[dict]:
        options, labels, names = self.options, self.labels, self.names
        pictures = options.format == "files"
        item = done.item
        rgb = bounded(item.rgb) if pictures or options.grid else None
        rows, panels = [], []
        for method, rank, target, score, prob, cam, edges in done.maps:
            base = _base(stem, method, labels, target, done.request)
            label = done.request.label(labels) if done.request else labels.name(target)
            row = {"path": str(item.path), "stem": stem, "width": item.size[1],
                   "height": item.size[0], "method": method, "layer": self.layer,
                   "rank": rank, "target": target, "label": label,
                   "target_kind": done.request.kind if done.request else "class",
                   "score": score, "probability": prob, "top": done.top,
                   "decode_ms": round(item.seconds * 1e3, 3),
                   "explain_ms": done.explain_ms[method]}
            if edges is not None:
                row.update(knife_count=edges["count"], knife_shift=edges["shift"],
                           knife_ops=",".join(edges["ops"]))
            if not pictures:
                row.update(cam=cam_bytes(cam), cam_height=cam.shape[0], cam_width=cam.shape[1])
            if rgb is not None:
                picture = overlay(rgb, cam, options.alpha, options.colormap)
                panels.append((f"{method}: {label}", picture))
            if pictures:
                path = options.outdir / names.file(base, ".png")
                save_image(path, picture)
                written.append(path)
                row["overlay"] = str(path)
            if options.save_npy:
                npy = options.outdir / names.file(base, ".npy")
                save_array(npy, cam)
                written.append(npy)
                row["npy"] = str(npy)
            rows.append(row)
        if options.grid:
            picture = grid_row(rgb, item.path.name, panels)
            path = options.outdir / names.file(f"{stem}_grid", ".png")
            save_image(path, picture)
            written.append(path)
            self.grids.append(picture)
            for row in rows:
                row["grid"] = str(path)
        return rows


def _base(stem: str, method: str, labels: Labels, target: int,
          request: TargetRequest | None = None) -> str:
    """An overlay's (and its .npy's) name before the suffix and any shortening."""
    if request is not None and request.kind == "similarity":
        return f"{stem}_{method}_similarity"
    what = labels.slug(target)
    return f"{stem}_{method}_{'segment-' + what if request is not None else what}"
