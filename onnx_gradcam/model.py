"""Load and validate an ONNX classifier; find its score tensor and its target-layer candidates."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import onnx

from onnx_gradcam.errors import OnnxGradCamError
from onnx_gradcam.graph import GraphInfo, Shape
from onnx_gradcam.metadata import ModelMetadata, read_metadata

#: Ops a target layer may be stepped back through (layout-only or element-wise, one input).
PASS_THROUGH = {"Transpose", "Identity", "Dropout", "Relu", "Clip", "LeakyRelu", "Sigmoid",
                "HardSwish", "HardSigmoid", "Elu", "Selu", "Tanh", "Gelu", "Softplus"}
#: Ops after which a tensor is a model's class probabilities rather than raw scores.
PROBABILITY_OPS = {"Softmax", "Sigmoid"}
#: Integer-arithmetic ops of quantized (QOperator) graphs: nothing to differentiate
QUANTIZED = frozenset({"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger",
                       "QLinearAdd", "QLinearMul", "QLinearGlobalAveragePool", "QGemm"})
MIN_OPSET = 16  # ScatterElements(reduction="add") for MaxPool/Slice/Gather gradients


@dataclass(frozen=True)
class Layer:
    """A candidate target layer: a rank-4 tensor with spatial size > 1."""

    name: str
    shape: Shape
    op: str
    layout: str  # NCHW or NHWC


@dataclass
class LoadedModel:
    proto: onnx.ModelProto
    info: GraphInfo
    metadata: ModelMetadata
    source: str
    input_name: str
    input_shape: Shape
    score_output: str  # the graph output the user sees as scores
    logits: str  # the tensor differentiated by default (pre-softmax where there is one)

    @cached_property
    def input_layout(self) -> str:
        """NCHW or NHWC: the metadata's word if it has one, else guessed from the input shape."""
        if any(p.key == "onnx_gradcam.layout" for p in self.proto.metadata_props):
            return self.metadata.preprocessing.layout
        shape = self.input_shape
        return "NHWC" if shape[3] in (1, 3, 4) and shape[1] not in (1, 3, 4) else "NCHW"

    @cached_property
    def input_channels(self) -> int | None:
        """The input's channel count in its layout (None where symbolic)."""
        return self.input_shape[1 if self.input_layout == "NCHW" else 3]


def load_model(model: str | Path | onnx.ModelProto) -> LoadedModel:
    """Read and validate ``model``; raise one clear :class:`OnnxGradCamError` if it is unusable."""
    if isinstance(model, onnx.ModelProto):
        proto, source = model, "<ModelProto>"
    else:
        path = Path(model)
        source = str(path)
        if not path.exists():
            raise OnnxGradCamError(f"{path}: no such model file")
        if path.is_dir():
            raise OnnxGradCamError(f"{path}: is a folder, expected an .onnx model file")
        try:
            proto = onnx.load(str(path))
        except Exception as exc:  # noqa: BLE001 - protobuf raises many kinds
            raise OnnxGradCamError(
                f"{path}: not an ONNX model ({type(exc).__name__}); convert it first, "
                "e.g. `onnx-gradcam convert`") from None
        if not proto.graph.node:
            raise OnnxGradCamError(f"{path}: not an ONNX model (no graph nodes)")
    proto = _upgrade_opset(proto, source)
    info = GraphInfo(proto)
    metadata = read_metadata(proto)
    inputs = [i for i in proto.graph.input if i.name in info.graph_inputs]
    if len(inputs) != 1:
        raise OnnxGradCamError(f"{source}: expected one image input, found {len(inputs)}")
    input_name = inputs[0].name
    input_shape = info.shapes.get(input_name, ())
    if len(input_shape) != 4:
        raise OnnxGradCamError(
            f"{source}: input {input_name!r} has shape {input_shape}, expected a 4-D image batch")
    score_output = metadata.score_output or _find_score_output(info, source)
    if score_output not in info.graph_outputs:
        raise OnnxGradCamError(f"{source}: score output {score_output!r} is not a graph output "
                               f"(outputs: {', '.join(info.graph_outputs)})")
    return LoadedModel(proto, info, metadata, source, input_name, input_shape, score_output,
                       logits_of(info, score_output))


def _upgrade_opset(proto: onnx.ModelProto, source: str) -> onnx.ModelProto:
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset >= MIN_OPSET:
        return proto
    try:
        return onnx.version_converter.convert_version(proto, MIN_OPSET)
    except Exception:  # noqa: BLE001 - keep the model as it is; rules check the opset they need
        return proto


def _score_like(shape: Shape | None) -> bool:
    """(N, C) or (N, 1, 1, C) / (N, C, 1, 1) with C > 1 (or unknown)."""
    if shape is None:
        return False
    dims = [d for d in shape[1:] if d != 1]
    return len(shape) >= 2 and len(dims) <= 1 and (not dims or dims[0] is None or dims[0] > 1)


def _find_score_output(info: GraphInfo, source: str) -> str:
    for name in info.graph_outputs:
        if _score_like(info.shapes.get(name)):
            return name
    raise OnnxGradCamError(f"{source}: no output looks like class scores (N, C); name it with "
                           "metadata onnx_gradcam.score_output")


def logits_of(info: GraphInfo, score: str) -> str:
    """The pre-softmax tensor behind ``score``, stepping back through reshapes; else ``score``."""
    name = score
    while name in info.producer:
        node = info.nodes[info.producer[name]]
        if node.op_type in PROBABILITY_OPS:
            return node.input[0]
        if node.op_type not in ("Identity", "Reshape", "Flatten", "Squeeze"):
            break
        name = node.input[0]
    return score


#: Element-wise ops with several inputs (broadcasting): the layout follows their 4-D input.
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Where", "Pow", "PRelu"}
#: Reductions (with keepdims) keep their input's layout: an NHWC mean is (N, 1, 1, C).
KEEPDIMS_REDUCTIONS = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum"}
#: Ops whose output is NCHW by the ONNX spec.
CHANNELS_FIRST = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "BatchNormalization",
                  "GlobalAveragePool", "GlobalMaxPool", "InstanceNormalization", "LRN"}


def activation_layout(info: GraphInfo, name: str) -> str:
    """NHWC if ``name`` comes from a Transpose to channels-last through element-wise ops (of any
    number of inputs: the walk follows a 4-D input), NCHW if from a channels-first op."""
    seen: set[str] = set()
    while name in info.producer and name not in seen:
        seen.add(name)
        node = info.nodes[info.producer[name]]
        if node.op_type == "Transpose":
            perm = [int(p) for p in next(
                (a.ints for a in node.attribute if a.name == "perm"), [])]
            return "NHWC" if perm == [0, 2, 3, 1] else "NCHW"
        if node.op_type in CHANNELS_FIRST:
            return "NCHW"
        if node.op_type in PASS_THROUGH or node.op_type in KEEPDIMS_REDUCTIONS:
            name = node.input[0]
        elif node.op_type in ELEMENTWISE:
            rank4 = [i for i in node.input if len(info.shapes.get(i, ())) == 4]
            if not rank4:
                return "NCHW"
            name = rank4[0]
        else:
            return "NCHW"
    return "NCHW"


def candidate_layers(model: LoadedModel, score: str | None = None) -> list[Layer]:
    """Rank-4 float tensors (spatial size > 1) that feed the score, in forward order."""
    info = model.info
    upstream = info.ancestors(score or model.logits)
    out = []
    for index in sorted(upstream):
        node = info.nodes[index]
        if node.op_type == "Constant":  # a weight stored as a node (paddle2onnx), not a layer
            continue
        for name in node.output:
            shape = info.shapes.get(name)
            if shape is None or len(shape) != 4 or info.elem_types.get(name) not in (1, 10, 11):
                continue
            layout = activation_layout(info, name)
            spatial = shape[2:] if layout == "NCHW" else shape[1:3]
            if all(d == 1 for d in spatial):
                continue
            out.append(Layer(name, shape, node.op_type, layout))
    return out


def detect_layer(model: LoadedModel, score: str | None = None) -> Layer:
    """The last candidate layer, stepped back through Transposes to the graph's internal tensor."""
    layers = candidate_layers(model, score)
    if not layers:
        quantized = sorted({n.op_type for n in model.info.nodes if n.op_type in QUANTIZED})
        if quantized:
            raise OnnxGradCamError(
                f"{model.source}: a quantized (QOperator) graph: its activations are integers "
                f"and its {', '.join(quantized)} ops have no gradient; explain the float model "
                "it was quantized from")
        raise OnnxGradCamError(f"{model.source}: no rank-4 activation (float, spatial size "
                               "> 1) feeds the scores; name a 4-D (N, C, H, W) or (N, H, W, C) "
                               "tensor with --layer")
    chosen = layers[-1]
    by_name = {layer.name: layer for layer in layers}
    info = model.info
    while chosen.name in info.producer:
        node = info.nodes[info.producer[chosen.name]]
        if node.op_type not in ("Transpose", "Identity") or node.input[0] not in by_name:
            break
        chosen = by_name[node.input[0]]
    return chosen


def resolve_layer(model: LoadedModel, name: str, score: str | None = None) -> Layer:
    """The layer called ``name``; an unknown name fails with the closest candidates listed."""
    layers = candidate_layers(model, score)
    for layer in layers:
        if layer.name == name:
            return layer
    info = model.info
    if name in info.shapes and name in set(info.tensor_names()) | set(info.graph_inputs):
        shape = info.shapes[name]
        if len(shape) == 4:
            return Layer(name, shape, info.op_of(name), activation_layout(info, name))
        raise OnnxGradCamError(f"layer {name!r} has shape {shape}; a target layer must be 4-D")
    names = [layer.name for layer in layers]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.3) or names[-3:]
    raise OnnxGradCamError(f"unknown layer {name!r} in {model.source}; closest candidates: "
                           f"{', '.join(close)} (see `onnx-gradcam inspect`)")
