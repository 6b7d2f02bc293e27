"""Images in and out: decode (OpenCV) within a pixel budget, preprocess, overlay, save
atomically under names that fit the file system."""

from __future__ import annotations

import functools
import glob
import hashlib
import io
import json
import math
import os
import re
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from onnx_gradcam.errors import OnnxGradCamError
from onnx_gradcam.metadata import Preprocessing

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
COLORMAPS = {name[len("COLORMAP_"):].lower(): getattr(cv2, name)
             for name in dir(cv2) if name.startswith("COLORMAP_")}
#: Largest image (width × height) decoded by default: well below OpenCV's own gigapixel cap.
DEFAULT_MAX_PIXELS = 64_000_000
#: Overlays of larger originals are drawn on a copy scaled down to this many pixels.
OVERLAY_MAX_PIXELS = 4_000_000
#: OpenCV's reduced decodes: libjpeg scales while decoding; other formats decode and then shrink.
_REDUCED = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}


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
        if not np.isfinite(image).all():
            raise OnnxGradCamError(f"{source}: non-finite pixel values (NaN or infinity)")
        scale = 255.0 if float(image.max()) <= 1.0 else 1.0
        image = np.clip(image * scale, 0, 255).round().astype(np.uint8)
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


def header_size(path: Path | io.BytesIO) -> tuple[int, int] | None:
    """(H, W) from the file's header without decoding its pixels (Pillow reads only the
    header), or None where Pillow does not know the format. Past Pillow's own
    decompression-bomb limit only the pixel count is known (its error names it): (count, 1)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height = im.size
                return int(height), int(width)
    except Image.DecompressionBombError as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        return (int(found.group(1)), 1) if found else (2 * (Image.MAX_IMAGE_PIXELS or 0), 1)
    except Exception:  # noqa: BLE001 - not a format Pillow knows: OpenCV decides below
        return None


def _over_budget(path: Path, size: tuple[int, int], max_pixels: int) -> OnnxGradCamError:
    height, width = size
    shown = f"{width} × {height} pixels" if width > 1 else f"{height} pixels"
    return OnnxGradCamError(f"{path}: {shown} is over the pixel budget of {max_pixels} "
                            "(--max-pixels)")


def _reduction(size: tuple[int, int], at_least: tuple[int, int] | None) -> int:
    """The largest OpenCV decode reduction (1, 2, 4, 8) that keeps the image at least
    OVERLAY_MAX_PIXELS and at least ``at_least`` = (H, W) on each side."""
    height, width = size
    keep_h, keep_w = at_least or (1, 1)
    best = 1
    for d in _REDUCED:
        if ((height // d) * (width // d) >= OVERLAY_MAX_PIXELS and height // d >= keep_h
                and width // d >= keep_w):
            best = d
    return best


def decode_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS,
                 at_least: tuple[int, int] | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode an image file to RGB uint8 and give its original (H, W) too.

    The size is read from the header first: an image over ``max_pixels`` is refused before
    any pixel is decoded. Large images are decoded reduced (OpenCV's ``IMREAD_REDUCED_*``) to
    no less than :data:`OVERLAY_MAX_PIXELS` and ``at_least`` (the model's input size), so
    memory follows the budget and the overlay size, not the file. One clear error for
    missing, empty, undecodable and over-budget files."""
    path = Path(path)
    stored = None if parquet_item(path) is None else io.BytesIO(image_bytes(path))
    if stored is None and not path.is_file():
        raise OnnxGradCamError(f"{path}: no such image file")
    if (path.stat().st_size if stored is None else len(stored.getvalue())) == 0:
        raise OnnxGradCamError(f"{path}: empty file")
    size = header_size(stored or path)  # before reading a file: a bomb is refused unread
    if size is not None and size[0] * size[1] > max_pixels:
        raise _over_budget(path, size, max_pixels)
    data = path.read_bytes() if stored is None else stored.getvalue()
    d = _reduction(size, at_least) if size else 1
    flags = _REDUCED[d] | cv2.IMREAD_IGNORE_ORIENTATION if d > 1 else cv2.IMREAD_UNCHANGED
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    except cv2.error:  # OpenCV's own checks, e.g. its pixel cap on a header Pillow did not read
        image = None
    if image is None:
        raise OnnxGradCamError(f"{path}: cannot decode as an image (truncated or not an image)")
    original = size or (image.shape[0] * d, image.shape[1] * d)
    if original[0] * original[1] > max_pixels:
        raise _over_budget(path, original, max_pixels)
    if image.ndim == 3 and image.shape[2] >= 3:
        order = cv2.COLOR_BGRA2RGBA if image.shape[2] == 4 else cv2.COLOR_BGR2RGB
        image = cv2.cvtColor(image, order)
    return to_rgb8(image, str(path)), original


def read_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS,
               at_least: tuple[int, int] | None = None) -> np.ndarray:
    """Decode an image file to RGB uint8 (see :func:`decode_image`)."""
    return decode_image(path, max_pixels, at_least)[0]


def resize(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an RGB image to ``size`` = (H, W) with INTER_LINEAR (the model's view)."""
    height, width = size
    if rgb.shape[:2] == (height, width):
        return rgb
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_LINEAR)


def preprocess(rgb: np.ndarray, pre: Preprocessing, size: tuple[int, int]) -> np.ndarray:
    """RGB uint8 image → one model input (C, H, W) or (H, W, C) float32:
    x = (pixels · scale − mean) / std, in the model's colour order (or gray) and layout."""
    pixels = resize(rgb, size)
    if pre.color == "BGR":
        pixels = pixels[..., ::-1]
    mean = np.asarray(pre.mean, np.float32)
    std = np.asarray(pre.std, np.float32)
    if pre.color == "GRAY":  # OpenCV's luma (0.299 R + 0.587 G + 0.114 B), one channel
        pixels = cv2.cvtColor(pixels.astype(np.float32), cv2.COLOR_RGB2GRAY)[..., None]
        mean, std = mean[:1], std[:1]
    if pre.layout == "NCHW":
        pixels, mean, std = pixels.transpose(2, 0, 1), mean[:, None, None], std[:, None, None]
    # one float copy in the final layout, then in place (the same float32 operations in the
    # same order): a loaded batch decodes beside ONNX Runtime on the same cores
    x = pixels.astype(np.float32, order="C")
    np.multiply(x, np.float32(pre.scale), out=x)
    if mean.any():
        np.subtract(x, mean, out=x)
    if (std != 1).any():
        np.divide(x, std, out=x)
    return x


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


def bounded(rgb: np.ndarray, max_pixels: int = OVERLAY_MAX_PIXELS) -> np.ndarray:
    """``rgb`` scaled down (INTER_AREA) to at most ``max_pixels`` pixels, else unchanged."""
    height, width = rgb.shape[:2]
    if height * width <= max_pixels:
        return rgb
    f = math.sqrt(max_pixels / (height * width))
    size = (max(1, int(width * f)), max(1, int(height * f)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def name_max(folder: Path) -> int:
    """The longest file name (bytes) the file system takes in ``folder`` (255 if unknown)."""
    try:
        return min(255, os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255


def fit_name(stem: str, suffix: str, limit: int = 255) -> str:
    """``stem + suffix``, or where that passes ``limit`` bytes (as the file system encodes it),
    the stem cut at a character boundary plus ``~`` and a hash of the whole stem: stable, and
    distinct for distinct stems."""
    name = stem + suffix
    if len(os.fsencode(name)) <= limit:
        return name
    tag = "~" + hashlib.sha1(os.fsencode(stem)).hexdigest()[:10]
    room = limit - len(os.fsencode(tag + suffix))
    while stem and len(os.fsencode(stem)) > room:
        stem = stem[:-1]
    return stem + tag + suffix


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = fit_name("." + path.name, ".", name_max(path.parent) - 16)  # mkstemp adds 8
    fd, tmp = tempfile.mkstemp(prefix=prefix, dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def strict_json(value: object) -> str:
    """JSON that strict parsers read: non-finite floats (NumPy's too) become null."""

    def clean(v: object) -> object:
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, (float, np.floating)):
            return float(v) if math.isfinite(v) else None
        if isinstance(v, np.integer):
            return int(v)
        return v

    return json.dumps(clean(value), indent=2, allow_nan=False)


def write_json(path: Path, value: object) -> None:
    """Write :func:`strict_json` of ``value`` atomically."""
    atomic_write(path, strict_json(value).encode())


def check_output_file(path: Path, reads: Sequence[Path], flag: str = "-o",
                      example: str = "explain.onnx") -> None:
    """A file the command writes (``flag``) is not a folder, nor any file it reads (the model,
    its external data, images, masks): inputs are never outputs."""
    if path.is_dir():
        raise OnnxGradCamError(f"{flag} {path}: is a folder; name the file to write, e.g. "
                               f"{path / example}")
    target = path.resolve()
    for source in reads:
        if source.resolve() == target:
            raise OnnxGradCamError(f"{flag} {path}: is {source}, which this command reads; "
                                   "write to another file")


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


def list_images(paths: list[Path], image_column: str = "image") -> list[Path]:
    """Expand inputs into image files: a folder gives the image files directly inside it
    (sorted; sub-folders such as ``masks/`` are not entered); a ``.txt`` file the paths it
    lists, one a line (relative ones from the list's folder; blank lines and ``#`` comments
    skipped); a pattern naming no file (``'val/**/*.jpg'``, quoted so the shell leaves it)
    the files it matches, sorted; a ``.parquet`` file one ``FILE.parquet/COLUMN/ROW`` per row
    of its ``image_column`` of encoded images; any other file is kept as given."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out.extend(sorted(p for p in path.iterdir()
                              if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.suffix.lower() == ".txt" and path.is_file():
            out.extend(_listed(path))
        elif path.suffix.lower() == ".parquet" and path.is_file():
            out.extend(_parquet_images(path, image_column))
        elif not os.path.lexists(path) and set("*?[") & set(str(path)):
            matches = sorted(Path(m) for m in glob.glob(str(path), recursive=True))
            matches = [m for m in matches if m.is_file()]
            if not matches:
                raise OnnxGradCamError(f"{path}: the pattern matches no file")
            out.extend(matches)
        else:
            out.append(path)
    return out


def image_bytes(path: Path) -> bytes:
    """An image file's bytes, or a Parquet row's (``FILE.parquet/COLUMN/ROW``, see
    :func:`list_images`)."""
    item = parquet_item(path)
    if item is None:
        if not path.is_file():
            raise OnnxGradCamError(f"{path}: no such image file")
        return path.read_bytes()
    file, column, row = item
    starts = _row_groups(str(file))
    group = int(np.searchsorted(starts, row, side="right")) - 1
    if not 0 <= row < starts[-1]:
        raise OnnxGradCamError(f"{path}: {file} has {starts[-1]} rows")
    value = _group_column(str(file), column, group)[row - starts[group]]
    if value is None:
        raise OnnxGradCamError(f"{path}: no image bytes in this row")
    return value


def parquet_item(path: Path) -> tuple[Path, str, int] | None:
    """(file, column, row) where ``path`` names a row of a Parquet file's image column."""
    file = path.parent.parent
    if path.name.isdigit() and file.suffix.lower() == ".parquet" and file.is_file():
        return file, path.parent.name, int(path.name)
    return None


def _parquet_images(file: Path, column: str) -> list[Path]:
    """One path per row of ``file``'s image-bytes ``column`` (binary, or a struct with a
    ``bytes`` field as Hugging Face datasets write images)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(file)
    except (OSError, pa.ArrowException) as exc:
        raise OnnxGradCamError(f"{file}: not a readable Parquet file ({exc})") from None
    schema = meta.schema_arrow
    kind = schema.field(column).type if column in schema.names else None
    if kind is not None and pa.types.is_struct(kind):
        kind = kind.field("bytes").type if kind.get_field_index("bytes") >= 0 else None
    if kind is None or not (pa.types.is_binary(kind) or pa.types.is_large_binary(kind)):
        binary = [f.name for f in schema if pa.types.is_binary(f.type)
                  or pa.types.is_large_binary(f.type) or pa.types.is_struct(f.type)]
        raise OnnxGradCamError(f"{file}: no image-bytes column {column!r} (--image-column); "
                               f"candidates: {', '.join(binary) or 'none'}")
    return [file / column / str(i) for i in range(meta.metadata.num_rows)]


@functools.lru_cache(maxsize=8)
def _row_groups(file: str) -> list[int]:
    """The first row of each row group, then the row count."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(file).metadata
    return [int(v) for v in np.cumsum([0] + [meta.row_group(g).num_rows
                                             for g in range(meta.num_row_groups)])]


@functools.lru_cache(maxsize=2)  # images are read in order: one row group at a time in memory
def _group_column(file: str, column: str, group: int) -> list:
    import pyarrow as pa
    import pyarrow.parquet as pq

    values = pq.ParquetFile(file).read_row_group(group, columns=[column]).column(0)
    if pa.types.is_struct(values.type):
        values = values.combine_chunks().field("bytes")
    return values.to_pylist()


def _listed(path: Path) -> list[Path]:
    """The image paths a list file names."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise OnnxGradCamError(f"{path}: a list of images must be UTF-8 text, one path a "
                               "line") from None
    return [path.parent / line.strip() for line in lines
            if line.strip() and not line.lstrip().startswith("#")]
