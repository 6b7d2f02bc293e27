"""Cost of explaining an int8 model: its explain ÷ its plain inference, and its explain ÷ the
float32 model's explain, side by side in one run.

    # once, in an environment with torch + torchvision (writes .cache/quantized-bench/):
    /work/venvs/gradcam/bin/python bench/quantized.py --export resnet18,mobilenet_v3_large,...
    # then, with the package's environment:
    PYTHONPATH=$PWD .venv/bin/python bench/quantized.py [--models torchvision,wild]
        [--formats QDQ,QOperator] [--batches 1,16] [--repeats 5] [--threads N] [--profile]

Models: ``torchvision``: the torchvision architectures exported by ``--export`` (legacy
exporter, opset 13, 224×224, random weights with BatchNorm statistics calibrated on random
batches: deployed-size models, ResNet-18 being the issue's case); ``wild``: the wild corpus's
tiny legacy exports (tests/fixtures/wild, 0.1–0.3 ms per image: more call overhead than
arithmetic). Each is quantized here as a user would: onnxruntime's ``quant_pre_process`` (the
torchvision exports need it: their shared biases are Identity outputs the quantizer cannot read)
and ``quantize_static``, per-channel, uint8 activations / int8 weights, calibrated on four
skimage photos, in QDQ and QOperator formats (QOperator keeps Gemm in float, as
tests/test_quantized.py does: QGemm has no rule). The float32 model is the pre-processed one.

Explain is Grad-CAM at the auto-detected layer. Times are medians of interleaved blocks
(:func:`bench.timing.interleaved_medians`): int8 plain against int8 explain, then float32
explain against int8 explain; on a shared machine they are noisy. ``--profile`` adds ONNX
Runtime's profile of the plain and the explainer session at batch 1: each node's fastest run of
20, summed (a figure the neighbours' load inflates far less than wall time), and the
explainer's costliest nodes that the plain session does not run.
Goals (issue 17): int8 explain ÷ int8 plain ≤ 1.15 at batch 1 and 16; int8 explain faster than
float32 explain.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CACHE = ROOT / ".cache" / "quantized-bench"
SIZE = 224
CALIBRATION = ("rocket", "hubble_deep_field", "immunohistochemistry", "retina")
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
#: the ops QOperator copies quantize (tests/test_quantized.py: the ones with rules)
WITH_RULES = ["Conv", "Add", "Mul", "GlobalAveragePool", "AveragePool", "Sigmoid", "LeakyRelu",
              "Concat", "MatMul"]


def export(archs: list[str]) -> None:
    """torchvision ``archs`` → CACHE/<arch>.onnx (needs torch and torchvision)."""
    import torch
    import torchvision

    CACHE.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(1)
    for arch in archs:
        torch.manual_seed(0)
        model = getattr(torchvision.models, arch)(weights=None)
        for module in model.modules():  # cumulative statistics of a few random batches
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.momentum = None
                module.reset_running_stats()
        model.train()
        with torch.no_grad():
            for _ in range(4):
                model(torch.randn(8, 3, SIZE, SIZE, generator=generator))
        model.eval()
        torch.onnx.export(model, torch.randn(1, 3, SIZE, SIZE), CACHE / f"{arch}.onnx",
                          dynamo=False, opset_version=13, input_names=["input"],
                          output_names=["logits"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
        print(f"exported {CACHE / f'{arch}.onnx'}")


def _photo(name: str, size: tuple[int, int]) -> np.ndarray:
    from skimage import data, transform

    rgb = transform.resize(getattr(data, name)(), size, anti_aliasing=True)
    return ((rgb - MEAN) / STD).astype(np.float32).transpose(2, 0, 1)[None]


def sources(kinds: list[str]) -> list[tuple[str, Path, np.ndarray]]:
    """(name, float32 ONNX file, one input sample) of each model to bench."""
    out = []
    if "torchvision" in kinds:
        files = sorted(CACHE.glob("*.onnx")) if CACHE.exists() else []
        files = [f for f in files if f.stem.count(".") == 0]
        if not files:
            print(f"# no torchvision exports in {CACHE}: run --export first", file=sys.stderr)
        out += [(f.stem, f, _photo("astronaut", (SIZE, SIZE))) for f in files]
    if "wild" in kinds:
        from tests.test_quantized import EXPECTED, FILES, WILD

        out += [(f"wild-{m}", WILD / f, EXPECTED[f"{m}__input"]) for m, f in FILES.items()]
    return out


def quantized(name: str, source: Path, x: np.ndarray, fmt: str, folder: Path
              ) -> tuple[Path, Path]:
    """(pre-processed float32 model, its int8 ``fmt`` copy) in ``folder``."""
    from onnxruntime import quantization
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = folder / f"{name}.pre.onnx"
    if not pre.exists():
        quant_pre_process(str(source), str(pre), skip_symbolic_shape=True)
    input_name = onnx.load(pre, load_external_data=False).graph.input[0].name

    class Photos(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{input_name: _photo(p, x.shape[2:])} for p in CALIBRATION])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    out = folder / f"{name}.{fmt}.onnx"
    quantization.quantize_static(
        str(pre), str(out), Photos(), quant_format=getattr(quantization.QuantFormat, fmt),
        per_channel=True, activation_type=quantization.QuantType.QUInt8,
        weight_type=quantization.QuantType.QInt8,
        op_types_to_quantize=WITH_RULES if fmt == "QOperator" else None)
    return pre, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", default=None, help="torchvision architectures to export")
    parser.add_argument("--models", default="torchvision,wild")
    parser.add_argument("--formats", default="QDQ,QOperator")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    if args.export:
        export(args.export.split(","))
        return
    import onnxruntime as ort

    import onnx_gradcam as og

    batches = [int(b) for b in args.batches.split(",")]
    print(f"# onnxruntime {ort.__version__} CPU, threads {args.threads or 'default'}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    print(f"{'model':22} {'format':9} {'batch':>5} {'int8 plain ms':>13} "
          f"{'int8 explain ms':>15} {'÷ plain':>8} {'f32 explain ms':>14} {'int8 ÷ f32':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, source, x in sources(args.models.split(",")):
            for fmt in args.formats.split(","):
                pre, int8_path = quantized(name, source, x, fmt, Path(tmp))
                int8 = og.Explainer(int8_path, providers="cpu", threads=args.threads)
                float32 = og.Explainer(pre, providers="cpu", threads=args.threads)
                plain = _session(int8.model.proto, args.threads)
                for batch in batches:
                    row(f"{name}", fmt, batch, x, plain, int8, float32, args.repeats)
                if args.profile:
                    profile(int8, x, args.threads)
    print(f"# load average {os.getloadavg()[0]:.1f} at the end")


def _session(proto: onnx.ModelProto, threads: int | None, profile: str | None = None):
    """A plain CPU session of ``proto`` (the graph the explainer loaded: the quantizer writes
    opset 11 with opset-13 attributes for an opset-9 source, and loading upgrades it)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    if profile:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile
    return ort.InferenceSession(proto.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def row(model: str, fmt: str, batch: int, first: np.ndarray, plain, int8, float32,
        repeats: int) -> None:
    """Time one model at one batch size and print its line."""
    from bench.timing import interleaved_medians

    x = np.resize(first, (batch, *first.shape[1:])).astype(np.float32)
    feeds = {plain.get_inputs()[0].name: x}
    t_plain, t_int8 = interleaved_medians(lambda: plain.run(None, feeds),
                                          lambda: int8.explain(x), repeats)
    t_f32, t_int8b = interleaved_medians(lambda: float32.explain(x), lambda: int8.explain(x),
                                         repeats)
    print(f"{model:22} {fmt:9} {batch:5d} {1e3 * t_plain:13.2f} {1e3 * t_int8:15.2f} "
          f"{t_int8 / t_plain:8.2f} {1e3 * t_f32:14.2f} {t_int8b / t_f32:10.2f}", flush=True)


def profile(int8, first: np.ndarray, threads: int | None, runs: int = 20) -> None:
    """Print ONNX Runtime's profile of the plain and the explainer session at batch 1 (see the
    module's doc)."""
    x = first[:1].astype(np.float32)
    graph = int8.sessions.graph()
    plain = _node_minima(int8.model.proto, x, threads, runs)
    explain = _node_minima(graph.maps_model(), x, threads, runs)
    only = {k: t for k, t in explain.items() if k not in plain}
    total_plain, total_explain = sum(plain.values()), sum(explain.values())
    print(f"#   profile, batch 1: nodes' fastest runs summed: plain {total_plain / 1e3:.2f} ms, "
          f"explain {total_explain / 1e3:.2f} ms ({total_explain / total_plain:.2f}), of which "
          f"nodes the plain session does not run {sum(only.values()) / 1e3:.2f} ms "
          f"({len(only)} nodes)")
    by_op = Counter()
    for (op_type, _), t in only.items():
        by_op[op_type] += t
    print("#   those by op: " + ", ".join(f"{op} {t / 1e3:.3f}" for op, t in by_op.most_common(8)))


def _node_minima(proto: onnx.ModelProto, x: np.ndarray, threads: int | None,
                 runs: int) -> dict[tuple[str, str], float]:
    """(op type, node name) → its fastest kernel time in µs over ``runs`` runs (after 3
    warm-up runs); ONNX Runtime's ``_token_N`` suffixes dropped so both sessions name alike."""
    with tempfile.TemporaryDirectory() as tmp:
        session = _session(proto, threads, str(Path(tmp) / "profile"))
        feeds = {session.get_inputs()[0].name: x}
        for _ in range(runs + 3):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    minima: dict[tuple[str, str], float] = {}
    for event in events:
        if (event.get("cat") == "Node" and event["name"].endswith("_kernel_time")
                and event["ts"] >= starts[3]):
            key = (event["args"]["op_name"],
                   re.sub(r"_token_\d+", "", event["name"].removesuffix("_kernel_time")))
            minima[key] = min(minima.get(key, float("inf")), event["dur"])
    return minima


if __name__ == "__main__":
    main()
