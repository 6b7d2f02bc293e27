"""``run --engine ray``: the same job on Ray Data, on this machine or a cluster.

Paths → decode and preprocess in Ray tasks → explain in a pool of actors, each holding one
warm :class:`Explainer` per method (ONNX Runtime threads split so the actors do not
oversubscribe the cores) → results stream back to the driver's :class:`~onnx_gradcam.runner.Sink`,
which writes the rows and files exactly as the local engine does. Ray is imported only here,
so the local engine needs no Ray installed.

Records cross Ray as pickled :class:`Decoded`/:class:`Explained` objects (bytes columns): the
same code runs on both sides, and an image that fails is a record with an error, never a
failed task.
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from onnx_gradcam.errors import OnnxGradCamError
from onnx_gradcam.images import bounded
from onnx_gradcam.labels import Labels
from onnx_gradcam.metadata import Preprocessing
from onnx_gradcam.runner import (
    RunOptions,
    decode_one,
    error_row,
    explain_chunk,
)
from onnx_gradcam.runtime import PROVIDER_NAMES

if TYPE_CHECKING:
    from onnx_gradcam.target_request import TargetRequest


def _ray():
    try:
        import ray
        import ray.data
    except ImportError:
        raise OnnxGradCamError("--engine ray needs Ray: pip install 'onnx-gradcam[ray]'") \
            from None
    return ray


def _decode(batch: dict, pre: Preprocessing, max_pixels: int, pictures: bool) -> dict:
    """A Ray task: each path → a pickled :class:`Decoded`, or an error row. Its original
    travels (scaled to the overlay's bounded size) only when the driver draws pictures."""
    out = []
    for text in batch["path"]:
        path = Path(str(text))
        try:
            item = decode_one(path, pre, max_pixels)
            record = dataclasses.replace(item, rgb=bounded(item.rgb) if pictures else None)
        except OnnxGradCamError as exc:
            record = error_row(path, exc)
        out.append(pickle.dumps(record))
    return {"record": np.array(out, dtype=object)}


class _Explain:
    """A Ray actor: one explainer per method, built once, explaining every batch it gets."""

    def __init__(self, model: Path, kwargs: dict, methods: list[str], labels: Labels, k: int,
                 fixed_target: int | None, threads: int, knife_edges: bool = False,
                 request: TargetRequest | None = None) -> None:
        from onnx_gradcam.explainer import Explainer

        self.explainers = [Explainer(model, method=m, threads=threads, **kwargs)
                           for m in methods]
        self.labels, self.k, self.fixed_target = labels, k, fixed_target
        self.knife_edges, self.request = knife_edges, request

    def __call__(self, batch: dict) -> dict:
        records = [pickle.loads(r) for r in batch["record"]]
        errors = [r for r in records if isinstance(r, dict)]
        decoded = [r for r in records if not isinstance(r, dict)]
        results = []
        if decoded:
            for done in explain_chunk(self.explainers, decoded, self.k, self.fixed_target,
                                      self.labels, self.knife_edges, self.request, errors):
                results += [dataclasses.replace(d, item=dataclasses.replace(d.item, x=None))
                            for d in done]
        out = [pickle.dumps(r) for r in [*results, *errors]]
        return {"record": np.array(out, dtype=object)}


class _Evaluate:
    """A Ray actor for ``evaluate``: scores each batch; one record per batch, (per-method
    values, errors, mask problems, images)."""

    def __init__(self, model: Path, kwargs: dict, methods: list[str], masks: Path | None,
                 max_pixels: int, steps: int, channel_axis: int, threads: int) -> None:
        from onnx_gradcam.explainer import Explainer

        self.explainers = [Explainer(model, method=m, threads=threads, **kwargs)
                           for m in methods]
        self.masks, self.max_pixels = masks, max_pixels
        self.steps, self.channel_axis = steps, channel_axis

    def __call__(self, batch: dict) -> dict:
        from onnx_gradcam.evaluate import score_batch

        records = [pickle.loads(r) for r in batch["record"]]
        errors = [r for r in records if isinstance(r, dict)]
        decoded = [r for r in records if not isinstance(r, dict)]
        problems: list[dict] = []
        parts = score_batch(self.explainers, decoded, self.masks, self.max_pixels,
                            self.steps, self.channel_axis, errors, problems) if decoded else []
        record = pickle.dumps((parts, errors, problems, len(records)))
        return {"record": np.array([record], dtype=object)}


def evaluate_engine(model: Path, kwargs: dict, methods: list[str], batch_size: int,
                    max_pixels: int, address: str = "local", workers: int | None = None,
                    gpus: float = 0.0):
    """``engine`` for :func:`onnx_gradcam.evaluate.evaluate`: scores on Ray."""
    _ray()
    worker_kwargs(kwargs, gpus)

    def engine(paths, pre, steps, channel_axis, masks):
        actor = dict(model=Path(model).resolve(), kwargs=kwargs, methods=methods,
                     masks=masks.resolve() if masks else None, max_pixels=max_pixels,
                     steps=steps, channel_axis=channel_axis)
        for records in ray_records(paths, pre, max_pixels, batch_size, _Evaluate, actor,
                                   address, workers, gpus):
            yield from records

    return engine


class RayEngine:
    """``engine`` for :func:`onnx_gradcam.runner.run_job`: explains on Ray."""

    name = "ray"

    def __init__(self, model: Path, kwargs: dict, methods: list[str], labels: Labels,
                 options: RunOptions, address: str = "local", workers: int | None = None,
                 gpus_per_worker: float = 0.0) -> None:
        _ray()  # refuse before any work when Ray is missing, or the providers contradict
        providers = worker_kwargs(kwargs, gpus_per_worker)["providers"]  # the GPUs
        #: what the actors run on, for the report (the command's own explainer runs nothing)
        self.provider = PROVIDER_NAMES.get(providers, str(providers))
        self.model, self.kwargs, self.methods, self.labels = model, kwargs, methods, labels
        self.options, self.address = options, address
        self.workers, self.gpus = workers, gpus_per_worker

    def __call__(self, paths: list[Path], pre: Preprocessing, k: int, fixed_target: int | None,
                 sink, progress) -> None:
        actor = dict(model=Path(self.model).resolve(), kwargs=self.kwargs, methods=self.methods,
                     labels=self.labels, k=k, fixed_target=fixed_target,
                     knife_edges=self.options.knife_edges, request=self.options.request)
        pictures = self.options.format == "files" or self.options.grid
        for records in ray_records(paths, pre, self.options.max_pixels,
                                   self.options.batch_size, _Explain, actor, self.address,
                                   self.workers, self.gpus, pictures):
            sink.errors += [r for r in records if isinstance(r, dict)]
            sink.write([r for r in records if not isinstance(r, dict)])
            if progress:
                progress(len(records))


def worker_kwargs(kwargs: dict, gpus: float) -> dict:
    """The :class:`Explainer` arguments of an actor that reserves ``gpus`` GPUs: holding a GPU
    it runs ONNX Runtime on CUDA (``auto`` becomes ``cuda``, so a GPU that fails to start is
    an error, not a silent CPU run); holding none, on the CPU (``auto`` becomes ``cpu``: Ray
    hides no GPU from an actor that reserved none, and one it does not account for would be
    shared unseen)."""
    providers = kwargs.get("providers", "auto")
    if providers in (None, "auto"):
        return {**kwargs, "providers": "cuda" if gpus else "cpu"}
    if providers == "cpu" and gpus:
        raise OnnxGradCamError(f"--gpus-per-worker {gpus:g} reserves GPUs that --provider cpu "
                               "leaves idle; pass --provider cuda (or auto)")
    if providers == "cuda" and not gpus:
        raise OnnxGradCamError("--provider cuda with --engine ray needs --gpus-per-worker F: "
                               "an actor runs on the GPUs it reserves")
    return kwargs


def actor_stage(actor_kwargs: dict, threads: int, workers: int, gpus: float) -> dict:
    """``map_batches`` arguments of the explaining stage: ``workers`` actors, each reserving
    ``threads`` CPUs (its ONNX Runtime threads) and ``gpus`` GPUs."""
    ray = _ray()
    kwargs = {**actor_kwargs, "kwargs": worker_kwargs(actor_kwargs["kwargs"], gpus),
              "threads": threads}
    return dict(fn_constructor_kwargs=kwargs, compute=ray.data.ActorPoolStrategy(size=workers),
                num_cpus=threads, num_gpus=gpus or None)


def ray_records(paths: list[Path], pre: Preprocessing, max_pixels: int, batch_size: int,
                actor: type, actor_kwargs: dict, address: str = "local",
                workers: int | None = None, gpus: float = 0.0, pictures: bool = False):
    """Decode ``paths`` in Ray tasks, run each batch through a pool of ``actor(**actor_kwargs,
    threads=T)`` and yield what each batch gave (unpickled records), in order. Ray is started
    here (and stopped after) unless it runs already; ``address``: local, auto or an
    address."""
    ray = _ray()
    if not paths:  # all done already (--resume): no cluster to start
        return
    started = not ray.is_initialized()
    if started:
        # the command's own bar and lines report progress; Ray's INFO lines would bury them
        quiet = dict(log_to_driver=False, logging_level=logging.ERROR)
        if address == "local":
            ray.init(include_dashboard=False, **quiet)
        else:
            ray.init(address=address, **quiet)
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    try:
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        workers = workers or max(1, min(4, cpus))
        threads = max(1, cpus // workers)
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # output names as the local engine
        context.enable_progress_bars = False
        ds = ray.data.from_items([{"path": str(p)} for p in paths],
                                 override_num_blocks=max(1, -(-len(paths) // batch_size)))
        ds = ds.map_batches(_decode, fn_kwargs={"pre": pre, "max_pixels": max_pixels,
                                                "pictures": pictures},
                            batch_size=batch_size, batch_format="numpy",
                            # the actors hold the CPUs; decode tasks (short beside explaining)
                            # run beside them, one per actor at a time: unbounded, Ray would
                            # start a process (and its imports) per pending task
                            num_cpus=0, compute=ray.data.TaskPoolStrategy(size=workers))
        ds = ds.map_batches(actor, batch_size=batch_size, batch_format="numpy",
                            **actor_stage(actor_kwargs, threads, workers, gpus))
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                yield [pickle.loads(r) for r in batch["record"]]
        except ray.exceptions.RayError as exc:  # retries spent: Ray's own words, in one line
            raise OnnxGradCamError(f"Ray gave up on the job ({_cause(exc)}); the results "
                                   "written so far are complete: rerun with --resume") from None
    finally:
        if started:
            ray.shutdown()


_ERROR_LINE = re.compile(
    r"(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt)(?:: .*)?")


def _cause(exc: BaseException) -> str:
    """A Ray error in one line: its text is the remote traceback (the first exception line is
    the root cause, Ray's wrappers and retry hints follow)."""
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines()]
    causes = [line for line in lines if _ERROR_LINE.fullmatch(line)]
    first = next((line for line in lines if line), "")
    return causes[0] if causes else f"{type(exc).__name__}: {first}"
