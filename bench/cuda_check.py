"""The CUDA provider path, proven on a GPU machine (run by hand; CI has no GPU).

    python bench/cuda_check.py [--out DIR]

For each model (the torch-exported fixture ResNet at three layers, and a ResNet-50 built with
onnx.helper): Explainer on provider "cuda" vs "cpu" — the provider that really ran, the max
relative difference of gradients and cams — and, on CUDA, median explain ÷ plain inference at
batch 1 and 16. Also checks that provider "auto" picks CUDA there. Prints a table; with --out
writes cuda_check.json.
"""

from __future__ import annotations

import argparse
import json
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

FIXTURES = ROOT / "tests" / "fixtures" / "torch"


def cases():
    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    x = np.load(FIXTURES / "expected.npz")["input"]
    model = onnx.load(str(FIXTURES / "resnet_gap.onnx"))
    for layer in ("last", "mid", "early"):
        yield f"torch-resnet {layer}", model, manifest["models"]["gap"]["layers"][layer][
            "onnx_tensor"], x
    big = resnet()
    yield "resnet50 last", big, None, np.random.default_rng(0).standard_normal(
        (4, 3, 224, 224)).astype(np.float32)


def timing(model, layer, x, provider, repeats=10):
    ex = og.Explainer(model, layer=layer, providers=provider)
    plain = make_session(model.SerializeToString(), provider)
    feed = {ex.model.input_name: x}
    return interleaved_medians(lambda: ex.explain(x), lambda: plain.run(None, feed), repeats)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # CUDA/cuDNN from the nvidia-* wheels beside torch
    print("onnxruntime", ort.__version__, ort.get_available_providers())
    auto = og.Explainer(onnx.load(str(FIXTURES / "resnet_gap.onnx")), providers="auto").provider
    print("provider auto ->", auto)
    rows = []
    for name, model, layer, x in cases():
        gpu = og.Explainer(model, layer=layer, providers="cuda")
        cpu = og.Explainer(model, layer=layer, providers="cpu")
        rg, rc = gpu.explain(x), cpu.explain(x)
        g_rel = float(np.abs(rg.gradients[0] - rc.gradients[0]).max()
                      / np.abs(rc.gradients[0]).max())
        cam = float(np.abs(rg.cams - rc.cams).max())
        row = {"case": name, "provider": gpu.provider, "grad_max_rel_diff": g_rel,
               "cam_max_abs_diff": cam, "targets_equal": bool((rg.targets == rc.targets).all())}
        for batch in (1, 16):
            xb = np.concatenate([x] * (batch // len(x) + 1))[:batch]
            e, p = timing(model, layer, xb, "cuda")
            row[f"cuda_b{batch}_explain_ms"] = e * 1e3
            row[f"cuda_b{batch}_plain_ms"] = p * 1e3
            row[f"cuda_b{batch}_ratio"] = e / p
        rows.append(row)
        print(json.dumps(row))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "cuda_check.json").write_text(json.dumps(
            {"onnxruntime": ort.__version__, "auto": auto, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
