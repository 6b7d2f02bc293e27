"""onnx-gradcam vs pytorch-grad-cam on the same model, images, target and threads, measured side
by side in one run, for the methods whose cost is not one gradient pass: Score-CAM (our batched
masked forwards on ONNX Runtime vs its ScoreCAM) and the SVD methods Eigen-CAM and Eigen-Grad-CAM
(our one batched QR + SVD call per batch vs its per-image ``np.linalg.svd``).

Needs torch, torchvision and grad-cam, so it runs in its own venv (never the project's):

    /work/venvs/gradcam/bin/python bench/methods_vs_torch.py [--methods scorecam,eigencam]

(the venv of tests/fixtures/torch/make_fixtures.py, plus `pip install typer rich threadpoolctl`
for our modules). Prints median seconds of each and the speed-up; checks the two cams agree.
"""

from __future__ import annotations

import argparse
import io
import itertools
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "fixtures" / "torch")]

import onnx_gradcam as og  # noqa: E402


def models(threads: int):
    """(name, torch model, target layer module, input batch) for each benchmark case."""
    import torchvision
    from make_fixtures import build_models, load_images

    _, x_small = load_images()
    x_small = torch.from_numpy(x_small)
    small = build_models(x_small)["gap"]
    yield "small-resnet@64 (3 images, 64 ch)", small, small.layer3[-1], x_small
    torch.manual_seed(0)
    r18 = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 3, 112, 112))
                         .astype(np.float32))
    yield "resnet18@112 (1 image, 512 ch)", r18, r18.layer4[-1], x


def to_onnx(model, x) -> tuple[onnx.ModelProto, str]:
    buffer = io.BytesIO()
    torch.onnx.export(model, x, buffer, dynamo=False, opset_version=17, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    proto = onnx.load_from_string(buffer.getvalue())
    return proto, og.Explainer(proto).layers[0].name


def their_method(method: str):
    import pytorch_grad_cam as pgc

    return {"scorecam": pgc.ScoreCAM, "eigencam": pgc.EigenCAM,
            "eigengradcam": pgc.EigenGradCAM}[method]


def main() -> None:
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32,
                        help="Score-CAM's masked inputs per forward (both)")
    parser.add_argument("--methods", default="scorecam,eigencam,eigengradcam")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{'method':13} {'case':36} {'torch s':>8} {'ours s':>8} {'speed-up':>8} "
          f"{'max |Δcam|':>10}")
    for method, (name, model, layer, x) in itertools.product(args.methods.split(","),
                                                             list(models(args.threads))):
        proto, tensor = to_onnx(model, x)
        ours = og.Explainer(proto, layer=tensor, method=method, providers="cpu",
                            threads=args.threads, scorecam_batch=args.batch)
        targets = ours.explain(x.numpy()).targets
        cam = their_method(method)(model=model, target_layers=[layer])
        cam.batch_size = args.batch
        wants = [ClassifierOutputTarget(int(t)) for t in targets]
        t_torch, t_ours = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            expected = cam(input_tensor=x, targets=wants)
            t_torch.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            mine = ours.explain(x.numpy(), targets).cams
            t_ours.append(time.perf_counter() - t0)
        a, b = statistics.median(t_torch), statistics.median(t_ours)
        print(f"{method:13} {name:36} {a:8.3f} {b:8.3f} {a / b:8.2f} "
              f"{np.abs(mine - expected).max():10.2e}")


if __name__ == "__main__":
    main()
