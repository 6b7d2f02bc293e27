"""``onnx-gradcam inspect MODEL``: what the tool sees in a model."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from onnx_gradcam.autodiff.builder import head_nodes
from onnx_gradcam.graph import readable
from onnx_gradcam.model import candidate_layers, detect_layer, load_model, resolve_layer


def inspect_command(
    model: Path = typer.Argument(..., help="ONNX model file"),
    layer: str = typer.Option(None, "--layer", help="show the head for this target layer "
                              "(NAME:NHWC or NAME:NCHW states its layout)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of tables"),
    target_output: str = typer.Option(None, "--target-output",
                                      help="the graph output to score (where there are several)"),
) -> None:
    """Inputs, outputs, layout, score, the detected target layer, candidates and the head's ops."""
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
                  **({"grid": [chosen.grid.h, chosen.grid.w], "leading_tokens": chosen.grid.skip}
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
