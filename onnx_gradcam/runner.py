"""The ``run`` job: images or folders → overlays, optional .npy cams and report.json.

A bad image never stops the batch: it is listed under ``errors`` in the report.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnx_gradcam.errors import OnnxGradCamError
from onnx_gradcam.explainer import Explainer
from onnx_gradcam.images import atomic_write, list_images, overlay, save_array, save_image
from onnx_gradcam.labels import Labels
from onnx_gradcam.metadata import Preprocessing


@dataclass(frozen=True)
class RunOptions:
    outdir: Path
    target: int | str | None = None  # class index or label; None = top-k classes
    top_k: int = 1
    save_npy: bool = False
    alpha: float = 0.5
    colormap: str = "jet"
    batch_size: int = 16


def check_outdir(outdir: Path, inputs: Sequence[Path]) -> None:
    """The output folder may not be a file, nor an input, nor inside an input file's name."""
    if outdir.exists() and not outdir.is_dir():
        raise OnnxGradCamError(f"{outdir}: output folder is an existing file; pick another -o")
    resolved = outdir.resolve()
    for path in inputs:
        if path.is_file() and path.resolve() == resolved:
            raise OnnxGradCamError(f"{outdir}: output folder is an input file; pick another -o")


def _probabilities(scores: np.ndarray, kind: str) -> np.ndarray:
    if kind != "logits":
        return scores
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


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


def run_job(explainer: Explainer, inputs: Sequence[Path], options: RunOptions, labels: Labels,
            preprocessing: Preprocessing | None = None,
            progress: Callable[[int], None] | None = None) -> dict:
    """Explain every image under ``inputs``; write pictures and report.json; return the report."""
    check_outdir(options.outdir, inputs)
    paths = list_images(list(inputs))
    pre = explainer.preprocessing(preprocessing)
    fixed_target = None if options.target is None else labels.index(options.target)
    if fixed_target is not None:
        explainer.check_targets(fixed_target, 1)  # fail early on an out-of-range target
    options.outdir.mkdir(parents=True, exist_ok=True)
    names = _Names()
    images, errors = [], []
    started = time.perf_counter()
    for first in range(0, len(paths), options.batch_size):
        chunk = paths[first:first + options.batch_size]
        decoded = []
        for path in chunk:
            t0 = time.perf_counter()
            try:
                batch, originals = explainer.prepare([path], pre)
                decoded.append((path, batch[0], originals[0], time.perf_counter() - t0))
            except OnnxGradCamError as exc:
                errors.append({"path": str(path), "error": str(exc)})
        if decoded:
            images += _explain_chunk(explainer, decoded, options, labels, fixed_target, names)
        if progress:
            progress(len(chunk))
    report = {
        "model": explainer.model.source,
        "method": explainer.method.name,
        "layers": [layer.name for layer in explainer.layers],
        "score": {"tensor": explainer.score, "kind": explainer.score_kind},
        "provider": explainer.provider,
        "preprocessing": {"size": list(pre.size or ()), "layout": pre.layout,
                          "color": pre.color, "scale": pre.scale, "mean": list(pre.mean),
                          "std": list(pre.std)},
        "images": images,
        "errors": errors,
        "seconds": round(time.perf_counter() - started, 4),
    }
    atomic_write(options.outdir / "report.json", json.dumps(report, indent=2).encode())
    return report


def _explain_chunk(explainer: Explainer, decoded: list, options: RunOptions, labels: Labels,
                   fixed_target: int | None, names: _Names) -> list[dict]:
    batch = np.stack([d[1] for d in decoded])
    t0 = time.perf_counter()
    k = 1 if fixed_target is not None else max(1, options.top_k)
    if k == 1:
        first = explainer.explain(batch, fixed_target)
        cams, targets = first.cams[:, None], first.targets[:, None]
    else:  # k classes per image, one backbone pass
        first = explainer.explain_many(batch, top_k=min(k, explainer.num_classes or k))
        cams, targets = first.cams, first.targets
    k = cams.shape[1]
    probs = _probabilities(first.scores, explainer.score_kind)
    order = np.argsort(-first.scores, axis=1)
    per_image = (time.perf_counter() - t0) / len(decoded)
    out = []
    for i, (path, _, rgb, decode_s) in enumerate(decoded):
        stem = names(path)
        top = [{"class": int(c), "label": labels.name(int(c)),
                "score": float(first.scores[i, c]), "probability": float(probs[i, c])}
               for c in order[i, :max(k, 5)]]
        explained = []
        for rank in range(k):
            target = int(targets[i, rank])
            tag = labels.slug(target)
            picture = options.outdir / f"{stem}_{explainer.method.name}_{tag}.png"
            save_image(picture, overlay(rgb, cams[i, rank], options.alpha, options.colormap))
            entry = {"target": target, "label": labels.name(target),
                     "score": float(first.scores[i, target]), "overlay": str(picture)}
            if options.save_npy:
                array = options.outdir / f"{stem}_{explainer.method.name}_{tag}.npy"
                save_array(array, cams[i, rank])
                entry["npy"] = str(array)
            explained.append(entry)
        out.append({"path": str(path), "width": int(rgb.shape[1]), "height": int(rgb.shape[0]),
                    "top": top, "explanations": explained,
                    "timings_ms": {"decode": round(decode_s * 1e3, 3),
                                   "explain": round(per_image * 1e3, 3)}})
    return out
