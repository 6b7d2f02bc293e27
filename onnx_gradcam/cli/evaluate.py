"""``onnx-gradcam evaluate MODEL IMAGES... [--method ...] [--masks DIR] [--reference MODEL]``:
faithfulness, and how far the maps are from an original model's."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from onnx_gradcam.cams import METHODS
from onnx_gradcam.cli.progress import image_bar
from onnx_gradcam.errors import OnnxGradCamError
from onnx_gradcam.evaluate import evaluate
from onnx_gradcam.explainer import Explainer
from onnx_gradcam.images import DEFAULT_MAX_PIXELS, check_output_file, list_images, write_json


def evaluate_command(
    model: Path = typer.Argument(..., help="ONNX model file"),
    images: list[Path] = typer.Argument(..., help="image files or folders"),
    method: str = typer.Option("gradcam", "--method", "-m",
                               help=f"one of {', '.join(METHODS)}; a comma list; or all"),
    masks: Path = typer.Option(None, "--masks", help="folder of ground-truth masks (same stems)"),
    layer: list[str] = typer.Option(None, "--layer", help="target layer tensor (repeatable; "
                             "NAME:NHWC or NAME:NCHW states its layout)"),
    steps: int = typer.Option(20, "--steps", min=2, help="deletion/insertion steps"),
    target_output: str = typer.Option(None, "--target-output", help="the graph output of "
                                      "class scores to evaluate (where there are several)"),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    provider: str = typer.Option("auto", "--provider", help="auto, cpu or cuda"),
    output: Path = typer.Option(None, "--json", help="also write the results as JSON here"),
    max_pixels: int = typer.Option(
        DEFAULT_MAX_PIXELS, "--max-pixels", min=1,
        help="largest image or mask (width × height) to decode; a larger one is listed, read "
             "from its header only"),
    engine: str = typer.Option("local", "--engine", help="local, or ray (needs "
                               "onnx-gradcam[ray])"),
    ray_address: str = typer.Option("local", "--ray-address", help="ray: local, auto or an "
                                    "address"),
    workers: int = typer.Option(None, "--workers", min=1, help="ray: scoring actors"),
    gpus_per_worker: float = typer.Option(0.0, "--gpus-per-worker", min=0.0,
                                          help="ray: GPUs each actor reserves"),
    reference: Path = typer.Option(
        None, "--reference", help="the original model (e.g. the float32 model an int8 or fp16 "
        "copy was made from): report how far MODEL's maps are from its maps"),
    reference_layer: list[str] = typer.Option(
        None, "--reference-layer", help="the reference's target layer (repeatable; default: "
        "its auto-detected one)"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Average Drop, Increase in Confidence, deletion/insertion AUC and the pointing game
    (over the images that have a mask of their size: the column says how many); with
    --reference, per method the mean |Δcam|, correlation and pointing agreement (the two maps'
    maxima within 15/224 of the longer side) against the reference model's maps of the same
    targets."""
    if masks is not None and not masks.is_dir():
        raise OnnxGradCamError(f"{masks}: masks must be a folder")
    methods = list(METHODS) if method == "all" else [m.strip() for m in method.split(",")]
    here = "cpu" if engine == "ray" else provider  # with Ray the actors explain
    explainers = [Explainer(model, layer=layer or None, method=m, providers=here,
                            batch_size=batch_size, output=target_output) for m in methods]
    explainers[0].class_graph  # noqa: B018 - the metrics are of class scores: refused up front
    originals = [Explainer(reference, layer=reference_layer or None, method=m,
                           providers=provider, batch_size=batch_size)
                 for m in methods] if reference is not None else None
    if output is not None:
        reads = [*explainers[0].model.files, *list_images(images),
                 *(list_images([masks]) if masks else []),
                 *(originals[0].model.files if originals else [])]
        check_output_file(output, reads, "--json", "evaluate.json")
    run_engine = None
    if engine == "ray":
        from onnx_gradcam.ray_engine import evaluate_engine

        run_engine = evaluate_engine(model, {"layer": layer or None, "providers": provider,
                                             "batch_size": batch_size, "output": target_output},
                                     methods, batch_size,
                                     max_pixels, ray_address, workers, gpus_per_worker)
    elif engine != "local":
        raise OnnxGradCamError(f"--engine {engine!r}: choose local or ray")
    console = Console(stderr=True, quiet=quiet)
    with image_bar("evaluating", console) as bar:
        task = bar.add_task("evaluate", total=len(list_images(images)))
        result = evaluate(explainers, images, masks, steps=steps, batch_size=batch_size,
                          progress=lambda n: bar.advance(task, n), max_pixels=max_pixels,
                          engine=run_engine, reference=originals)
    columns = ["method", "images", "avg drop % ↓", "incr. conf. % ↑", "deletion AUC ↓",
               "insertion AUC ↑", "pointing % ↑"]
    if originals:
        columns += ["vs reference: |Δcam| ↓", "corr. ↑", "pointing agree % ↑"]
    table = Table(*columns)
    for name, row in result["metrics"].items():
        cells = [name, str(row["images"]), f"{row['average_drop']:.2f}",
                 f"{row['increase_in_confidence']:.1f}", f"{row['deletion_auc']:.4f}",
                 f"{row['insertion_auc']:.4f}", _pointing(row)]
        if originals:
            cells += [f"{row['reference_mean_abs_delta']:.4f}",
                      f"{row['reference_correlation']:.3f}",
                      f"{row['reference_pointing_agreement']:.1f}"]
        table.add_row(*cells)
    Console().print(table)
    if output:
        write_json(output, result)
    problems = result.get("mask_problems", [])
    for error in [*result["errors"], *({"error": p["problem"]} for p in problems)]:
        typer.secho(f"error: {error['error']}", fg=typer.colors.RED, err=True)
    if result["errors"] or problems:
        raise typer.Exit(1)


def _pointing(row: dict) -> str:
    """The pointing game and over how many of the images (those with a usable mask)."""
    if "pointing_images" not in row:
        return "-"
    share = f"{row['pointing_images']}/{row['images']} images"
    return f"{row['pointing_game']:.1f} ({share})" if "pointing_game" in row else f"- ({share})"
