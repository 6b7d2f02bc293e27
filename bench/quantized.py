"""Cost of explaining an int8 (QDQ) model: its explain ÷ its plain inference, and its explain ÷
the float32 model's explain, side by side in one run.

    PYTHONPATH=$PWD .venv/bin/python bench/quantized.py [--batches 1,16] [--repeats 5]
        [--threads N]

Models: the wild corpus's legacy torchvision exports (ResNet, MobileNetV3, EfficientNet; small
random-weight configurations, tests/fixtures/wild), quantized here as tests/test_quantized.py
does (QDQ, per-channel, uint8 activations, int8 weights, calibrated on four skimage photos).
Explain is Grad-CAM at the auto-detected layer. Times are medians of interleaved blocks
(:func:`bench.timing.interleaved_medians`); on a shared machine they are noisy.
Goals (issue 17): int8 explain ÷ int8 plain ≤ 1.15 at batch 1 and 16; int8 explain faster than
float32 explain.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnx_gradcam as og  # noqa: E402
from bench.timing import interleaved_medians  # noqa: E402
from tests.test_quantized import (  # noqa: E402
    CALIBRATION,
    EXPECTED,
    FILES,
    WILD,
    Calibration,
    _photo,
    quantization,
)


def quantize(model: str, folder: Path) -> Path:
    x = EXPECTED[f"{model}__input"]
    name = onnx.load(WILD / FILES[model], load_external_data=False).graph.input[0].name
    out = folder / f"{model}.int8.onnx"
    quantization.quantize_static(
        str(WILD / FILES[model]), str(out),
        Calibration([{name: _photo(p, x.shape[2:])} for p in CALIBRATION]),
        quant_format=quantization.QuantFormat.QDQ, per_channel=True,
        activation_type=quantization.QuantType.QUInt8, weight_type=quantization.QuantType.QInt8)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    print(f"{'model':14} {'batch':>5} {'int8 plain ms':>13} {'int8 explain ms':>15} "
          f"{'÷ plain':>8} {'f32 explain ms':>14} {'int8 ÷ f32':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for model in FILES:
            int8_path = quantize(model, Path(tmp))
            opts = ort.SessionOptions()
            if args.threads:
                opts.intra_op_num_threads = args.threads
            int8 = og.Explainer(int8_path, providers="cpu", threads=args.threads)
            # the graph the explainer loaded (the quantizer writes opset 11 with opset-13
            # attributes for an opset-9 source; loading upgrades it)
            plain = ort.InferenceSession(int8.model.proto.SerializeToString(), opts,
                                         providers=["CPUExecutionProvider"])
            float32 = og.Explainer(WILD / FILES[model], providers="cpu", threads=args.threads)
            for batch in batches:
                row(model, batch, plain, int8, float32, args.repeats)


def row(model: str, batch: int, plain: ort.InferenceSession, int8: og.Explainer,
        float32: og.Explainer, repeats: int) -> None:
    """Time one model at one batch size and print its line."""
    first = EXPECTED[f"{model}__input"]
    x = np.resize(first, (batch, *first.shape[1:])).astype(np.float32)
    feeds = {plain.get_inputs()[0].name: x}
    t_plain, t_int8 = interleaved_medians(lambda: plain.run(None, feeds),
                                          lambda: int8.explain(x), repeats)
    t_f32, t_int8b = interleaved_medians(lambda: float32.explain(x), lambda: int8.explain(x),
                                         repeats)
    print(f"{model:14} {batch:5d} {1e3 * t_plain:13.2f} {1e3 * t_int8:15.2f} "
          f"{t_int8 / t_plain:8.2f} {1e3 * t_f32:14.2f} {t_int8b / t_f32:10.2f}")

if __name__ == "__main__":
    main()
