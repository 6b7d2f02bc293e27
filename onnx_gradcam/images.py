"""Images in and out: decode (OpenCV), preprocess, overlay, save atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

from onnx_gradcam.errors import OnnxGradCamError
from onnx_gradcam.metadata import Preprocessing

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
COLORMAPS = {name[len("COLORMAP_"):].lower(): getattr(cv2, name)
             for name in dir(cv2) if name.startswith("COLORMAP_")}


def to_rgb8(image: np.ndarray, source: str = "image") -> np.ndarray:
    """Any decoded image (gray, BGR, BGRA; 8 or 16 bit, or float) → RGB uint8 (H, W, 3).

    Arrays given directly are taken as RGB(A); files decoded by OpenCV are BGR(A) and are
    converted by :func:`read_image` before they get here.
    """
    if image.size == 0 or image.ndim not in (2, 3):
        raise OnnxGradCamError(f"{source}: empty or not an image (shape {image.shape})")
    if image.dtype == np.uint16:
        image = (image.astype(np.float32) / 257.0).round().astype(np.uint8)
    elif image.dtype.kind == "f":
        scale = 255.0 if float(np.nanmax(image)) <= 1.0 else 1.0
        image = np.clip(np.nan_to_num(image) * scale, 0, 255).round().astype(np.uint8)
    elif image.dtype != np.uint8:
        raise OnnxGradCamError(f"{source}: unsupported pixel type {image.dtype}")
    if image.ndim == 2:
        image = image[..., None]
    channels = image.shape[2]
    if channels == 1:
        return np.repeat(image, 3, axis=2)
    if channels in (3, 4):
        return np.ascontiguousarray(image[..., :3])
    raise OnnxGradCamError(f"{source}: {channels} channels; expected gray, RGB or RGBA")


def synthetic_image(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A deterministic RGB uint8 image of ``size`` (H, W): smooth random blobs (noise blurred
    at a few scales), so activations vary as they do on photos."""
    rng = np.random.default_rng(seed)
    height, width = size
    image = np.zeros((height, width, 3), np.float32)
    for cells in (4, 16):
        coarse = rng.random((cells, cells, 3), dtype=np.float32)
        image += cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    image -= image.min()
    return np.uint8(255 * image / max(float(image.max()), 1e-6))


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file to RGB uint8; one clear error for missing/empty/undecodable files."""
    path = Path(path)
    if not path.is_file():
        raise OnnxGradCamError(f"{path}: no such image file")
    if path.stat().st_size == 0:
        raise OnnxGradCamError(f"{path}: empty file")
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise OnnxGradCamError(f"{path}: cannot decode as an image (truncated or not an image)")
    if image.ndim == 3 and image.shape[2] >= 3:
        order = cv2.COLOR_BGRA2RGBA if image.shape[2] == 4 else cv2.COLOR_BGR2RGB
        image = cv2.cvtColor(image, order)
    return to_rgb8(image, str(path))


def resize(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an RGB image to ``size`` = (H, W) with INTER_LINEAR (the model's view)."""
    height, width = size
    if rgb.shape[:2] == (height, width):
        return rgb
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_LINEAR)


def preprocess(rgb: np.ndarray, pre: Preprocessing, size: tuple[int, int]) -> np.ndarray:
    """RGB uint8 image → one model input (C, H, W) or (H, W, C) float32:
    x = (pixels · scale − mean) / std, in the model's colour order (or gray) and layout."""
    pixels = resize(rgb, size).astype(np.float32)
    if pre.color == "BGR":
        pixels = pixels[..., ::-1]
    mean = np.asarray(pre.mean, np.float32)
    std = np.asarray(pre.std, np.float32)
    if pre.color == "GRAY":  # OpenCV's luma (0.299 R + 0.587 G + 0.114 B), one channel
        pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)[..., None]
        mean, std = mean[:1], std[:1]
    x = (pixels * np.float32(pre.scale) - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1) if pre.layout == "NCHW" else x)


def overlay(rgb: np.ndarray, cam: np.ndarray, alpha: float = 0.5,
            colormap: str = "jet") -> np.ndarray:
    """pytorch-grad-cam's show_cam_on_image: heat = colormap(uint8(255·cam)) as RGB in [0, 1];
    out = (1 − α)·img + α·heat; out /= max(out); uint8(255·out). ``cam`` is resized to the image
    (INTER_LINEAR) if their sizes differ."""
    if colormap not in COLORMAPS:
        raise OnnxGradCamError(f"unknown colormap {colormap!r}; choose from "
                               f"{', '.join(sorted(COLORMAPS))}")
    if not 0.0 <= alpha <= 1.0:
        raise OnnxGradCamError(f"--alpha {alpha} must lie in [0, 1]")
    height, width = rgb.shape[:2]
    if cam.shape != (height, width):
        cam = cv2.resize(np.float32(cam), (width, height))
    heat = cv2.applyColorMap(np.uint8(255 * np.clip(cam, 0, 1)), COLORMAPS[colormap])
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB).astype(np.float32) / 255
    out = (1 - alpha) * (rgb.astype(np.float32) / 255) + alpha * heat
    out = out / np.max(out)
    return np.uint8(255 * out)


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_image(path: Path, rgb: np.ndarray) -> None:
    """Encode an RGB image by the file's suffix (PNG by default) and write it atomically."""
    ok, buffer = cv2.imencode(path.suffix or ".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OnnxGradCamError(f"{path}: cannot encode image")
    atomic_write(path, buffer.tobytes())


def save_array(path: Path, array: np.ndarray) -> None:
    """Save a .npy file atomically."""
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    atomic_write(path, buffer.getvalue())


def list_images(paths: list[Path]) -> list[Path]:
    """Expand folders into the image files directly inside them (sorted; sub-folders such as
    ``masks/`` are not entered); files are kept as given."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out.extend(sorted(p for p in path.iterdir()
                              if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            out.append(path)
    return out
