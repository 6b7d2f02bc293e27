"""``onnx-gradcam inspect MODEL``: what the tool sees in a model."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from onnx_gradcam.autodiff.builder import head_nodes
from onnx_gradcam.errors import OnnxGradCamError
from onnx_gradcam.explainer import Explainer
from onnx_gradcam.graph import readable
from onnx_gradcam.model import candidate_layers, detect_layer, load_model, resolve_layer
from onnx_gradcam.verify import PASS_RTOL


def inspect_command(
    model: Path = typer.Argument(..., help="ONNX model file"),
    layer: str = typer.Option(None, "--layer", help="show the head for this target layer "
                              "(NAME:NHWC or NAME:NCHW states its layout)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of tables"),
    verify: bool = typer.Option(False, "--verify", help="check the gradient graph numerically "
                                "on this model (float64 finite differences); exit 1 on FAIL"),
    image: Path = typer.Option(None, "--image", help="with --verify: the image to check at "
                               "(default: a synthetic one)"),
    directions: int = typer.Option(4, "--directions", min=1, help="with --verify: directions"),
    provider: str = typer.Option("cpu", "--provider", help="with --verify: auto, cpu or cuda"),
    target_output: str = typer.Option(None, "--target-output",
                                      help="the graph output to score (where there are several)"),
) -> None:
    """Inputs, outputs, layout, score, the detected target layer, candidates and the head's ops;
    with --verify, a numerical check of the gradient graph on this model."""
    if verify:
        _verify(model, layer, image, directions, provider, as_json)
        return
    if image is not None:
        raise OnnxGradCamError("--image is an option of --verify")
    loaded = load_model(model, target_output)
    info = loaded.info
    score = loaded.logits
    chosen = resolve_layer(loaded, layer, score) if layer else (
        resolve_layer(loaded, loaded.metadata.activation, score) if loaded.metadata.activation
        else detect_layer(loaded, score))
    head = [info.nodes[i].op_type for i in head_nodes(info, chosen.name, score)]
    facts = {
        "model": str(model),
        "opset": info.opset,
        "inputs": [{"name": n, "shape": readable(info.shapes.get(n))} for n in info.graph_inputs],
        "outputs": [{"name": n, "shape": readable(info.shapes.get(n))} for n in info.graph_outputs],
        "input_layout": loaded.input_layout,
        "score_output": loaded.score_output,
        "score": {"tensor": score,
                  "kind": "logits" if score != loaded.score_output else "output"},
        "layer": {"name": chosen.name, "shape": readable(chosen.shape), "op": chosen.op,
                  "layout": chosen.layout, "layout_evidence": chosen.verdict.lines(),
                  **({"grid": list(chosen.grid.sizes), "leading_tokens": chosen.grid.skip}
                     if chosen.grid else {})},
        "head_ops": head,
        "candidates": [{"name": c.name, "shape": readable(c.shape), "op": c.op, "layout": c.layout}
                       for c in candidate_layers(loaded, score)],
        "metadata": {p.key: p.value for p in loaded.proto.metadata_props},
    }
    if as_json:
        typer.echo(json.dumps(facts, indent=2))
        return
    console = Console()
    console.print(f"[bold]{model}[/] (opset {info.opset}, input layout {loaded.input_layout})")
    for kind in ("inputs", "outputs"):
        for item in facts[kind]:
            console.print(f"  {kind[:-1]:6} {item['name']}  {item['shape']}")
    console.print(f"  score  {score} ({facts['score']['kind']}; output {loaded.score_output})")
    console.print(f"  layer  [green]{chosen.name}[/] {readable(chosen.shape)} "
                  f"from {chosen.op}, {chosen.verdict.summary()}", soft_wrap=True)
    console.print(f"  head   {' → '.join(head) or '(the layer is the score)'}")
    table = Table("candidate layer", "shape", "op", "layout", title="candidates (forward order)")
    for c in facts["candidates"]:
        table.add_row(c["name"], str(c["shape"]), c["op"], c["layout"])
    console.print(table)
    for key, value in facts["metadata"].items():
        console.print(f"  {key} = {value[:80]}")



def _verify(model: Path, layer: str | None, image: Path | None, directions: int,
            provider: str, as_json: bool) -> None:
    explainer = Explainer(model, layer=layer, providers=provider)
    report = explainer.verify(image, directions=directions)
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
    else:
        console = Console()
        console.print(f"[bold]{model}[/]: gradient check at {report.layer} "
                      f"(image: {report.image}; targets {report.targets})")
        console.print("  (a) our gradient graph in float64 vs central finite differences, "
                      "relative error per direction: "
                      + ", ".join(f"{e:.1e}" for e in report.errors))
        colour = "green" if report.passed else "red"
        console.print(f"      verdict [{colour}]{report.verdict}[/] (≤ {PASS_RTOL:.0e})"
                      + (f"; suspect: {report.suspect}" if report.suspect else ""))
        console.print(f"  (b) float32 gradient on {explainer.provider} vs float64: relative "
                      f"error {report.float32_error:.1e}")
        for i, target in enumerate(report.targets):
            k = report.knife.as_dict(i)
            console.print(f"      image {i} target {target}: {k['count']} kink decision(s) "
                          f"within float32 rounding ({', '.join(k['ops']) or 'none'}), a flip "
                          f"would move the gradient by ~{k['shift']:.1e}; "
                          f"{k.get('flips_vs_float64', 0)} taken differently from float64")
        console.print(f"  {report.seconds:.1f} s")
    if not report.passed:
        raise typer.Exit(1)
