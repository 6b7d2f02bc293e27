"""Cost of an explanation ÷ a plain inference, on ten tf2onnx-converted Keras applications.

    /work/venvs/zoo/bin/python bench/architectures.py [--size 224] [--archs ResNet50,VGG16]
        [--repeats 5] [--batches 1,16] [--threads N] [--no-memory] [--cold]
        [--early ARCH=TENSOR,...]

Needs TensorFlow + tf2onnx only to build the models (``weights=None``, calibrated BN, as in
``tests/zoo/zoo.py``); they are cached under ``.cache/zoo/<versions>/bench-<arch>-<size>.*``.

For each architecture and batch size, interleaved so load drift hits all alike, with the same
threads and provider: the median wall time of a plain ``InferenceSession.run`` of the converted
model, of ``Explainer.explain`` at the last conv activation (forward + head gradient + Grad-CAM
post-processing) and at an early layer (the gradient runs back through most of the backbone):
the zoo's earliest tap (a stem or first-block activation), or the ONNX tensor ``--early`` names
for that architecture (e.g. a block 2-3 deep).
Calls run in blocks (:func:`timing`); ``--cold`` times single calls in rotation instead, each
starting with caches another model filled (MobileNetV3Small at batch 1 on 2026-11-27: 1.16
cold, 1.08 in blocks; bench/results/architectures.txt). ``--repeats`` is a minimum: fast calls
run for ~2 s per side (:func:`bench.timing.interleaved_medians`).
Floors (the issue's): last-layer ratio ≤ 1.10 at batch 1 and ≤ 1.05 at batch 16.

Peak memory: each of plain / explain-last / explain-early runs twice at the largest batch in a
fresh subprocess that reports its own peak RSS (``ru_maxrss``); ``base`` is a subprocess that
imports the same modules and loads the model but creates no session.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from tests.zoo import zoo  # noqa: E402

FLOORS = {1: 1.10, 16: 1.05}


def bench_model(arch: zoo.Arch, size: int) -> tuple[Path, dict[str, str]]:
    """(model path, {"early": onnx name, "last": onnx name}), built and cached if absent."""
    folder = zoo.cache_dir()
    path = folder / f"bench-{arch.name}-{size}.onnx"
    meta = path.with_suffix(".json")
    if not meta.exists():
        tf, keras, _ = zoo._tf()
        model = zoo.keras_model(arch, size)
        proto = zoo.convert(model, size)
        taps = [arch.taps[0], arch.taps[-1]]
        x = zoo.inputs(arch, size, 1, seed=2)
        sub = keras.Model(model.inputs, [zoo._tap_tensor(model, t) for t in taps])
        acts = [a.numpy() for a in sub(tf.constant(x), training=False)]
        names, _, _ = zoo.map_tensors(proto, taps, acts, x)
        folder.mkdir(parents=True, exist_ok=True)
        zoo._atomic(path, proto.SerializeToString())
        zoo._atomic(meta, json.dumps({"early": names.get(taps[0].key),
                                      "last": names.get(taps[1].key)}).encode())
    return path, json.loads(meta.read_text())


def _batch(arch: zoo.Arch, size: int, n: int) -> np.ndarray:
    return zoo.inputs(arch, size, n, seed=3)


def timing(path: Path, layers: dict[str, str], arch: zoo.Arch, size: int, batch: int,
           repeats: int, threads: int | None, cold: bool = False) -> dict[str, float]:
    """Median seconds of the plain run and of each explainer, measured pairwise with
    :func:`bench.timing.interleaved_medians` (blocks of calls to one model, as a loop over
    images makes them; the plain run of the last-layer pair is reported, each ratio uses its
    own pair's). ``cold``: single calls in rotation plain → last → early instead, so that every
    call starts with caches the other models filled (the early layer's large backward pass
    runs right before each plain call)."""
    import onnx_gradcam as og
    from bench.timing import interleaved_medians
    from onnx_gradcam.runtime import make_session

    model_bytes = path.read_bytes()
    plain = make_session(model_bytes, "cpu", threads)
    runners = {}
    for which in ("last", "early"):
        if layers.get(which):
            runners[which] = og.Explainer(str(path), layer=layers[which], providers="cpu",
                                          threads=threads, batch_size=batch)
    x = _batch(arch, size, batch)
    feed = {plain.get_inputs()[0].name: x}
    out: dict[str, float] = {}
    if not cold:
        for name, explainer in runners.items():
            out[name], out[f"plain_{name}"] = interleaved_medians(
                lambda e=explainer: e.explain(x), lambda: plain.run(None, feed), repeats)
        out["plain"] = out.get("plain_last", out.get("plain_early", float("nan")))
        return out
    calls = {"plain": lambda: plain.run(None, feed)}
    calls.update({k: (lambda e=e: e.explain(x)) for k, e in runners.items()})
    times: dict[str, list[float]] = {k: [] for k in calls}
    for rep in range(repeats + 1):  # the first round warms up
        for name, call in calls.items():
            t0 = time.perf_counter()
            call()
            if rep:
                times[name].append(time.perf_counter() - t0)
    out = {k: statistics.median(v) for k, v in times.items()}
    out.update({f"plain_{k}": out["plain"] for k in runners})
    return out


CHILD = r"""
import resource, sys, json, numpy as np
sys.path.insert(0, {root!r})
import onnx_gradcam as og
from onnx_gradcam.runtime import make_session
from tests.zoo import zoo
mode, path, layer, batch, size, arch, threads = {args!r}
x = zoo.inputs(zoo.ARCHS[arch], size, batch, seed=3)
data = open(path, "rb").read()
if mode == "plain":
    s = make_session(data, "cpu", threads)
    for _ in range(2):
        s.run(None, {{s.get_inputs()[0].name: x}})
elif mode != "base":
    e = og.Explainer(path, layer=layer, providers="cpu", threads=threads, batch_size=batch)
    for _ in range(2):
        e.explain(x)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork + exec from the parent (which holds
# TensorFlow and the converted models), so every mode read the parent's ~10 GB
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")]
print(json.dumps(int(hwm[0].split()[1]) / 1024 if hwm else
                 resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
"""


def peak_rss(mode: str, path: Path, layer: str | None, batch: int, size: int, arch: str,
             threads: int | None) -> float:
    """Peak RSS (MiB) of a fresh process running ``mode`` twice."""
    code = CHILD.format(root=str(ROOT), args=(mode, str(path), layer, batch, size, arch, threads))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--archs", default=",".join(zoo.ARCHS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--early", default="",
                        help="ARCH=TENSOR,...: the early layer's ONNX tensor for those archs")
    parser.add_argument("--cold", action="store_true",
                        help="single calls in rotation (cold caches) instead of blocks")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    early_layers = dict(item.split("=", 1) for item in args.early.split(",") if item)
    import onnxruntime as ort

    how = "single calls in rotation (cold caches)" if args.cold else "calls in interleaved blocks"
    print(f"input {args.size}x{args.size}, onnxruntime {ort.__version__} CPU, threads "
          f"{args.threads or 'ORT default'}, median of {args.repeats} {how}; "
          f"ratios = explain / plain")
    head = (f"{'arch':17} {'batch':>5} {'plain ms':>9} {'last ms':>9} {'last x':>7} "
            f"{'floor':>6} {'early ms':>9} {'early x':>8}")
    print(head)
    memory_rows = []
    for name in args.archs.split(","):
        arch = zoo.ARCHS[name]
        path, layers = bench_model(arch, args.size)
        layers = {**layers, "early": early_layers.get(name, layers.get("early"))}
        for batch in batches:
            t = timing(path, layers, arch, args.size, batch, args.repeats, args.threads,
                       args.cold)
            last = t.get("last", float("nan")) / t.get("plain_last", float("nan"))
            early = t.get("early", float("nan")) / t.get("plain_early", float("nan"))
            floor = FLOORS.get(batch)
            verdict = "" if floor is None else ("ok" if last <= floor else "MISS")
            print(f"{name:17} {batch:5d} {t['plain'] * 1e3:9.1f} "
                  f"{t.get('last', float('nan')) * 1e3:9.1f} {last:7.3f} {verdict:>6} "
                  f"{t.get('early', float('nan')) * 1e3:9.1f} {early:8.3f}", flush=True)
        if not args.no_memory:
            batch = max(batches)
            rss = {mode: peak_rss(mode, path, layers.get(mode), batch, args.size, name,
                                  args.threads) for mode in ("base", "plain", "last", "early")}
            memory_rows.append((name, batch, rss))
    if memory_rows:
        print("\npeak RSS, MiB (fresh process, 2 runs; base = imports + model bytes, no session)")
        print(f"{'arch':17} {'batch':>5} {'base':>7} {'plain':>7} {'last':>7} {'early':>7} "
              f"{'last/plain':>10} {'early/plain':>11}")
        for name, batch, rss in memory_rows:
            print(f"{name:17} {batch:5d} {rss['base']:7.0f} {rss['plain']:7.0f} "
                  f"{rss['last']:7.0f} {rss['early']:7.0f} {rss['last'] / rss['plain']:10.2f} "
                  f"{rss['early'] / rss['plain']:11.2f}")


if __name__ == "__main__":
    main()
