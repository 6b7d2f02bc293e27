"""ONNX Runtime's cost of a binary op against a rank-0 scalar vs a (1, 1, …) constant.

    python bench/scalar_broadcast.py [--repeats 2000]

Why it exists: onnxruntime 1.31 (CPU) runs a tensor with trailing unit dims, such as a
classifier head's (N, C, 1, 1), against a scalar one element at a time; against a constant of
the tensor's rank (all dims 1) it is vectorised. The emitter therefore gives Python numbers
the rank of the tensors beside them (``onnx_gradcam.autodiff.emitter.BROADCASTING``). Re-run
this after an onnxruntime upgrade: if the ratios fall to ~1, that workaround can go. Prints, per
shape and op, the median kernel time (ORT's profiler, one thread) with each constant, and the
ratio scalar ÷ unit-rank.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OPS = ("Less", "Mul", "Where")


def kernel_times(shape: list[int], repeats: int) -> dict[tuple[str, str], float]:
    """Median kernel µs of each op in OPS against a rank-0 ("scalar") and a unit-rank ("unit")
    constant, all in one graph so they see the same machine state."""
    consts = {"scalar": np.array(3.0, np.float32),
              "unit": np.full((1,) * len(shape), 3.0, np.float32)}
    nodes, outputs = [], []
    for kind in consts:
        nodes.append(helper.make_node("Less", ["x", kind], [f"Less_{kind}"], name=f"Less_{kind}"))
        nodes.append(helper.make_node("Mul", ["x", kind], [f"Mul_{kind}"], name=f"Mul_{kind}"))
        nodes.append(helper.make_node("Where", [f"Less_{kind}", "x", kind], [f"Where_{kind}"],
                                      name=f"Where_{kind}"))
        outputs += [(f"Less_{kind}", TensorProto.BOOL), (f"Mul_{kind}", TensorProto.FLOAT),
                    (f"Where_{kind}", TensorProto.FLOAT)]
    graph = helper.make_graph(
        nodes, "scalars", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(name, elem, shape) for name, elem in outputs],
        [numpy_helper.from_array(v, k) for k, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "scalars")
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for _ in range(repeats):
        session.run(None, {"x": x})
    with open(session.end_profiling()) as f:
        events = json.load(f)
    times: dict[str, list[float]] = collections.defaultdict(list)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            times[event["name"].removesuffix("_kernel_time")].append(event["dur"])
    return {(op, kind): float(np.median(times[f"{op}_{kind}"])) for op in OPS for kind in consts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2000)
    args = parser.parse_args()
    print(f"onnxruntime {ort.__version__}, CPU, 1 thread; kernel µs (median)")
    print(f"{'shape':22} {'op':6} {'scalar':>7} {'unit':>7} {'ratio':>6}")
    for shape in ([1, 1024, 1, 1], [16, 1024, 1, 1], [1, 64, 24, 24], [16, 1024]):
        times = kernel_times(shape, args.repeats)
        for op in OPS:
            scalar, unit = times[(op, "scalar")], times[(op, "unit")]
            print(f"{str(shape):22} {op:6} {scalar:7.1f} {unit:7.1f} {scalar / unit:6.1f}",
                  flush=True)


if __name__ == "__main__":
    main()
