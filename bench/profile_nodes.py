"""Where an explanation's extra time goes: ONNX Runtime's per-node profile of the explainer graph
(the maps session ``explain`` runs) beside the plain model's, summed per op type and split into
the model's own nodes and ours (names starting ``ogc``).

    PYTHONPATH=$PWD .venv/bin/python bench/profile_nodes.py MODEL.onnx [--batch 16] [--runs 5]
        [--threads N] [--top 15] [--layer NAME]

Prints one table: op type, ms per run in the plain model, in the explainer graph's model part and
in its gradient/CAM part. Per-node times on a shared machine are noisy; compare within one run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]


def profile(model_bytes: bytes, feeds: dict, runs: int, threads: int | None) -> dict:
    """{(ours, op type): µs per run} from ONNX Runtime's profiler: each node's median over the
    runs (a preempted thread on a shared machine inflates one run, not the median)."""
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "profile")
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    session.run(None, feeds)  # warm-up, excluded below
    for _ in range(runs):
        session.run(None, feeds)
    events = json.loads(Path(session.end_profiling()).read_text())
    starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    times: dict = defaultdict(list)
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        if len(starts) > 1 and event["ts"] < starts[1]:
            continue  # the warm-up run
        name = event["name"].removesuffix("_kernel_time")
        times[(name, event["args"].get("op_name", "?"))].append(event["dur"])
    out: dict = defaultdict(float)
    for (name, op), durations in times.items():
        out[(name.startswith("ogc"), op)] += float(np.median(durations)) * len(durations) / runs
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--layer", default=None, help="the activation to explain (default: auto)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import onnx_gradcam as og

    ex = og.Explainer(args.model, layer=args.layer, providers="cpu")
    maps = ex.sessions.graph().maps_model()
    shape = [args.batch, *[d or 224 for d in ex.model.input_shape[1:]]]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    plain = profile(ex.model.proto.SerializeToString(), {ex.model.input_name: x}, args.runs,
                    args.threads)
    explain = profile(maps.SerializeToString(), {ex.model.input_name: x}, args.runs,
                      args.threads)
    ops = sorted({op for _, op in [*plain, *explain]},
                 key=lambda op: -(explain[(True, op)] + explain[(False, op)] - plain[(False, op)]))
    print(f"{args.model} batch {args.batch}, layer {ex.layer_names[0]}: ms per run")
    print(f"{'op':24} {'plain':>9} {'explain: model':>15} {'ours':>9}")
    for op in ops[:args.top]:
        print(f"{op:24} {plain[(False, op)] / 1e3:9.2f} {explain[(False, op)] / 1e3:15.2f} "
              f"{explain[(True, op)] / 1e3:9.2f}")
    ours = sum(v for (mine, _), v in explain.items() if mine)
    print(f"total: plain {sum(plain.values()) / 1e3:.2f}, explain: model "
          f"{(sum(explain.values()) - ours) / 1e3:.2f}, ours {ours / 1e3:.2f}")

if __name__ == "__main__":
    main()
