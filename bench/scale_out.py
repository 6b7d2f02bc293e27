"""Throughput of ``run`` over a folder: the local engine, ``--engine ray`` with 1 and 2 workers,
and a plain ONNX Runtime forward of the same batches; and Ray's fixed start-up cost.

    python bench/scale_out.py [--model demo|resnet50] [--images 256] [--workers 1,2]
                              [--batch-size 16] [--cpus N] [--rounds 3]

Throughput is images ÷ wall seconds. For an engine the seconds are those of the whole job
(``run_job``: list the folder, decode and preprocess, explain with Grad-CAM at the default
options — knife edges on —, write the ``--format parquet`` rows, build report.json), with the
explainer built and warmed on one batch first. For raw ORT they are those of
``InferenceSession.run`` alone over the same preprocessed batches, on a warm session of the
original model (no decode, no write). The local engine and raw ORT alternate for ``--rounds``
rounds (a shared machine's load moves between them) and the ratio is taken per round; the
median round is printed, the best pass of each, and the ratio of the CPU seconds this
process spent in each over all rounds (the steadiest figure on a shared machine: ONNX
Runtime's threads spin while they wait, in both). Each Ray line includes the actors'
start-up (their sessions are built inside the timed job), and says after how many seconds
the first rows arrived; ``ray.init`` is timed alone.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnx_gradcam as og  # noqa: E402
from bench.nets import resnet  # noqa: E402
from models.scenes import make_dataset  # noqa: E402
from onnx_gradcam.labels import Labels  # noqa: E402
from onnx_gradcam.runner import RunOptions, decoded_chunks, run_job  # noqa: E402
from onnx_gradcam.runtime import make_session  # noqa: E402


def model_file(name: str, folder: Path) -> tuple[Path, int]:
    """(model path, input side)."""
    if name == "demo":
        return ROOT / "models" / "demo.onnx", 96
    if name == "resnet50":
        path = folder / "resnet50.onnx"
        onnx.save(resnet(), path)
        return path, 224
    raise SystemExit(f"unknown model {name!r}")


def write_images(folder: Path, n: int, side: int) -> Path:
    images, _, _ = make_dataset(n, seed=0, size=side)
    folder.mkdir()
    for i, rgb in enumerate(images):
        cv2.imwrite(str(folder / f"{i:04d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return folder


def timed_job(explainer: og.Explainer, images: Path, out: Path, batch: int, engine=None,
              knife_edges: bool = True) -> tuple[float, float, float]:
    """(seconds of the job, seconds until its first rows were written, CPU seconds of this
    process meanwhile)."""
    options = RunOptions(out, batch_size=batch, format="parquet", knife_edges=knife_edges)
    labels = Labels(explainer.model.metadata.labels, explainer.model.metadata.label_offset)
    first: list[float] = []
    t0, c0 = time.perf_counter(), time.process_time()
    report = run_job(explainer, [images], options, labels,
                     progress=lambda n: first or first.append(time.perf_counter() - t0),
                     engine=engine)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert not report["errors"], report["errors"][:3]
    return seconds, first[0], cpu


def warm_explainer(model: Path, images: Path, batch: int) -> og.Explainer:
    """An explainer warmed on one batch, with its knife-edge check too, as raw ORT's session
    is warm (Ray's actors warm up inside the job)."""
    explainer = og.Explainer(model, providers="cpu", batch_size=batch)
    pre = explainer.preprocessing()
    x = np.stack([d.x for d in next(iter(decoded_chunks(
        explainer, sorted(images.iterdir())[:batch], pre, batch, [])))])
    res = explainer.explain(x)
    explainer.knife_edges(x, res.targets)
    return explainer


def raw_batches(explainer: og.Explainer, images: Path, batch: int) -> list[np.ndarray]:
    pre = explainer.preprocessing()
    return [np.stack([d.x for d in chunk])
            for chunk in decoded_chunks(explainer, sorted(images.iterdir()), pre, batch, [])]


def raw_ort(session, name: str, batches: list[np.ndarray]) -> tuple[float, float]:
    """(seconds, CPU seconds) of ``session.run`` over ``batches``."""
    t0, c0 = time.perf_counter(), time.process_time()
    for x in batches:
        session.run(None, {name: x})
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--cpus", type=int, default=os.cpu_count())
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model, side = model_file(args.model, tmp)
        images = write_images(tmp / "images", args.images, side)
        n, batch = args.images, args.batch_size
        print(f"{args.model}, {n} images of {side}×{side}, batch {batch}, {args.cpus} CPUs for "
              f"Ray, {os.cpu_count()} on the machine; load average before: "
              f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}")
        explainer = warm_explainer(model, images, batch)
        batches = raw_batches(explainer, images, batch)
        session = make_session(onnx.load(str(model)).SerializeToString(), "cpu")
        name = session.get_inputs()[0].name
        session.run(None, {name: batches[0]})  # warm-up, as the engine's session is warm
        rounds, cpu = [], np.zeros(3)
        for r in range(args.rounds):
            raw, c_raw = raw_ort(session, name, batches)
            local, _, c_local = timed_job(explainer, images, tmp / f"local{r}", batch)
            bare, _, c_bare = timed_job(explainer, images, tmp / f"bare{r}", batch,
                                        knife_edges=False)
            cpu += (c_raw, c_local, c_bare)
            rounds.append((local / raw, raw, local, bare))
            print(f"  round {r + 1}: raw ORT {n / raw:.1f}, local {n / local:.1f}, "
                  f"local --no-knife-edges {n / bare:.1f} images/s")
        _, raw, local, bare = sorted(rounds)[len(rounds) // 2]
        print("the median round (by local ÷ raw time):")
        print(f"{'raw ORT forward':<28} {n / raw:8.1f} images/s")
        print(f"{'local engine':<28} {n / local:8.1f} images/s  ({raw / local * 100:.0f}% of "
              f"raw ORT; all rounds: "
              f"{', '.join(f'{100 / q:.0f}%' for q, *_ in rounds)})")
        print(f"{'local, --no-knife-edges':<28} {n / bare:8.1f} images/s  "
              f"({raw / bare * 100:.0f}% of raw ORT)")
        best = [min(r[i] for r in rounds) for i in (1, 2, 3)]  # the least disturbed pass
        print(f"best of the rounds: raw ORT {n / best[0]:.1f}, local {n / best[1]:.1f} "
              f"({best[0] / best[1] * 100:.0f}%), --no-knife-edges {n / best[2]:.1f} "
              f"({best[0] / best[2] * 100:.0f}%) images/s")
        # CPU seconds of this process barely move with other processes' load
        print(f"CPU seconds, all rounds: raw ORT {cpu[0]:.1f}, local {cpu[1]:.1f} "
              f"(raw ÷ local {cpu[0] / cpu[1] * 100:.0f}%), --no-knife-edges {cpu[2]:.1f} "
              f"({cpu[0] / cpu[2] * 100:.0f}%)")
        import ray

        from onnx_gradcam.ray_engine import RayEngine

        t0 = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False,
                 object_store_memory=500 * 2**20)
        print(f"{'ray.init (local)':<28} {time.perf_counter() - t0:8.2f} s")
        try:
            for workers in map(int, args.workers.split(",")):
                out = tmp / f"ray{workers}"
                options = RunOptions(out, batch_size=batch, format="parquet")
                meta = explainer.model.metadata
                engine = RayEngine(model, {"providers": "cpu", "batch_size": batch},
                                   ["gradcam"], Labels(meta.labels, meta.label_offset),
                                   options, workers=workers)
                seconds, first, _ = timed_job(explainer, images, out, batch, engine)
                print(f"{f'ray, {workers} worker(s)':<28} {n / seconds:8.1f} images/s  "
                      f"({seconds:.1f} s, actors' start-up included; first rows after "
                      f"{first:.1f} s)")
        finally:
            ray.shutdown()
        print(f"load average after: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
