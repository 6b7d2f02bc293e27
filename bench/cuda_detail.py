"""CUDA details for bench/cuda_check.py: TF32 off vs on (gradient agreement with the CPU) and
where explain's time goes (the explainer graph's session.run vs numpy post-processing)."""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnx_gradcam as og  # noqa: E402
from bench.nets import resnet  # noqa: E402
from onnx_gradcam.explainer_graph import GRADIENT, SCORES, TARGET  # noqa: E402

ort.set_default_logger_severity(3)
if hasattr(ort, "preload_dlls"):
    ort.preload_dlls()
FIX = ROOT / "tests" / "fixtures" / "torch"
manifest = json.loads((FIX / "manifest.json").read_text())
x_small = np.load(FIX / "expected.npz")["input"]
cases = [("torch-resnet mid", onnx.load(str(FIX / "resnet_gap.onnx")),
          manifest["models"]["gap"]["layers"]["mid"]["onnx_tensor"], x_small),
         ("torch-resnet early", onnx.load(str(FIX / "resnet_gap.onnx")),
          manifest["models"]["gap"]["layers"]["early"]["onnx_tensor"], x_small),
         ("resnet50 last b16", resnet(), None,
          np.random.default_rng(0).standard_normal((16, 3, 224, 224)).astype(np.float32))]


def med(fn, n=20):
    fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


for name, model, layer, x in cases:
    cpu = og.Explainer(model, layer=layer, providers="cpu")
    ref = cpu.explain(x)
    graph = cpu.graph.model.SerializeToString()
    names = [SCORES, *cpu.graph.activations, GRADIENT]
    feeds = {cpu.model.input_name: x, TARGET: ref.targets}
    row = {"case": name}
    for tf32 in (0, 1):
        sess = ort.InferenceSession(graph, providers=[("CUDAExecutionProvider",
                                                       {"use_tf32": tf32}), "CPUExecutionProvider"])
        out = sess.run(names, feeds)
        g = out[-1]
        row[f"tf32={tf32} grad_rel"] = float(np.abs(g - ref.gradients[0]).max()
                                             / np.abs(ref.gradients[0]).max())
        if tf32 == 0:
            plain = ort.InferenceSession(model.SerializeToString(), providers=[
                ("CUDAExecutionProvider", {"use_tf32": 0}), "CPUExecutionProvider"])
            row["run_explainer_ms"] = med(lambda s=sess: s.run(names, feeds))  # noqa: B023
            row["run_plain_ms"] = med(lambda p=plain: p.run(None, {cpu.model.input_name: x}))  # noqa: B023
            row["postprocess_ms"] = med(lambda: og.cams.postprocess(  # noqa: B023
                [cpu.method.cam(ref.activations[0], ref.gradients[0])], x.shape[2:]))  # noqa: B023
    print(json.dumps(row), flush=True)
