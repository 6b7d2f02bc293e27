"""Cost of explaining a vision transformer ÷ a plain inference (the issue's floor: 1.15 at batch
1 and 16, at the default layer, the last block's first LayerNorm).

    /work/venvs/gradcam/bin/python bench/transformers.py --build   # once: export the models
    PYTHONPATH=$PWD .venv/bin/python bench/transformers.py [--models vit_b_16,swin_t]
        [--batches 1,16] [--repeats 5] [--threads N] [--provider cpu] [--cpu-time]

``--build`` (in a virtualenv with torch and torchvision) exports torchvision's ``vit_b_16`` and
``swin_t`` with random weights (legacy exporter, opset 17, dynamic batch) to
``.cache/transformers/<model>.onnx``; nothing is downloaded. The bench itself needs only the
package: per model and batch, the median wall time of a plain ``InferenceSession.run`` and of
``Explainer.explain`` (Grad-CAM, default layer), interleaved (:mod:`bench.timing`), same
threads and provider. Prints one JSON line per case. Timings on a shared machine are noisy:
``--cpu-time`` runs both on one thread and times the process's CPU seconds instead of wall
time, which the other processes' load does not inflate.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "transformers"
FLOOR = 1.15
MODELS = ("vit_b_16", "swin_t")


def build(models: list[str]) -> None:
    import torch
    import torchvision.models as tvm

    CACHE.mkdir(parents=True, exist_ok=True)
    for name in models:
        torch.manual_seed(0)
        model = getattr(tvm, name)().eval()
        if name.startswith("vit"):  # torchvision zero-initialises ViT's head
            torch.nn.init.normal_(model.heads.head.weight, std=0.05)
        x = torch.randn(1, 3, 224, 224)
        torch.onnx.export(model, (x,), str(CACHE / f"{name}.onnx"), dynamo=False,
                          opset_version=17, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        print(f"{name}: {CACHE / f'{name}.onnx'}", file=sys.stderr)


def bench(models: list[str], batches: list[int], repeats: int, threads: int | None,
          provider: str, cpu_time: bool = False) -> None:
    import time

    sys.path.insert(0, str(ROOT))
    import onnx_gradcam as og
    from bench.timing import interleaved_medians
    from onnx_gradcam.runtime import make_session

    for name in models:
        path = CACHE / f"{name}.onnx"
        if not path.exists():
            raise SystemExit(f"{path} missing: run this script with --build in a torch venv")
        ex = og.Explainer(path, providers=provider, threads=threads)
        plain = make_session(path.read_bytes(), provider, threads)
        for batch in batches:
            x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
            feeds = {ex.model.input_name: x}
            t_plain, t_explain = interleaved_medians(
                lambda s=plain, f=feeds: s.run(None, f),
                lambda e=ex, x=x: e.explain(x), repeats,
                clock=time.process_time if cpu_time else time.perf_counter)
            ratio = t_explain / t_plain
            print(json.dumps({"model": name, "batch": batch, "layer": ex.layer_names[0],
                              "provider": ex.provider, "plain_ms": round(t_plain * 1e3, 2),
                              "explain_ms": round(t_explain * 1e3, 2), "ratio": round(ratio, 3),
                              "clock": "cpu" if cpu_time else "wall", "threads": threads,
                              "floor": FLOOR, "ok": ratio <= FLOOR}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", action="store_true")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--provider", default="cpu")
    parser.add_argument("--cpu-time", action="store_true")
    args = parser.parse_args()
    if args.cpu_time and args.threads not in (None, 1):
        parser.error("--cpu-time times one thread: leave --threads out or 1")
    models = args.models.split(",")
    if args.build:
        build(models)
    else:
        bench(models, [int(b) for b in args.batches.split(",")], args.repeats,
              1 if args.cpu_time else args.threads, args.provider, args.cpu_time)


if __name__ == "__main__":
    main()
