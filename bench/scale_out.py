"""Throughput of ``run`` over a folder: the local engine, ``--engine ray`` with 1 and 2 workers,
and a plain ONNX Runtime forward of the same batches; and Ray's fixed start-up cost.

    python bench/scale_out.py [--model demo|resnet50] [--images 256] [--workers 1,2]
                              [--batch-size 16] [--cpus N]

Every engine writes ``--format parquet`` rows into a fresh folder, so all do the same output
work. ``images/s`` is images ÷ the wall time of the whole job (decode, explain, write), after
the explainers are built; the raw-ORT line times only ``InferenceSession.run`` over the same
preprocessed batches (no decode, no write). The Ray lines include the actors' start-up (their
sessions are built inside the timed job); ``ray.init`` is timed alone. On a machine shared with
other work the numbers are noisy: compare lines from one run, not across runs.
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


def timed_job(model: Path, images: Path, out: Path, batch: int, engine=None) -> float:
    explainer = og.Explainer(model, providers="cpu", batch_size=batch)
    options = RunOptions(out, batch_size=batch, format="parquet")
    labels = Labels(explainer.model.metadata.labels, explainer.model.metadata.label_offset)
    if engine is None:  # warm, as raw ORT's session is (Ray's actors warm up inside the job)
        pre = explainer.preprocessing()
        explainer.explain(next(iter(decoded_chunks(explainer, sorted(images.iterdir())[:batch],
                                                   pre, batch, [])))[0].x[None])
    t0 = time.perf_counter()
    report = run_job(explainer, [images], options, labels, engine=engine)
    seconds = time.perf_counter() - t0
    assert not report["errors"], report["errors"][:3]
    return seconds


def raw_ort(model: Path, images: Path, batch: int) -> float:
    explainer = og.Explainer(model, providers="cpu", batch_size=batch)
    pre = explainer.preprocessing()
    paths = sorted(images.iterdir())
    batches = [np.stack([d.x for d in chunk])
               for chunk in decoded_chunks(explainer, paths, pre, batch, [])]
    session = make_session(onnx.load(str(model)).SerializeToString(), "cpu")
    name = session.get_inputs()[0].name
    session.run(None, {name: batches[0]})  # warm-up, as the engines' sessions are warm
    t0 = time.perf_counter()
    for x in batches:
        session.run(None, {name: x})
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--cpus", type=int, default=os.cpu_count())
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model, side = model_file(args.model, tmp)
        images = write_images(tmp / "images", args.images, side)
        n = args.images
        print(f"{args.model}, {n} images of {side}×{side}, batch {args.batch_size}, "
              f"{args.cpus} CPUs for Ray, {os.cpu_count()} on the machine")
        raw = raw_ort(model, images, args.batch_size)
        print(f"{'raw ORT forward':<24} {n / raw:8.1f} images/s")
        local = timed_job(model, images, tmp / "local", args.batch_size)
        print(f"{'local engine':<24} {n / local:8.1f} images/s  ({local / raw * 100 - 100:+.0f}% "
              "time over raw ORT)")
        import ray

        from onnx_gradcam.ray_engine import RayEngine

        t0 = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False,
                 object_store_memory=500 * 2**20)
        print(f"{'ray.init (local)':<24} {time.perf_counter() - t0:8.2f} s")
        try:
            for workers in map(int, args.workers.split(",")):
                out = tmp / f"ray{workers}"
                options = RunOptions(out, batch_size=args.batch_size, format="parquet")
                explainer = og.Explainer(model, providers="cpu")
                meta = explainer.model.metadata
                engine = RayEngine(model, {"providers": "cpu", "batch_size": args.batch_size},
                                   ["gradcam"], Labels(meta.labels, meta.label_offset),
                                   options, workers=workers)
                seconds = timed_job(model, images, out, args.batch_size, engine)
                print(f"{f'ray, {workers} worker(s)':<24} {n / seconds:8.1f} images/s  "
                      f"({seconds:.1f} s, actors' start-up included)")
        finally:
            ray.shutdown()


if __name__ == "__main__":
    main()
