"""Load and validate an ONNX classifier; find its score tensor and its target-layer candidates."""

from __future__ import annotations

import difflib
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import cache, cached_property
from pathlib import Path

import onnx
from onnx.external_data_helper import load_external_data_for_model

from onnx_gradcam.autodiff import rules as _rules  # noqa: F401  (fills VJP_RULES)
from onnx_gradcam.autodiff.registry import INTEGER_PRESERVING, NON_DIFFERENTIABLE, VJP_RULES
from onnx_gradcam.autodiff.rules.qoperator import QUANTIZED_OPS, output_parameters
from onnx_gradcam.errors import OnnxGradCamError
from onnx_gradcam.graph import GraphInfo, Shape, readable
from onnx_gradcam.layout import SAME_LAYOUT, Layouts, Verdict, explicit, pooled
from onnx_gradcam.metadata import ModelMetadata, read_metadata
from onnx_gradcam.tokens import Grid, TokenGrids, attention_input

#: Ops after which a tensor is a model's class probabilities rather than raw scores.
PROBABILITY_OPS = {"Softmax", "Sigmoid"}
MIN_OPSET = 16  # ScatterElements(reduction="add") for MaxPool/Slice/Gather gradients


@dataclass(frozen=True)
class Layer:
    """A candidate target layer: a rank-4 activation with spatial size > 1, or a transformer's
    (N, T, C) tokens whose image grid the graph shows (layout ``tokens``)."""

    name: str
    shape: Shape
    op: str
    layout: str  # NCHW, NHWC or tokens (? in a candidate list: the graph can't tell)
    verdict: Verdict | None = field(default=None, compare=False)  # the evidence for layout
    grid: Grid | None = field(default=None, compare=False)  # tokens: how they fold into h × w

    @property
    def hw(self) -> tuple[int | None, int | None]:
        """The size (h, w) of the layer's maps."""
        if self.grid is not None:
            return self.grid.h, self.grid.w
        h, w = self.shape[2:4] if self.layout == "NCHW" else self.shape[1:3]
        return h, w


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
    files: tuple[Path, ...] = ()  # what loading read: the model file and its external data

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

    @cached_property
    def tokens(self) -> TokenGrids:
        """The grids of the model's token tensors (and why a token tensor has none)."""
        return TokenGrids(self.info, self.input_name, self.input_layout)

    @cached_property
    def layouts(self) -> Layouts:
        """The layout evidence of every 4-D tensor (the metadata's input layout counts)."""
        stated = any(p.key == "onnx_gradcam.layout" for p in self.proto.metadata_props)
        return Layouts(self.info, (self.input_layout, "metadata") if stated else None)


def load_model(model: str | Path | onnx.ModelProto, output: str | None = None) -> LoadedModel:
    """Read and validate ``model``; raise one clear :class:`OnnxGradCamError` if it is unusable.
    ``output`` names the graph output to score (else the metadata's, else the first that looks
    like class scores, else the only output)."""
    files: tuple[Path, ...] = ()
    if isinstance(model, onnx.ModelProto):
        proto, source = model, "<ModelProto>"
    else:
        path = Path(model)
        source = str(path)
        proto = _read_proto(path)
        files = (path, *external_files(proto, path.parent))
        try:
            load_external_data_for_model(proto, str(path.parent))
        except Exception as exc:  # noqa: BLE001 - onnx's own reason is the clearest
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise OnnxGradCamError(f"{path}: cannot load its external data: {reason}") from None
    _check_opset(proto, source)
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
    score_output = output or metadata.score_output or _find_score_output(info, source)
    if score_output not in info.graph_outputs:
        raise OnnxGradCamError(f"{source}: score output {score_output!r} is not a graph output "
                               f"(outputs: {', '.join(info.graph_outputs)})")
    return LoadedModel(proto, info, metadata, source, input_name, input_shape, score_output,
                       logits_of(info, score_output), files)


def _read_proto(path: Path) -> onnx.ModelProto:
    """The model's protobuf without its external data (loaded after, with its own errors)."""
    if not path.exists():
        raise OnnxGradCamError(f"{path}: no such model file")
    if path.is_dir():
        raise OnnxGradCamError(f"{path}: is a folder, expected an .onnx model file")
    if path.stat().st_size >= 2**31:  # not read: protobuf cannot parse it anyway
        raise OnnxGradCamError(f"{path}: not an ONNX model (over protobuf's 2 GiB limit; large "
                               "models keep their weights as external data)")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises many kinds
        raise OnnxGradCamError(
            f"{path}: not an ONNX model ({type(exc).__name__}); convert it first, "
            "e.g. `onnx-gradcam convert`") from None
    if not proto.graph.node:
        raise OnnxGradCamError(f"{path}: not an ONNX model (no graph nodes)")
    return proto


def is_onnx_model(path: Path) -> bool:
    """Whether ``path`` parses as an ONNX model with a graph (by content, whatever its name)."""
    try:
        _read_proto(path)
    except OnnxGradCamError:
        return False
    return True


def external_files(proto: onnx.ModelProto, folder: Path) -> list[Path]:
    """The external data files the model's tensors name (as paths under ``folder``)."""
    names = {e.value for t in _tensors(proto.graph) for e in t.external_data
             if e.key == "location"}
    return [folder / n for n in sorted(names)]


def _tensors(graph: onnx.GraphProto):
    """Every tensor of a graph: initializers and node attributes, sub-graphs included."""
    yield from graph.initializer
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from _tensors(g)


def _check_opset(proto: onnx.ModelProto, source: str) -> None:
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    newest = onnx.defs.onnx_opset_version()
    if opset > newest:
        raise OnnxGradCamError(f"{source}: opset {opset} is newer than this onnx knows "
                               f"(up to {newest}); export the model at an older opset")
    refused = _runtime_refuses(opset)
    if refused:
        raise OnnxGradCamError(f"{source}: opset {opset} is not supported by this ONNX Runtime "
                               f"({refused}); export the model at an older opset")


@cache
def _runtime_refuses(opset: int) -> str | None:
    """ONNX Runtime's reason for refusing models of this opset (tried on a one-node model),
    or None: it states its limit only in the error it raises."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    probe = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])],
                                                "probe", [x], [y]),
                              opset_imports=[helper.make_opsetid("", opset)])
    probe.ir_version = 10  # old enough for any ONNX Runtime that reads this opset
    try:
        ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - whatever it raises, its last sentence says why
        sentences = [t.strip(" .") for t in " ".join(str(exc).split()).split(". ")]
        return next((t for t in reversed(sentences) if t), type(exc).__name__)
    return None


def _upgrade_opset(proto: onnx.ModelProto, source: str) -> onnx.ModelProto:
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset >= MIN_OPSET:
        return proto
    try:
        return onnx.version_converter.convert_version(proto, MIN_OPSET)
    except Exception:  # noqa: BLE001 - keep the model as it is; rules check the opset they need
        return proto


def score_like(shape: Shape | None) -> bool:
    """(N, C) or (N, 1, 1, C) / (N, C, 1, 1) with C > 1 (or unknown)."""
    if shape is None:
        return False
    dims = [d for d in shape[1:] if d != 1]
    return len(shape) >= 2 and len(dims) <= 1 and (not dims or dims[0] is None or dims[0] > 1)


def _find_score_output(info: GraphInfo, source: str) -> str:
    for name in info.graph_outputs:
        if score_like(info.shapes.get(name)):
            return name
    if len(info.graph_outputs) == 1:  # a segmentation map, a detector's tensor: targets say how
        return info.graph_outputs[0]
    raise OnnxGradCamError(f"{source}: no output looks like class scores (N, C); name the one "
                           "to score with output=NAME (--target-output NAME) or metadata "
                           "onnx_gradcam.score_output")


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


#: Ops of ONNX Runtime's quantized formats (QOperator: QLinearConv, …; QDQ: the pairs).
QUANTIZED = {"ConvInteger", "MatMulInteger", "QGemm", "DynamicQuantizeLinear",
             "DynamicQuantizeMatMul", "QuantizeLinear", "DequantizeLinear"}


def activation_layout(info: GraphInfo, name: str) -> str | None:
    """``name``'s layout from the graph's evidence alone (None: undecided)."""
    return Layouts(info).of(name).layout


def candidate_layers(model: LoadedModel, score: str | None = None) -> list[Layer]:
    """Rank-4 float activations (computed from the input, spatially larger than 1 × 1 in either
    layout) and token tensors with a grid (:mod:`onnx_gradcam.tokens`) that feed the score, in
    forward order; ``layout`` ``?`` where the graph can't tell."""
    info = model.info
    upstream = info.ancestors(score or model.logits)
    upstream &= info.descendants(model.input_name)  # weights and Constants are not activations
    out = []
    for index in sorted(upstream):
        node = info.nodes[index]
        for name in node.output:
            shape = info.shapes.get(name)
            quantized = node.op_type in QUANTIZED_OPS and info.elem_types.get(name) in (2, 3)
            if shape is None or (info.elem_types.get(name) not in (1, 10, 11) and not quantized):
                continue
            if len(shape) == 3:
                grid = model.tokens.of(name)
                if grid is not None:
                    verdict = Verdict(name, "tokens", (("tokens", grid.describe()),))
                    out.append(Layer(name, shape, node.op_type, "tokens", verdict, grid))
                continue
            if len(shape) != 4 or pooled(shape):
                continue
            verdict = model.layouts.of(name)
            out.append(Layer(name, shape, node.op_type, verdict.layout or "?", verdict))
    return out


def detect_layer(model: LoadedModel, score: str | None = None) -> Layer:
    """The last candidate layer, stepped back through Transposes to the graph's internal tensor;
    refused when the graph can't tell its layout or quantized ops sit between it and the score."""
    score = score or model.logits
    layers = candidate_layers(model, score)
    info = model.info
    if not layers:
        _refuse_quantized(model, info.ancestors(score))
        raise OnnxGradCamError(f"{model.source}: no rank-4 activation (float, spatial size "
                               "> 1) feeds the scores; name a 4-D (N, C, H, W) or (N, H, W, C) "
                               "tensor with --layer")
    by_name = {layer.name: layer for layer in layers}
    refused = model.tokens.refusals  # token tensors without a grid, filled by candidate_layers
    names = sorted([*by_name, *refused], key=lambda n: info.producer.get(n, -1))
    attention = attention_input(info, names, score)
    if attention in refused:
        raise OnnxGradCamError(_no_grid(attention, info.shapes[attention], refused[attention]))
    if attention is not None:
        chosen = by_name[attention]
        if chosen.layout == "?":
            raise OnnxGradCamError(chosen.verdict.refusal(model.source, readable(chosen.shape)))
        return chosen
    chosen = _before_class_map(model, score, layers[-1], by_name)
    shape = info.shapes.get(score)
    if shape is not None and len(shape) == 4 and not score_like(shape):
        chosen = _segmentation_backbone(model, score, by_name)
    elif not score_like(shape):
        chosen = _before_dense_head(model, score, by_name) or chosen
    while chosen.name in info.producer:
        node = info.nodes[info.producer[chosen.name]]
        if node.op_type not in ("Transpose", "Identity") or node.input[0] not in by_name:
            break
        chosen = by_name[node.input[0]]
    _refuse_quantized(model, info.ancestors(score) & info.descendants(chosen.name))
    if chosen.layout == "?":
        raise OnnxGradCamError(chosen.verdict.refusal(model.source, readable(chosen.shape)))
    return chosen


#: Ops that mix channels: a layer with one of them on its way to the scores is not a class map.
CHANNEL_MIXING = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum", "ConvInteger",
                  "MatMulInteger"}


def _before_class_map(model: LoadedModel, score: str, layer: Layer,
                      by_name: dict[str, Layer]) -> Layer:
    """``layer``, or the features a person would explain when ``layer`` is the class-score map of
    a Conv-then-pool classifier (SqueezeNet, NiN): one channel per class and nothing mixing
    channels on the way to the scores. Grad-CAM there weighs each class map by its own
    gradient alone, so the recommended layer is the classifier conv's input."""
    info = model.info
    classes = [d for d in info.shapes.get(score, ())[1:] if d != 1]
    channels = layer.shape[1] if layer.layout == "NCHW" else layer.shape[-1]
    if len(classes) != 1 or classes[0] is None or channels != classes[0]:
        return layer
    between = info.ancestors(score) & info.descendants(layer.name)
    if any(info.nodes[i].op_type in CHANNEL_MIXING for i in between):
        return layer
    name = layer.name
    while name in info.producer:  # back through the class map's activation to its conv
        node = info.nodes[info.producer[name]]
        if node.op_type in CHANNEL_MIXING:
            return _conv_input(info, node, by_name) or layer
        if node.op_type not in SAME_LAYOUT and node.op_type != "BatchNormalization":
            return layer
        if sum(i not in info.constants and i in info.shapes for i in node.input) > 1:
            return layer  # a residual sum or a concatenation: not one conv's class map
        name = node.input[0]
    return layer


def _conv_input(info: GraphInfo, conv: onnx.NodeProto, by_name: dict[str, Layer]
                ) -> Layer | None:
    """The candidate layer a conv reads, seen through Identity and Dropout; None if none."""
    features = conv.input[0]
    while features not in by_name and features in info.producer and \
            info.nodes[info.producer[features]].op_type in ("Identity", "Dropout"):
        features = info.nodes[info.producer[features]].input[0]
    return by_name.get(features)


def _before_dense_head(model: LoadedModel, score: str, by_name: dict[str, Layer]) -> Layer | None:
    """For an output that is not class scores but a map of them (segmentation (N, C, H, W), a
    detector's (N, 4 + classes, anchors)): the input of the last Conv that writes the output's
    C channels (the features the prediction conv reads, as a person picks the backbone's
    output), seen through Identity and Dropout; None where there is none."""
    info = model.info
    shape = info.shapes.get(score)
    if shape is None or len(shape) < 3 or shape[1] is None:
        return None
    for index in sorted(info.ancestors(score), reverse=True):
        node = info.nodes[index]
        out = info.shapes.get(node.output[0])
        if node.op_type != "Conv" or out is None or len(out) != 4 or out[1] != shape[1]:
            continue
        return _conv_input(info, node, by_name)
    return None


#: One-input element-wise ops that end a block after its join (a residual Add's activation).
_BLOCK_TAIL = {"Relu", "Clip", "LeakyRelu", "HardSwish", "Elu", "Selu", "Gelu", "Sigmoid",
               "Tanh", "Mish", "Softplus", "PRelu", "Identity", "Dropout"}


def _segmentation_backbone(model: LoadedModel, score: str, by_name: dict[str, Layer]) -> Layer:
    """For an (N, C, H, W) segmentation output: the backbone's last feature map, the layer
    pytorch-grad-cam recommends (``model.backbone.layer4`` for DeepLabV3), read from where the
    graph branches and joins again.

    A *split* is a feature map two or more differentiable nodes read; its *join* is the first
    node that its branches meet at. A join that sums the branches (a residual Add) or reads the
    split itself (``x · gate(x)``, a squeeze-excitation) closes a backbone block; any other
    join (ASPP's Concat, LRASPP's product of two branches) starts the head. The layer is the
    last split whose join starts the head (DeepLabV3, LRASPP), else, where the head is a chain
    (FCN), the output of the last block: its last join and the activation after it. Refused
    where the graph has no split at all."""
    info = model.info
    upstream = info.ancestors(score) & info.descendants(model.input_name)

    def readers(name: str) -> list[int]:
        return [i for i in info.consumers.get(name, []) if i in upstream
                and info.nodes[i].op_type not in NON_DIFFERENTIABLE]

    def reach(index: int) -> set[int]:
        return {index} | {d for o in info.nodes[index].output if o for d in info.descendants(o)}

    head_split, last_join = None, None
    for name in by_name:  # forward order
        branches = readers(name)
        if len(branches) < 2:
            continue
        reached = [reach(i) & upstream for i in branches]
        met = set().union(*(a & b for k, a in enumerate(reached) for b in reached[k + 1:]))
        if not met:
            continue
        join = min(met)
        node = info.nodes[join]
        if node.op_type in ("Add", "Sum") or name in node.input:
            last_join = join if last_join is None else max(last_join, join)
        else:
            head_split = name
    if head_split is not None:
        return by_name[head_split]
    if last_join is not None:
        name = info.nodes[last_join].output[0]
        while True:
            after = readers(name)
            if len(after) != 1 or info.nodes[after[0]].op_type not in _BLOCK_TAIL:
                break
            name = info.nodes[after[0]].output[0]
        if name in by_name:
            return by_name[name]
    raise OnnxGradCamError(f"{model.source}: output {score!r} is a segmentation map "
                           f"{readable(info.shapes.get(score))}, but the graph shows no block "
                           "structure (no branch that joins again) to tell the backbone's last "
                           "feature map; name it with --layer")


def _refuse_quantized(model: LoadedModel, nodes: set[int]) -> None:
    """Refuse quantized ops that have no gradient rule (QDQ pairs have one: rules/quant.py)."""
    counts = Counter(op for op in (model.info.nodes[i].op_type for i in nodes)
                     if (op.startswith("QLinear") or op in QUANTIZED) and op not in VJP_RULES)
    if not counts:
        return
    listed = ", ".join(f"{op} ×{n}" for op, n in counts.most_common(3))
    more = ", …" if len(counts) > 3 else ""
    raise OnnxGradCamError(f"{model.source}: quantized QOperator ops ({listed}{more}) between "
                           "the input and the scores are not supported yet; explain the float "
                           "model or a QDQ copy instead")


def dequantized_layers(model: LoadedModel, layers: list[Layer]
                       ) -> tuple[LoadedModel, list[Layer]]:
    """``model`` and ``layers`` where each integer layer (a QOperator op's uint8/int8 output)
    is replaced by its dequantized copy: DequantizeLinear → ``NAME/dequantized`` (the layer) →
    QuantizeLinear → ``NAME/requantized``, which its consumers read instead (the same integers:
    the forward is unchanged, and the gradient reaches the layer through the pair's rules)."""
    info = model.info
    integer = [la for la in layers if info.elem_types.get(la.name) in (2, 3)]
    if not integer:
        return model, layers
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    renamed = {}
    for layer in integer:
        node = info.nodes[info.producer[layer.name]]
        while node.op_type in INTEGER_PRESERVING:  # its input's quantization parameters
            node = info.nodes[info.producer[node.input[0]]]
        if node.op_type not in QUANTIZED_OPS | {"QuantizeLinear", "DynamicQuantizeLinear"}:
            raise OnnxGradCamError(f"layer {layer.name!r} is an integer tensor made by "
                                   f"{node.op_type}, whose real values the graph does not say; "
                                   f"pick a float tensor or a quantized op's output with --layer")
        scale, zero_point = output_parameters(node)
        real, again = f"{layer.name}/dequantized", f"{layer.name}/requantized"
        for node in proto.graph.node:
            node.input[:] = [again if i == layer.name else i for i in node.input]
        proto.graph.node.extend([
            onnx.helper.make_node("DequantizeLinear", [layer.name, scale, zero_point], [real]),
            onnx.helper.make_node("QuantizeLinear", [real, scale, zero_point], [again])])
        renamed[layer.name] = real
    proto = _sorted(proto)
    loaded = replace(model, proto=proto, info=GraphInfo(proto))
    return loaded, [replace(la, name=renamed[la.name]) if la.name in renamed else la
                    for la in layers]


def _sorted(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` with its nodes in topological order (appended nodes moved to where their
    inputs exist)."""
    known = {i.name for i in proto.graph.input} | {t.name for t in proto.graph.initializer}
    pending, order = list(proto.graph.node), []
    while pending:
        ready = [n for n in pending if all(not i or i in known for i in n.input)]
        if not ready:
            return proto  # a cycle or a missing input: leave it for ONNX Runtime to name
        for node in ready:
            known.update(node.output)
        order += ready
        pending = [n for n in pending if n not in ready]
    del proto.graph.node[:]
    proto.graph.node.extend(order)
    return proto


def _no_grid(name: str, shape: Shape, why: str) -> str:
    """The one line refusing the token tensor ``name`` whose grid the graph doesn't show."""
    return (f"layer {name!r} has shape {readable(shape)}: tokens, but {why}; export the model "
            "with a static input size, or name a 4-D layer or a token tensor `onnx-gradcam "
            "inspect` lists with --layer")


def resolve_layer(model: LoadedModel, name: str, score: str | None = None) -> Layer:
    """The layer called ``name`` (``NAME:NHWC``/``NAME:NCHW`` states its layout, overriding the
    graph's evidence); an unknown name fails with the closest candidates listed, a layer whose
    layout the graph can't tell and the name doesn't state is refused."""
    info = model.info
    if name not in info.shapes:
        name, stated = explicit(name)
    else:
        stated = None
    layers = candidate_layers(model, score)
    layer = next((la for la in layers if la.name == name), None)
    if layer is None and name in info.shapes and name in set(info.tensor_names()) | set(
            info.graph_inputs):
        shape = info.shapes[name]
        if len(shape) == 3:
            raise OnnxGradCamError(_no_grid(name, shape, model.tokens.refusals.get(
                name, "the graph shows no patch-embedding Conv to fold them into a grid")))
        if len(shape) != 4:
            raise OnnxGradCamError(f"layer {name!r} has shape {shape}; a target layer must be 4-D "
                                   "(or (N, T, C) tokens)")
        verdict = model.layouts.of(name)
        layer = Layer(name, shape, info.op_of(name), verdict.layout or "?", verdict)
    if layer is None:
        names = [la.name for la in layers]
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.3) or names[-3:]
        raise OnnxGradCamError(f"unknown layer {name!r} in {model.source}; closest candidates: "
                               f"{', '.join(close)} (see `onnx-gradcam inspect`)")
    if stated:
        return replace(layer, layout=stated, verdict=Verdict(
            name, stated, ((stated, f"the user ({name}:{stated})"),)))
    if layer.layout == "?":
        raise OnnxGradCamError(layer.verdict.refusal(model.source, readable(layer.shape)))
    return layer
