"""The CUDA provider path, proven on a GPU machine (run by hand; CI has no GPU).

    python bench/cuda_check.py [--out DIR] [--repeats 30] [--zoo DIR]

For each model (the demo model, the torch-exported fixture ResNet at three layers, a ResNet-50
built with onnx.helper, two VGG-style heads, and with --zoo converted Keras applications):
``Explainer`` on CUDA vs on the CPU — the provider that really ran, the max relative difference
of the gradients with ONNX Runtime's default TF32 math and with ``use_tf32=0``, and of the cams
— and, on CUDA, median ``explain`` ÷ plain inference at batch 1 and 16 (default options, like a
user's ``--provider cuda``). Also checks that provider ``auto`` picks CUDA there. Prints one
JSON line per case; with --out writes cuda_check.json.
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
from tests.models import flat_head_cnn  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "torch"
EXACT = [("CUDAExecutionProvider", {"use_tf32": 0})]


def cases(zoo: Path | None = None):
    rng = np.random.default_rng(0)
    yield "demo last", onnx.load(str(ROOT / "models" / "demo.onnx")), None, rng.standard_normal(
        (4, 3, 96, 96)).astype(np.float32)
    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    x = np.load(FIXTURES / "expected.npz")["input"]
    model = onnx.load(str(FIXTURES / "resnet_gap.onnx"))
    for layer in ("last", "mid", "early"):
        yield f"torch-resnet {layer}", model, manifest["models"]["gap"]["layers"][layer][
            "onnx_tensor"], x
    yield "resnet50 last", resnet(), None, rng.standard_normal((4, 3, 224, 224)).astype(
        np.float32)
    for head in ("maxpool_flatten_gemm", "maxpool_transpose_reshape_matmul"):  # VGG-style
        yield f"{head} act", flat_head_cnn(head), "act", rng.standard_normal(
            (4, 3, 16, 16)).astype(np.float32)
    for path in sorted(zoo.glob("bench-*.onnx")) if zoo else []:  # tf2onnx Keras applications
        model = onnx.load(str(path))
        layer = json.loads(path.with_suffix(".json").read_text())["last"]
        shape = [d.dim_value or 4 for d in model.graph.input[0].type.tensor_type.shape.dim]
        yield f"{path.stem} last", model, layer, rng.uniform(-1, 1, shape).astype(np.float32)


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def timing(model, layer, x, repeats):
    ex = og.Explainer(model, layer=layer, providers="cuda")
    plain = make_session(model.SerializeToString(), "cuda")
    feed = {ex.model.input_name: x}
    return interleaved_medians(lambda: ex.explain(x), lambda: plain.run(None, feed), repeats)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--zoo", type=Path, help="a folder of bench-<arch>-<size>.onnx + .json "
                        "(bench/architectures.py's cache) to check too")
    args = parser.parse_args()
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # CUDA/cuDNN from the nvidia-* wheels beside torch
    print("onnxruntime", ort.__version__, ort.get_available_providers())
    auto = og.Explainer(onnx.load(str(FIXTURES / "resnet_gap.onnx")), providers="auto").provider
    print("provider auto ->", auto)
    rows = []
    for name, model, layer, x in cases(args.zoo):
        ref = og.Explainer(model, layer=layer, providers="cpu").explain(x)
        gpu = og.Explainer(model, layer=layer, providers="cuda")
        fast = gpu.explain(x)
        exact = og.Explainer(model, layer=layer, providers=EXACT).explain(x)
        row = {"case": name, "provider": gpu.provider,
               "grad_rel_tf32": relative(fast.gradients[0], ref.gradients[0]),
               "grad_rel_exact": relative(exact.gradients[0], ref.gradients[0]),
               "cam_abs_tf32": float(np.abs(fast.cams - ref.cams).max()),
               "cam_abs_exact": float(np.abs(exact.cams - ref.cams).max()),
               "targets_equal": bool((fast.targets == ref.targets).all())}
        for batch in (1, 16):
            xb = np.concatenate([x] * (batch // len(x) + 1))[:batch]
            e, p = timing(model, layer, xb, args.repeats)
            row[f"cuda_b{batch}_explain_ms"] = round(e * 1e3, 4)
            row[f"cuda_b{batch}_plain_ms"] = round(p * 1e3, 4)
            row[f"cuda_b{batch}_ratio"] = round(e / p, 4)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "cuda_check.json").write_text(json.dumps(
            {"onnxruntime": ort.__version__, "auto": auto, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
