"""Cost of an explanation ÷ a plain inference, side by side in one run.

    python bench/overhead.py [--repeats 7] [--models demo,resnet50] [--batches 1,16]

For each model and batch size: median wall time of ``Explainer.explain`` (forward + head gradient
+ Grad-CAM post-processing) and of a plain ``InferenceSession.run`` of the original model, with
the same threads and provider, and their ratio. The two are interleaved so load drift on a shared
machine hits both alike; ``--repeats`` is a minimum, fast calls run for ~2 s per side
(:func:`bench.timing.interleaved_medians`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnx_gradcam as og  # noqa: E402
from bench.nets import resnet  # noqa: E402
from bench.timing import interleaved_medians  # noqa: E402
from onnx_gradcam.runtime import make_session  # noqa: E402


def models(names: list[str]) -> dict[str, onnx.ModelProto]:
    out = {}
    for name in names:
        if name == "demo":
            out[name] = onnx.load(str(ROOT / "models" / "demo.onnx"))
        elif name == "resnet50":
            out[name] = resnet()
        else:
            raise SystemExit(f"unknown model {name!r}")
    return out


def measure(model: onnx.ModelProto, batch: int, repeats: int, threads: int | None,
            layer: str | None = None, method: str = "gradcam") -> tuple[float, float]:
    explainer = og.Explainer(model, layer=layer, method=method, providers="cpu", threads=threads)
    plain = make_session(model.SerializeToString(), "cpu", threads)
    shape = [batch if not isinstance(d, int) or d <= 0 else d for d in explainer.model.input_shape]
    shape[0] = batch
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    feed = {explainer.model.input_name: x}
    return interleaved_medians(lambda: explainer.explain(x), lambda: plain.run(None, feed),
                               repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--models", default="demo,resnet50")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--layer", default=None, help="target layer (default: auto)")
    parser.add_argument("--methods", default="gradcam",
                        help="comma list of methods, or 'gradient' for every gradient method")
    args = parser.parse_args()
    methods = ([m for m, spec in og.METHODS.items() if spec.needs_gradient]
               if args.methods == "gradient" else args.methods.split(","))
    print(f"{'model':10} {'method':20} {'batch':>5} {'explain ms':>11} {'plain ms':>9} "
          f"{'ratio':>6}")
    for name, model in models(args.models.split(",")).items():
        for method in methods:
            for batch in map(int, args.batches.split(",")):
                explain, plain = measure(model, batch, args.repeats, args.threads, args.layer,
                                         method)
                print(f"{name:10} {method:20} {batch:5d} {explain * 1e3:11.2f} "
                      f"{plain * 1e3:9.2f} {explain / plain:6.3f}", flush=True)


if __name__ == "__main__":
    main()
