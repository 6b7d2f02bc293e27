"""``onnx-gradcam run [MODEL] IMAGES_OR_DIRS... -o OUTDIR``: heatmaps for images."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import typer
from rich.console import Console

from onnx_gradcam.cams import METHODS
from onnx_gradcam.cli.progress import image_bar
from onnx_gradcam.errors import OnnxGradCamError
from onnx_gradcam.explainer import Explainer
from onnx_gradcam.images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, list_images
from onnx_gradcam.labels import Labels
from onnx_gradcam.metadata import PRESETS, Preprocessing
from onnx_gradcam.model import is_onnx_model
from onnx_gradcam.runner import RunOptions, flagged_maps, run_job
from onnx_gradcam.target_request import segment_request, similar_request

DEMO_MODEL = Path(__file__).resolve().parents[2] / "models" / "demo.onnx"


def _numbers(text: str | None, flag: str, count: int) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise OnnxGradCamError(f"{flag} {text!r}: expected {count} comma-separated numbers") \
            from None
    if not all(math.isfinite(v) for v in values):
        raise OnnxGradCamError(f"{flag} {text!r}: numbers must be finite")
    if len(values) == 1:
        values = values * count
    if len(values) != count:
        raise OnnxGradCamError(f"{flag} {text!r}: expected {count} comma-separated numbers")
    return values


def preprocessing_from_flags(base: Preprocessing, preset: str | None, size: str | None,
                             mean: str | None, std: str | None, scale: float | None,
                             bgr: bool | None, nhwc: bool | None, gray: bool | None = None
                             ) -> Preprocessing | None:
    """The model's preprocessing (``base``: :attr:`Explainer.model_preprocessing`, layout and
    channels from the model) with a preset and explicit flags laid over it (None: no flags)."""
    if all(v is None for v in (preset, size, mean, std, scale, bgr, nhwc, gray)):
        return None
    pre = base
    if preset is not None:
        if preset not in PRESETS:
            raise OnnxGradCamError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        fields = dict(PRESETS[preset])
        if pre.color == "GRAY":  # a preset's channel order means nothing to a gray model
            fields.pop("color")
        pre = pre.with_(**fields)
    hw = _numbers(size, "--size", 2)
    if hw and not all(v >= 1 and v == int(v) for v in hw):
        raise OnnxGradCamError(f"--size {size!r}: expected two whole numbers of pixels, ≥ 1")
    if std is not None and 0.0 in _numbers(std, "--std", 3):
        raise OnnxGradCamError(f"--std {std!r}: a std of 0 divides by zero")
    if scale is not None and not math.isfinite(scale):
        raise OnnxGradCamError(f"--scale {scale}: must be a finite number")
    return pre.with_(
        size=(int(hw[0]), int(hw[1])) if hw else None, mean=_numbers(mean, "--mean", 3),
        std=_numbers(std, "--std", 3), scale=scale,
        color="GRAY" if gray else None if bgr is None else ("BGR" if bgr else "RGB"),
        layout=None if nhwc is None else ("NHWC" if nhwc else "NCHW"))


def split_model(paths: list[Path]) -> tuple[Path | None, list[Path]]:
    """(model, images): the first path is the model if it is named .onnx or, not being an
    image by its content, parses as ONNX (so ``m/model.bin`` is a model); else no model."""
    if not paths:
        return None, []
    first = paths[0]
    if first.suffix.lower() == ".onnx":
        return first, paths[1:]
    if (not first.is_file() or first.suffix.lower() in (".txt", ".parquet")
            or cv2.haveImageReader(str(first))):
        return None, paths
    if is_onnx_model(first) or first.suffix.lower() not in IMAGE_SUFFIXES:
        return first, paths[1:]  # not an ONNX model either: loading it says so in one line
    return None, paths


def run_command(
    paths: list[Path] = typer.Argument(..., help="[MODEL.onnx] then image files, folders, "
                                       ".txt lists of paths, quoted patterns or .parquet "
                                       "files (no model: the bundled demo model)"),
    output: Path = typer.Option(..., "-o", "--output", help="output folder"),
    method: str = typer.Option("gradcam", "--method", "-m",
                               help=f"one of {', '.join(METHODS)}; a comma list; or all"),
    layer: list[str] = typer.Option(None, "--layer", help="target layer tensor (repeatable; "
                             "NAME:NHWC or NAME:NCHW states its layout)"),
    target: str = typer.Option(None, "--target", help="class index or label to explain"),
    top_k: int = typer.Option(1, "--top-k", min=1, help="explain each of the top K classes"),
    target_output: str = typer.Option(None, "--target-output",
                                      help="the graph output to score (where there are several)"),
    segment: str = typer.Option(None, "--segment", help="class index or label of an (N, C, H, "
                                "W) segmentation output: explain Σ mask · out[CLASS]"),
    mask: Path = typer.Option(None, "--mask", help="with --segment: PNG or .npy (H, W) weights "
                              "at the output's or the input's size (default: the pixels the "
                              "model assigns to CLASS)"),
    similar_to: Path = typer.Option(None, "--similar-to", help="explain the cosine similarity "
                                    "of each image's output (embedding) with this image's"),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    provider: str = typer.Option("auto", "--provider", help="auto, cpu or cuda"),
    alpha: float = typer.Option(0.5, "--alpha", help="heatmap weight in the overlay"),
    colormap: str = typer.Option("jet", "--colormap", help="an OpenCV colormap name"),
    save_npy: bool = typer.Option(False, "--save-npy", help="also save raw cams as .npy"),
    score: str = typer.Option("logits", "--score", help="logits (pre-softmax) or probabilities"),
    preset: str = typer.Option(None, "--preset", help="imagenet, inception, caffe or raw"),
    size: str = typer.Option(None, "--size", help="model input size H,W"),
    mean: str = typer.Option(None, "--mean", help="per-channel mean after scaling"),
    std: str = typer.Option(None, "--std", help="per-channel std"),
    scale: float = typer.Option(None, "--scale", help="pixel multiplier (e.g. 0.00392)"),
    bgr: bool = typer.Option(None, "--bgr/--rgb", help="channel order the model expects"),
    nhwc: bool = typer.Option(None, "--nhwc/--nchw", help="input layout (default: the model's)"),
    gray: bool = typer.Option(None, "--gray", help="feed one gray channel (default for "
                              "1-channel models)"),
    labels: Path = typer.Option(None, "--labels", help="labels file: one per line or idx:label"),
    grid: bool = typer.Option(False, "--grid", help="per image: original + each method's "
                              "overlay, captioned; plus contact_sheet.png"),
    aug_smooth: bool = typer.Option(False, "--aug-smooth", help="average over flips × scales"),
    eigen_smooth: bool = typer.Option(False, "--eigen-smooth",
                                      help="first principal component of weighted activations"),
    scorecam_batch: int = typer.Option(32, "--scorecam-batch", min=1,
                                       help="masked inputs per Score-CAM forward pass"),
    gradient_builder: str = typer.Option("onnx", "--gradient-builder",
                                         help="onnx (ours) or ort-training (isolated venv)"),
    max_pixels: int = typer.Option(
        DEFAULT_MAX_PIXELS, "--max-pixels", min=1,
        help="largest image (width × height) to decode; a larger one is an error row, read "
             "from its header only"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace the outputs of a "
                                   "previous run in -o (only the files its report.json lists)"),
    exact: bool = typer.Option(False, "--exact", help="ONNX Runtime optimisation only up to "
                               "EXTENDED (no NCHWc kernels): for maps on a knife edge"),
    knife_edges: bool = typer.Option(
        True, "--knife-edges/--no-knife-edges",
        help="count, per map, the kink decisions within float32 rounding of their threshold "
             "(report.json, warnings); where the head has kink ops (ReLU, MaxPool, …) it "
             "costs about one more explain per batch"),
    out_format: str = typer.Option(None, "--format", help="files (overlay pictures; the "
                                   "local engine's default) or parquet (the maps in "
                                   "OUT/results rows; Ray's default)"),
    resume: bool = typer.Option(False, "--resume", help="finish a previous run in -o: skip "
                                "the images its rows list"),
    engine: str = typer.Option("local", "--engine", help="local, or ray (needs "
                               "onnx-gradcam[ray])"),
    ray_address: str = typer.Option("local", "--ray-address", help="ray: local (start one "
                                    "here), auto (a running cluster) or an address"),
    workers: int = typer.Option(None, "--workers", min=1, help="ray: explaining actors "
                                "(default: one per CPU, at most 4)"),
    gpus_per_worker: float = typer.Option(0.0, "--gpus-per-worker", min=0.0,
                                          help="ray: GPUs each actor reserves"),
    image_column: str = typer.Option("image", "--image-column", help="a .parquet input's "
                                     "column of encoded images (binary, or a struct with "
                                     "bytes)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar or summary"),
) -> None:
    """Explain images with a CAM method; write overlays, optional .npy and report.json."""
    given, images = split_model(paths)
    model = given or DEMO_MODEL
    if not images:
        raise OnnxGradCamError("no images given: pass image files or folders after the model")
    if mask is not None and segment is None:
        raise OnnxGradCamError("--mask is an option of --segment")
    if segment is not None and similar_to is not None:
        raise OnnxGradCamError("--segment and --similar-to are two targets: pass one")
    methods = list(METHODS) if method == "all" else [m.strip() for m in method.split(",")]
    # with --engine ray the command's explainers only read the model: the actors explain
    here = "cpu" if engine == "ray" else provider
    explainers = [Explainer(model, layer=layer or None, method=m, providers=here, score=score,
                            batch_size=batch_size, scorecam_batch=scorecam_batch,
                            aug_smooth=aug_smooth, eigen_smooth=eigen_smooth,
                            gradient_builder=gradient_builder, exact=exact,
                            output=target_output) for m in methods]
    explainer = explainers[0]
    pre = preprocessing_from_flags(explainer.model_preprocessing, preset, size, mean,
                                   std, scale, bgr, nhwc, gray)
    meta = explainer.model.metadata
    names = Labels.from_file(labels) if labels else Labels(meta.labels, meta.label_offset)
    request = None
    if segment is not None:
        request = segment_request(explainer, segment, names, mask,
                                  explainer.preprocessing(pre))
    elif similar_to is not None:
        request = similar_request(explainer, similar_to, explainer.preprocessing(pre),
                                  max_pixels)
    demo = given is None
    if engine not in ("local", "ray"):
        raise OnnxGradCamError(f"--engine {engine!r}: choose local or ray")
    out_format = out_format or ("parquet" if engine == "ray" else "files")
    if out_format not in ("files", "parquet"):
        raise OnnxGradCamError(f"--format {out_format!r}: choose files or parquet")
    if resume and overwrite:
        raise OnnxGradCamError("--resume and --overwrite contradict each other; pass one")
    options = RunOptions(output, target, top_k, save_npy, alpha, colormap, batch_size, grid,
                         max_pixels, overwrite, demo, out_format, resume, image_column,
                         knife_edges, request)
    run_engine = None
    if engine == "ray":
        from onnx_gradcam.ray_engine import RayEngine

        run_engine = RayEngine(model, dict(
            layer=layer or None, providers=provider, score=score, batch_size=batch_size,
            scorecam_batch=scorecam_batch, aug_smooth=aug_smooth, eigen_smooth=eigen_smooth,
            gradient_builder=gradient_builder, exact=exact, output=target_output), methods, names,
            options, ray_address,
            workers, gpus_per_worker)
    total = len(list_images(images, image_column))
    console = Console(stderr=True, quiet=quiet)
    if demo:
        console.print(f"no model given: using the bundled demo model {DEMO_MODEL}",
                      markup=False, highlight=False)
    with image_bar("explaining", console) as bar:
        task = bar.add_task("run", total=total)
        report = run_job(explainers, images, options, names, pre,
                         progress=lambda n: bar.advance(task, n), engine=run_engine)
    done, seconds = report["explained_this_run"], report["seconds"]
    console.print(f"{done} image(s) explained with {', '.join(methods)} at "
                  f"{', '.join(report['layers'])} on {report['provider']} ({engine} engine) in "
                  f"{seconds:.1f} s, {done / max(seconds, 1e-9):.1f} images/s; "
                  f"{len(report['errors'])} error(s); wrote {output}/ (report.json, results/)",
                  markup=False, highlight=False)
    for line in flagged_maps(report):
        typer.secho(f"warning: {line}", fg=typer.colors.YELLOW, err=True)
    for error in report["errors"]:
        typer.secho(f"error: {error['error']}", fg=typer.colors.RED, err=True)
    if report["errors"]:
        raise typer.Exit(1)
