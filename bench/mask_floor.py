"""What the activation masks cost an early-layer explanation, and the least any standard-ONNX
form of them could cost on ONNX Runtime's CPU kernels.

    PYTHONPATH=$PWD .venv/bin/python bench/mask_floor.py [--archs MobileNetV2,MobileNetV3Large]
        [--size 160] [--batches 1,16] [--rounds 20]

The early-layer explainer graph of each zoo model (``bench/architectures.py``'s) is timed beside
variants of it, all as one-thread sessions called in rotation with the plain model (medians of
process CPU seconds, which other processes' load does not inflate):

- ``explain``: the graph as built. A Relu or ReLU6 mask is ``Mul(dy, Cast(Greater(y, 0)))`` or
  ``... And(Greater(y, 0), Less(y, 6)) ...``; ONNX Runtime runs the comparisons in NCHW, so y
  and dy are reordered out of the blocked (NCHWc) layout its convolutions use, and the product back.
- ``blocked``: exact masks made by ops ONNX Runtime keeps blocked: 1x1 depthwise Convs with a fused
  activation, ``Clip(2^23 (6 - y), 0, 1)`` for y < 6 and ``HardSigmoid_2^23(2^126 y)`` for y > 0
  (exact down to the least subnormal), each applied by its own Mul.
- ``free``: timing only, wrong values: each mask is y itself, a mask that costs nothing to make,
  applied by one blocked Mul. Batch dimensions get one symbolic name, without which ONNX Runtime
  cannot prove dy and y the same shape and keeps the Mul in NCHW.
- ``none``: timing only: the masks removed.

``free`` is the floor of any mask form ONNX Runtime's CPU kernels run: it still pays for applying
the mask, nothing for making it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper, shape_inference

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.architectures import _batch, bench_model  # noqa: E402
from onnx_gradcam.runtime import make_session  # noqa: E402
from tests.zoo import zoo  # noqa: E402

VARIANTS = ("explain", "blocked", "free", "none")


def masks(graph: onnx.GraphProto) -> list[tuple[onnx.NodeProto, int, str, bool]]:
    """(the Mul applying it, the mask's input index, y, two-sided) of each Relu/ReLU6 mask."""
    producer = {out: node for node in graph.node for out in node.output}
    found = []
    for node in graph.node:
        if node.op_type != "Mul":
            continue
        for index, name in enumerate(node.input):
            cast = producer.get(name)
            if cast is None or cast.op_type != "Cast":
                continue
            test = producer.get(cast.input[0])
            two_sided = test is not None and test.op_type == "And"
            if two_sided:
                test = producer.get(test.input[0])
            if test is not None and test.op_type in ("Greater", "Less"):
                found.append((node, index, test.input[0], two_sided))
                break
    return found


def variant(model: onnx.ModelProto, kind: str) -> onnx.ModelProto:
    """``model`` with its masks made the ``kind`` way (see the module's docstring)."""
    if kind == "explain":
        return model
    model = shape_inference.infer_shapes(model)
    graph = model.graph
    channels = {v.name: v.type.tensor_type.shape.dim[1].dim_value for v in graph.value_info
                if len(v.type.tensor_type.shape.dim) == 4}
    found = {mul.output[0]: (index, y, two_sided) for mul, index, y, two_sided in masks(graph)}
    made: dict[str, list[str]] = {}
    nodes: list[onnx.NodeProto] = []
    for mul in graph.node:
        if mul.output[0] not in found:
            nodes.append(mul)
            continue
        index, y, two_sided = found[mul.output[0]]
        dy = mul.input[1 - index]
        if kind == "none":
            nodes.append(helper.make_node("Identity", [dy], [mul.output[0]]))
            continue
        if kind == "free":
            nodes.append(helper.make_node("Mul", [dy, y], [mul.output[0]]))
            continue
        if y not in made:
            made[y] = _blocked_factors(graph, y, channels[y], two_sided, nodes)
        product = dy
        for i, factor in enumerate(made[y]):
            out = mul.output[0] if i == len(made[y]) - 1 else f"{mul.output[0]}_mfl{i}"
            nodes.append(helper.make_node("Mul", [product, factor], [out]))
            product = out
    del graph.node[:]
    graph.node.extend(_live(graph, nodes))
    if kind == "free":
        for value in list(graph.value_info) + list(graph.input) + list(graph.output):
            dims = value.type.tensor_type.shape.dim
            if len(dims) and not dims[0].HasField("dim_value"):
                dims[0].dim_param = "N"
    else:
        del graph.value_info[:]
    return model


def _blocked_factors(graph: onnx.GraphProto, y: str, channels: int, two_sided: bool,
                     out: list[onnx.NodeProto]) -> list[str]:
    """Exact 0/1 factors of y's mask, made by 1x1 depthwise Convs with fused activations."""
    stem = f"mfl{len(graph.initializer)}"

    def const(suffix: str, value: np.ndarray) -> str:
        graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), stem + suffix))
        return stem + suffix

    out += [helper.make_node("Conv", [y, const("wl", np.full((channels, 1, 1, 1), 2.0 ** 126))],
                             [stem + "zl"], group=channels),
            helper.make_node("HardSigmoid", [stem + "zl"], [stem + "lo"], alpha=2.0 ** 23,
                             beta=0.0)]
    if not two_sided:
        return [stem + "lo"]
    out += [helper.make_node("Conv", [y, const("wh", np.full((channels, 1, 1, 1), -2.0 ** 23)),
                                      const("bh", np.full(channels, 6 * 2.0 ** 23))],
                             [stem + "zh"], group=channels),
            helper.make_node("Clip", [stem + "zh", const("0", np.array(0.0)),
                                      const("1", np.array(1.0))], [stem + "hi"])]
    return [stem + "lo", stem + "hi"]


def _live(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(nodes):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(node.input)
    return kept[::-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="MobileNetV2,MobileNetV3Large")
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    import onnx_gradcam as og

    print(f"input {args.size}x{args.size}, onnxruntime {ort.__version__} CPU, threads 1, median "
          f"process CPU ms of {args.rounds} rounds in rotation; x = / plain; "
          "max|blocked - explain|")
    print(f"{'arch':17} {'batch':>5} {'masks':>5} {'plain':>7} " +
          " ".join(f"{v:>14}" for v in VARIANTS) + f" {'blocked err':>11}")
    for name in args.archs.split(","):
        arch = zoo.ARCHS[name]
        path, layers = bench_model(arch, args.size)
        explainer = og.Explainer(str(path), layer=layers["early"], providers="cpu", threads=1)
        built = explainer.sessions.graph().maps_model()
        count = len(masks(built.graph))
        sessions = {"plain": make_session(path.read_bytes(), "cpu", threads=1)}
        sessions.update({kind: make_session(variant(onnx.ModelProto.FromString(
            built.SerializeToString()), kind).SerializeToString(), "cpu", threads=1)
            for kind in VARIANTS})
        for batch in (int(b) for b in args.batches.split(",")):
            x = _batch(arch, args.size, batch)
            feed = {sessions["plain"].get_inputs()[0].name: x}
            outputs = {k: s.run(None, feed) for k, s in sessions.items()}
            err = max(float(np.abs(np.asarray(a, np.float64) - b).max()) for a, b in
                      zip(outputs["blocked"], outputs["explain"]) if a.dtype.kind == "f")
            times: dict[str, list[float]] = {k: [] for k in sessions}
            for _ in range(args.rounds):
                for k, s in sessions.items():
                    t0 = time.process_time()
                    s.run(None, feed)
                    times[k].append(time.process_time() - t0)
            ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            print(f"{name:17} {batch:5d} {count:5d} {ms['plain']:7.1f} " + " ".join(
                f"{ms[v]:7.1f} ({ms[v] / ms['plain']:.2f}x)" for v in VARIANTS) + f" {err:11.1e}",
                flush=True)


if __name__ == "__main__":
    main()
