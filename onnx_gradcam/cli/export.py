"""``onnx-gradcam export MODEL -o explain.onnx``: the whole explanation in one ONNX model."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from onnx_gradcam.cams import GRAPH_METHODS
from onnx_gradcam.errors import OnnxGradCamError
from onnx_gradcam.explainer import Explainer
from onnx_gradcam.images import check_output_file
from onnx_gradcam.triton import write_triton


def export_command(
    model: Path = typer.Argument(..., help="the ONNX classifier to explain"),
    output: Path = typer.Option(None, "-o", "--output", help="where to write the exported model"),
    method: str = typer.Option("gradcam", "--method", "-m",
                               help=f"one of {', '.join(GRAPH_METHODS)}"),
    layer: list[str] = typer.Option(None, "--layer", help="target layer tensor (repeatable; "
                             "NAME:NHWC or NAME:NCHW states its layout)"),
    score: str = typer.Option("logits", "--score", help="logits (pre-softmax) or probabilities"),
    target_output: str = typer.Option(None, "--target-output",
                                      help="the graph output to score (where there are several)"),
    target_kind: str = typer.Option(
        None, "--target-kind", help="segmentation, predicted_segmentation, similarity or "
        "output: take that kind's target inputs (category+mask, category, vector, "
        "index+index_weight) instead of `target`"),
    upsample: bool = typer.Option(True, "--upsample/--no-upsample",
                                  help="output `cam` at the input size (else only `cam_coarse`)"),
    target_required: bool = typer.Option(
        False, "--target-required",
        help="make `target` a required input (onnxruntime's JavaScript API cannot set an "
             "optional one)"),
    triton: Path = typer.Option(None, "--triton", help="also write a Triton model repository "
                                "entry here: NAME/config.pbtxt and NAME/1/model.onnx"),
    triton_name: str = typer.Option(None, "--triton-name",
                                    help="Triton model name (default: MODEL's stem + _explain)"),
) -> None:
    """Export MODEL + gradient + CAM as one standard ONNX model: inputs `input` and optional
    `target` (default −1 = argmax), outputs the original scores, `cam`, `cam_coarse`,
    `cam_target`. Runs on any ONNX Runtime (C++, C#, Java, Node, web, Triton)."""
    if output is None and triton is None:
        raise OnnxGradCamError("nowhere to write: pass -o FILE.onnx and/or --triton DIR")
    explainer = Explainer(model, layer=layer or None, method=method, providers="cpu",
                          score=score, output=target_output)
    name = triton_name or f"{model.stem}_explain"
    if triton is not None:  # refuse before writing anything
        for path in (triton / name / "1" / "model.onnx", triton / name / "config.pbtxt"):
            check_output_file(path, explainer.model.files, "--triton")
    exported = explainer.export(output, upsample=upsample, target_required=target_required,
                                target_kind=target_kind)
    console = Console(stderr=True)
    where = [str(output)] if output is not None else []
    if triton is not None:
        where.append(f"{write_triton(exported, triton, name, explainer.model.files)}/")
    size = exported.ByteSize() / max(1, model.stat().st_size)
    outputs = ", ".join(o.name for o in exported.graph.output)
    console.print(f"exported {explainer.method.name} at {', '.join(explainer.layer_names)} "
                  f"to {' and '.join(where)}; outputs: {outputs}; {size:.2f}x the model's size",
                  soft_wrap=True, markup=False, highlight=False)
