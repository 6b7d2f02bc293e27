"""Train the bundled demo classifier on synthetic scenes and export it as models/demo.onnx.

Needs PyTorch (CPU), which the package itself does not: use a separate venv, e.g.

    python3 -m venv /work/venvs/torch
    /work/venvs/torch/bin/pip install torch==2.13.0 numpy opencv-python-headless onnx
    /work/venvs/torch/bin/python models/train_demo.py

Deterministic (fixed seeds, ``torch.use_deterministic_algorithms(True)``, 2 threads, CPU only).
Prints the held-out accuracy and a torch-side Grad-CAM pointing game (share of held-out images
whose Grad-CAM maximum, upsampled to 96x96, falls inside the object's ground-truth mask).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import types
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from scenes import CLASSES, make_dataset  # noqa: E402

SIZE = 96
MEAN, STD = 0.5, 0.5  # x = (pixels / 255 - 0.5) / 0.5, NCHW, RGB
TRAIN_SEED, HELDOUT_SEED = 1, 2


def block(c_in: int, c_out: int, dilation: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, 3, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    ]


class DemoNet(nn.Module):
    """Conv-BN-ReLU blocks, two 2x2 max-pools (96 -> 24), dilated blocks at 24x24 for a wide
    receptive field without losing resolution, global average pooling, one linear layer."""

    def __init__(self, n_classes: int = len(CLASSES)) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *block(3, 16),
            nn.MaxPool2d(2),
            *block(16, 32),
            nn.MaxPool2d(2),
            *block(32, 64),
            *block(64, 64, dilation=2),
            *block(64, 64, dilation=3),  # (dilation 4 hits a ~6x slower CPU kernel)
        )
        self.classifier = nn.Linear(64, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(x)
        return self.classifier(feats.mean((2, 3))), feats


def to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) RGB -> float32 (N, 3, H, W), normalised like the ONNX metadata says."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    return (x / 255.0 - MEAN) / STD


def augment(tensors: list[torch.Tensor], gen: torch.Generator) -> list[torch.Tensor]:
    """Class-preserving flips and 90-degree turns, one choice per batch, the same for the images
    and their masks (deterministic)."""
    k = int(torch.randint(4, (1,), generator=gen))
    flip = bool(torch.randint(2, (1,), generator=gen))
    out = []
    for t in tensors:
        t = torch.rot90(t, k, dims=(2, 3))
        out.append(torch.flip(t, dims=(3,)) if flip else t)
    return out


def cell_masks(masks: np.ndarray, cells: int) -> np.ndarray:
    """Object masks (N, H, W) -> float (N, 1, cells, cells): 1 where a feature-map cell lies
    mostly (>= 75%) inside the object; the best-covered cells where none does."""
    out = np.empty((len(masks), 1, cells, cells), np.float32)
    for i, m in enumerate(masks):
        cover = cv2.resize(m.astype(np.float32), (cells, cells), interpolation=cv2.INTER_AREA)
        out[i, 0] = cover >= min(0.75, cover.max() - 1e-6)
    return out


def localisation_loss(model: DemoNet, feats: torch.Tensor, labels: torch.Tensor,
                      cells_in: torch.Tensor) -> torch.Tensor:
    """Auxiliary loss on the class activation map of the true class. With global average pooling
    and one linear layer, Grad-CAM's map is proportional to sum_k W[c, k] A_k; a spatial softmax
    over it should put its mass on the cells inside the object: -log sum_{cells in object} p."""
    w = model.classifier.weight[labels]  # (N, K)
    cam = (w[:, :, None, None] * feats).sum(1).flatten(1)
    logp = torch.log_softmax(cam, dim=1)
    inside = cells_in.flatten(1) > 0
    return -torch.logsumexp(logp.masked_fill(~inside, -1e4), dim=1).mean()


@torch.no_grad()
def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(images), 256):
        x = to_input(images[i:i + 256]).contiguous(memory_format=torch.channels_last)
        correct += int((model(x).argmax(1).numpy() == labels[i:i + 256]).sum())
    return correct / len(images)


def pointing_game(model: DemoNet, images: np.ndarray, labels: np.ndarray, masks: np.ndarray,
                  use_label: bool) -> float:
    """Plain Grad-CAM on the last ReLU: w_k = mean_ij dy/dA, cam = relu(sum_k w_k A_k),
    bilinear (half-pixel) upsampling to the input size; a hit when the argmax lies in the mask.
    The target is the ground-truth class (``use_label``) or the predicted one."""
    model.eval()
    last_relu = model.features[-1]
    store: dict[str, torch.Tensor] = {}
    handle = last_relu.register_forward_hook(lambda m, i, o: store.__setitem__("A", o))
    hits = 0
    try:
        for i in range(0, len(images), 100):
            x = to_input(images[i:i + 100])
            logits = model(x)
            target = (torch.from_numpy(labels[i:i + 100]) if use_label else logits.argmax(1))
            score = logits.gather(1, target[:, None]).sum()
            (grads,) = torch.autograd.grad(score, store["A"])
            acts = store["A"].detach()
            w = grads.mean((2, 3), keepdim=True)
            cam = F.relu((w * acts).sum(1, keepdim=True))
            cam = F.interpolate(cam, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
            flat = cam.flatten(1).argmax(1).numpy()
            ys, xs = np.unravel_index(flat, (SIZE, SIZE))
            m = masks[i:i + 100]
            hits += int(m[np.arange(len(m)), ys, xs].sum())
    finally:
        handle.remove()
    return hits / len(images)


def export(model: DemoNet, path: Path) -> None:
    import onnx

    # Import onnx_gradcam.metadata without running the package's __init__ (which pulls in
    # onnxruntime and the explainer, not needed here and not installed in the torch venv).
    if "onnx_gradcam" not in sys.modules:
        pkg = types.ModuleType("onnx_gradcam")
        pkg.__path__ = [str(REPO_ROOT / "onnx_gradcam")]
        sys.modules["onnx_gradcam"] = pkg
    from onnx_gradcam.metadata import Preprocessing, metadata_props, write_metadata

    model = model.to(memory_format=torch.contiguous_format).eval()
    x = torch.zeros(1, 3, SIZE, SIZE)
    torch.onnx.export(model, x, str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    m = onnx.load(str(path))
    write_metadata(m, metadata_props(
        preprocessing=Preprocessing(size=(SIZE, SIZE), layout="NCHW", color="RGB", scale=1 / 255,
                                    mean=(MEAN,) * 3, std=(STD,) * 3),
        labels=CLASSES, label_offset=0, score_output="logits"))
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(path))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=12000, help="training scenes")
    ap.add_argument("--heldout", type=int, default=2000, help="held-out scenes (other seed)")
    ap.add_argument("--pointing", type=int, default=500, help="held-out scenes for pointing game")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--loc-weight", type=float, default=1.0,
                    help="weight of the auxiliary CAM localisation loss (0 = plain training)")
    ap.add_argument("--out", type=Path, default=HERE / "demo.onnx")
    ap.add_argument("--state", type=Path,
                    default=Path(tempfile.gettempdir()) / "onnx_gradcam_demo_state.pt",
                    help="where the trained weights are saved before export")
    args = ap.parse_args()

    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(2)
    t0 = time.time()

    train_x, train_y, train_m = make_dataset(args.train, seed=TRAIN_SEED, size=SIZE)
    train_cells = torch.from_numpy(cell_masks(train_m, SIZE // 4))
    del train_m
    held_x, held_y, held_m = make_dataset(args.heldout, seed=HELDOUT_SEED, size=SIZE)
    print(f"generated {args.train} training + {args.heldout} held-out scenes "
          f"in {time.time() - t0:.0f}s", flush=True)

    model = DemoNet().to(memory_format=torch.channels_last)  # channels_last: ~6x faster on CPU
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps_per_epoch = args.train // args.batch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, pct_start=0.15,
                                                total_steps=args.epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(0)
    labels_t = torch.from_numpy(train_y)
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(args.train, generator=gen).numpy()
        total = 0.0
        for s in range(steps_per_epoch):
            idx = np.sort(order[s * args.batch:(s + 1) * args.batch])
            x, cells = augment([to_input(train_x[idx]), train_cells[idx]], gen)
            logits, feats = model.forward_with_features(
                x.contiguous(memory_format=torch.channels_last))
            loss = F.cross_entropy(logits, labels_t[idx])
            if args.loc_weight:
                aux = localisation_loss(model, feats, labels_t[idx], cells)
                loss = loss + args.loc_weight * aux
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        acc = accuracy(model, held_x, held_y)
        print(f"epoch {epoch + 1}/{args.epochs}  loss {total / steps_per_epoch:.4f}  "
              f"held-out acc {acc:.4f}  [{time.time() - t0:.0f}s]", flush=True)

    model = model.to(memory_format=torch.contiguous_format)
    n = min(args.pointing, args.heldout)
    acc = accuracy(model, held_x, held_y)
    pg_pred = pointing_game(model, held_x[:n], held_y[:n], held_m[:n], use_label=False)
    pg_true = pointing_game(model, held_x[:n], held_y[:n], held_m[:n], use_label=True)
    train_time = time.time() - t0
    print(f"held-out accuracy {acc:.4f} on {args.heldout} scenes (seed {HELDOUT_SEED})")
    print(f"pointing game (Grad-CAM on last ReLU, {n} held-out scenes): "
          f"predicted class {pg_pred:.4f}, true class {pg_true:.4f}")
    torch.save(model.state_dict(), args.state)
    export(model, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB); "
          f"total time {train_time:.0f}s", flush=True)


if __name__ == "__main__":
    main()
