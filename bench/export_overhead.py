"""Cost of an exported model (forward + gradient + CAM in one graph) ÷ a plain inference.

    python bench/export_overhead.py [--repeats 15] [--models demo,resnet50] [--batches 1,16]
                                    [--method gradcam] [--provider cpu|cuda] [--threads N]

For each model and batch size: median wall time of one ``InferenceSession.run`` of the model
written by ``onnx-gradcam export`` (all its outputs: scores, ``cam`` at the input size,
``cam_coarse``, ``cam_target``) and of the original model, same provider, threads and input,
interleaved so load drift on a shared machine hits both alike; also the file-size ratio.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnx_gradcam as og  # noqa: E402
from bench.overhead import models  # noqa: E402
from bench.timing import interleaved_medians  # noqa: E402
from onnx_gradcam.runtime import PROVIDER_NAMES  # noqa: E402


def session(model: onnx.ModelProto, provider: str, threads: int | None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the exported model's optional `target` draws a warning
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=list(dict.fromkeys([PROVIDER_NAMES[provider],
                                                              "CPUExecutionProvider"])))


def measure(model: onnx.ModelProto, method: str, batches: list[int], repeats: int,
            provider: str, threads: int | None) -> list[tuple[int, float, float, float]]:
    """[(batch, exported seconds, plain seconds, size ratio)] for one model."""
    explainer = og.Explainer(model, method=method, providers="cpu")
    exported = explainer.export()
    size = exported.ByteSize() / model.ByteSize()
    plain = session(model, provider, threads)
    explain = session(exported, provider, threads)
    out = []
    for batch in batches:
        shape = [batch, *(d or 1 for d in explainer.model.input_shape[1:])]
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        feed = {explainer.model.input_name: x}
        t_explain, t_plain = interleaved_medians(lambda f=feed: explain.run(None, f),
                                                 lambda f=feed: plain.run(None, f), repeats, 2)
        out.append((batch, t_explain, t_plain, size))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--models", default="demo,resnet50")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--method", default="gradcam")
    parser.add_argument("--provider", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    print(f"{'model':10} {'batch':>5} {'exported ms':>12} {'plain ms':>9} {'ratio':>6} "
          f"{'size':>6}")
    for name, model in models(args.models.split(",")).items():
        for batch, explain, plain, size in measure(model, args.method, batches, args.repeats,
                                                   args.provider, args.threads):
            print(f"{name:10} {batch:5d} {explain * 1e3:12.2f} {plain * 1e3:9.2f} "
                  f"{explain / plain:6.3f} {size:6.3f}", flush=True)


if __name__ == "__main__":
    main()
