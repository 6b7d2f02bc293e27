"""``onnx-gradcam convert``: TensorFlow models → ONNX with the activation output and metadata.

Thin: parses arguments, shows the conversion stages, calls :func:`onnx_gradcam.converters.convert`.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from onnx_gradcam.errors import OnnxGradCamError
from onnx_gradcam.images import check_output_file


def _size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    parts = text.lower().replace("x", ",").split(",")
    try:
        h, w = (int(p) for p in parts) if len(parts) == 2 else (int(parts[0]),) * 2
    except ValueError:
        raise OnnxGradCamError(f"--input-size {text!r}: use H,W (e.g. 224,224)") from None
    return h, w


def _names(text: str | None) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip()) if text else ()


def convert_command(
    src: Path = typer.Argument(
        None, help="Keras .keras/.h5 file, SavedModel folder or frozen .pb (omit with --slim-net)"
    ),
    output: Path = typer.Option(..., "-o", "--output", help="ONNX file to write"),
    format: str | None = typer.Option(  # noqa: A002 - the CLI's name for it
        None, "--format", help="keras, savedmodel, frozen or slim (default: detected)"
    ),
    slim_net: str | None = typer.Option(None, "--slim-net", help="tf_slim.nets name, e.g. "
                                        "resnet_v2_50, inception_v3, vgg_16"),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="TF-Slim checkpoint prefix"),
    num_classes: int | None = typer.Option(None, "--num-classes", help="classes in the "
                                           "checkpoint's logits (1001 with a background class)"),
    label_offset: int | None = typer.Option(None, "--label-offset", help="score index of the "
                                            "first label (1 for 1001-class Slim models)"),
    labels: Path | None = typer.Option(None, "--labels", help="class names: one per line, or "
                                       "Slim's idx:label lines"),
    layer: str | None = typer.Option(None, "--layer", help="target layer: TF tensor/op name, "
                                     "Keras layer name or Slim end point (default: last conv "
                                     "activation)"),
    opset: int = typer.Option(17, "--opset", help="ONNX opset, 13-18"),
    nchw: bool = typer.Option(False, "--nchw", help="make the ONNX input NCHW"),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="compare TF and ONNX Runtime "
                                "outputs on one input"),
    preprocess: str | None = typer.Option(None, "--preprocess", help="inception, imagenet, "
                                          "caffe, raw, a Keras mode (tf, torch) or fields like "
                                          "scale=1/128,mean=1,std=1,color=RGB"),
    signature: str | None = typer.Option(None, "--signature", help="SavedModel signature "
                                         "(default serving_default)"),
    inputs: str | None = typer.Option(None, "--inputs", help="frozen graph: image input tensor"),
    outputs: str | None = typer.Option(None, "--outputs", help="frozen graph / SavedModel: "
                                       "class-score output"),
    input_size: str | None = typer.Option(None, "--input-size", help="H,W when the model "
                                          "does not fix it (Slim: default image size)"),
) -> None:
    """Convert a TensorFlow model to ONNX that `onnx-gradcam run` explains with no flags."""
    from onnx_gradcam import converters

    check_output_file(output, [p for p in (src, labels) if p is not None], "-o", "model.onnx")
    console = Console(stderr=True)
    with console.status("converting") as status:

        def on_stage(stage: str) -> None:
            console.log(stage)
            status.update(stage)

        options = converters.ConvertOptions(
            format=format, slim_net=slim_net, checkpoint=checkpoint, num_classes=num_classes,
            label_offset=label_offset, labels=labels, layer=layer, opset=opset, nchw=nchw,
            verify=verify, preprocess=preprocess, signature=signature, inputs=_names(inputs),
            outputs=_names(outputs), input_size=_size(input_size), on_stage=on_stage,
        )
        result = converters.convert(src, output, options)
    console.print(f"activation  {result.activation}  (from TF {result.tf_activation})")
    console.print(f"scores      {result.score_output}")
    if result.verification is not None:
        console.print(f"verified    {result.verification}")
    typer.echo(str(result.output))

