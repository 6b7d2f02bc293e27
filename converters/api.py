"""``convert``: any supported TensorFlow source → ONNX with activation output and metadata."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx_gradcam.converters import export, labels, layers, tfgraph
from onnx_gradcam.converters.options import ConvertOptions, check_opset, preprocessing_from
from onnx_gradcam.converters.source import Source
from onnx_gradcam.converters.verify import Verification, sample_input, verify

from onnx_gradcam.errors import OnnxGradCamError
from onnx_gradcam.metadata import Preprocessing, metadata_props, write_metadata


@dataclass(frozen=True)
class ConvertResult:
    """Where the model went and what was recorded about it."""

    output: Path
    format: str
    activation: str  # ONNX tensor (NCHW) recorded as onnx_gradcam.activation
    tf_activation: str  # the TF tensor it came from (NHWC)
    score_output: str
    metadata: dict[str, str]
    verification: Verification | None


def detect_format(src: Path, options: ConvertOptions) -> str:
    """The source format: ``--format``, else ``--slim-net``, else the path's shape."""
    if options.format is not None:
        fmt = options.format.lower()
        if fmt not in ("keras", "savedmodel", "frozen", "slim"):
            raise OnnxGradCamError(
                f"unknown --format {options.format!r}: use keras, savedmodel, frozen or slim"
            )
        return fmt
    if options.slim_net is not None:
        return "slim"
    if src.is_dir():
        if (src / "saved_model.pb").exists() or (src / "saved_model.pbtxt").exists():
            return "savedmodel"
        raise OnnxGradCamError(f"{src} is a folder without saved_model.pb: not a SavedModel")
    suffix = src.suffix.lower()
    if suffix in (".keras", ".h5", ".hdf5"):
        return "keras"
    if suffix == ".pb":
        return "frozen"
    if not src.exists():
        raise OnnxGradCamError(f"{src} does not exist")
    raise OnnxGradCamError(
        f"cannot tell the format of {src}: expected .keras/.h5, .pb, a SavedModel folder, or "
        "--slim-net with --checkpoint; or pass --format"
    )


def _load(fmt: str, src: Path, options: ConvertOptions) -> Source:
    if fmt == "keras":
        from onnx_gradcam.converters import keras

        return keras.load(src, options)
    if fmt == "savedmodel":
        from onnx_gradcam.converters import savedmodel

        return savedmodel.load(src, options)
    if fmt == "frozen":
        from onnx_gradcam.converters import frozen

        return frozen.load(src, options)
    from onnx_gradcam.converters import slim

    return slim.load(options)


def convert(src: Path | str | None, output: Path | str, options: ConvertOptions) -> ConvertResult:
    """Convert ``src`` to ONNX at ``output``; see ``onnx-gradcam convert --help``."""
    opset = check_opset(options.opset)
    src = Path(src) if src is not None else Path(".")
    output = Path(output)
    fmt = detect_format(src, options)
    if fmt != "slim" and not src.exists():
        raise OnnxGradCamError(f"{src} does not exist")
    stage = options.on_stage
    stage(f"loading {fmt} model")
    source = _load(fmt, src, options)

    stage("finding the target layer")
    graph = tfgraph.import_graph(source.graph_def)
    shapes = tfgraph.static_shapes(graph)
    if options.layer:
        tf_act = layers.resolve_layer(
            source.graph_def, source.score, options.layer, shapes, source.layer_aliases
        )
    else:
        tf_act = source.default_layer or layers.find_activation(
            source.graph_def, source.score, shapes
        )
    score = layers.tensor_name(source.score)
    in_shape = shapes.get(layers.op_name(source.inputs[0]))
    if in_shape is None or len(in_shape) != 4:
        raise OnnxGradCamError(
            f"input {source.inputs[0]!r} has shape {in_shape}: expected a 4-D NHWC image batch"
        )
    score_shape = shapes.get(layers.op_name(score))
    num_classes = score_shape[-1] if score_shape else None

    stage(f"converting with tf2onnx (opset {opset})")
    model = export.graph_to_onnx(
        source.graph_def, source.inputs, [score, tf_act], opset=opset, nchw=options.nchw
    )
    _refuse_unconverted_ops(model)
    activation = export.expose_nchw_activation(model, tf_act)

    stage("writing metadata")
    props = _metadata(source, options, in_shape, num_classes, activation, score)
    write_metadata(model, props)
    onnx.checker.check_model(model)
    output.parent.mkdir(parents=True, exist_ok=True)
    export.save_model(model, str(output))
    del model

    verification = None
    if options.verify:
        stage("verifying against TensorFlow")
        fields = preprocessing_from(options.preprocess, source.preprocessing)
        x = sample_input(in_shape, fields)
        try:
            verification = verify(
                graph, source.inputs, (score, tf_act), str(output), (score, activation), x,
                options.nchw,
            )
        except OnnxGradCamError:
            os.unlink(output)
            raise
    return ConvertResult(output, fmt, activation, tf_act, score, props, verification)


def _metadata(
    source: Source,
    options: ConvertOptions,
    in_shape: tuple[int | None, ...],
    num_classes: int | None,
    activation: str,
    score: str,
) -> dict[str, str]:
    size = options.input_size
    if size is None and in_shape[1] and in_shape[2]:
        size = (int(in_shape[1]), int(in_shape[2]))
    layout = "NCHW" if options.nchw else "NHWC"
    fields = preprocessing_from(options.preprocess, source.preprocessing)
    pre = Preprocessing(size=size, layout=layout).with_(**(fields or {}))
    if in_shape[-1] == 1 and not (fields or {}).get("color"):  # a gray model (NHWC source)
        pre = pre.with_(color="GRAY")
    names, file_offset = (None, None)
    if options.labels is not None:
        names, file_offset = labels.read_labels(options.labels)
        if num_classes is not None and len(names) > num_classes:
            raise OnnxGradCamError(
                f"--labels {options.labels} has {len(names)} labels but the model scores "
                f"{num_classes} classes"
            )
    offset = labels.label_offset(names, file_offset, options.label_offset, num_classes)
    props = metadata_props(
        preprocessing=pre, labels=names, label_offset=offset, activation=activation,
        score_output=score,
    )
    if fields is None:  # unknown preprocessing: record only what the graph itself tells
        props = {k: v for k, v in props.items()
                 if not k.endswith((".color", ".scale", ".mean", ".std"))}
    return props


def _refuse_unconverted_ops(model: onnx.ModelProto) -> None:
    """tf2onnx leaves TF ops it has no handler for in the graph as they are (e.g. Lgamma; Erfc
    and function calls are handled in ``export.graph_to_onnx``); name them in one line instead
    of a checker trace."""
    from collections import Counter

    left = Counter(n.op_type for n in model.graph.node
                   if not onnx.defs.has(n.op_type, n.domain or ""))
    if left:
        ops = ", ".join(f"{op} ×{count}" for op, count in left.most_common())
        raise OnnxGradCamError(f"tf2onnx could not convert these TensorFlow ops: {ops}; this "
                               "model cannot be converted (try another --opset, or a SavedModel "
                               "/ frozen graph of it)")

