"""Export an explanation as one standard ONNX model: forward pass, gradient and CAM in one graph.

The exported model has the original input, an optional ``target`` (int64 (N,); a class index,
or −r for the class ranked r-th; omitted = a default of −1 = each sample's argmax; a single
value is broadcast to the batch) and outputs:

- the original model's outputs, unchanged;
- ``cam`` (N, H, W): the heatmap at the input size, post-processed exactly as
  CAM_CONVENTIONS.md says (ReLU, min-max, bilinear upsampling = ``cv2.resize`` INTER_LINEAR,
  ReLU/mean/min-max over layers), by the explainer graph's own nodes
  (:func:`onnx_gradcam.cams.graph.heatmap`); absent with ``upsample=False``;
- ``cam_coarse`` (N, h, w): the first target layer's map after ReLU and min-max, before
  upsampling (to map onto another size yourself);
- ``cam_target`` (N,): the class each map explains (the argmax where ``target`` was −1).

Exported for a target kind of :mod:`onnx_gradcam.targets` (``target_kind``), the model takes
that kind's inputs instead of ``target``: ``category`` (N,) and ``mask`` (N, H, W)
(segmentation), ``category`` alone (predicted_segmentation: the mask is the pixels the model
assigns to it), ``vector`` (N, D) (similarity), ``index`` (N, K, rank − 1) and
``index_weight`` (N, K) (output: the elements each sample's score sums, weight 0 for padding);
``cam_target`` is then the category, or −1 (also where a predicted mask has no pixel: that
sample's map means nothing).

``target`` is optional the standard way: a graph input that is also an initializer (its
default, ``[-1]``). ONNX Runtime in Python, C, C++, C#, Java and Triton (``optional: true``)
let callers omit or set it; its JavaScript API (onnxruntime-node/-web) lists only the other
inputs and drops a ``target`` feed, so ``target_required=True`` exports a plain required input
for callers that must choose the class from JavaScript. A target outside 0..C−1 gives an
all-zero map. The model's metadata is kept; the export adds
``onnx_gradcam.export.*`` keys (method, layers, score, and the preprocessing in force as JSON,
which the Node and browser examples read).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnx_gradcam.autodiff.emitter import Emitter
from onnx_gradcam.cams import GRAPH_METHODS, METHODS
from onnx_gradcam.cams.graph import normalise
from onnx_gradcam.errors import OnnxGradCamError
from onnx_gradcam.explainer_graph import TARGET, TARGETS, ExplainerModel, input_hw
from onnx_gradcam.metadata import PREFIX, Preprocessing, write_metadata
from onnx_gradcam.model import Layer, LoadedModel
from onnx_gradcam.passes import simplify
from onnx_gradcam.targets import SEED_KINDS

TARGET_INPUT = "target"
CAM = "cam"
CAM_COARSE = "cam_coarse"
CAM_TARGET = "cam_target"
EXPORT_PREFIX = PREFIX + "export."


@dataclass(frozen=True)
class ExportSpec:
    """What an exported model computes and states, besides its explainer graph."""

    method: str
    layers: tuple[Layer, ...]
    score_kind: str  # "logits", "probabilities" or "output"
    preprocessing: Preprocessing  # the preprocessing in force (its size may be unknown)
    upsample: bool = True
    target_required: bool = False
    eigen_smooth: bool = False
    aug_smooth: bool = False
    #: a target kind of :mod:`onnx_gradcam.targets` whose inputs the model takes instead of
    #: ``target`` (its explainer graph built with that seed); None: classes
    target_kind: str | None = None


def check_exportable(spec: ExportSpec) -> None:
    """Raise one clear line if ``spec`` cannot be computed inside one ONNX graph."""
    if spec.method not in GRAPH_METHODS:
        why = (METHODS[spec.method].not_in_graph if spec.method in METHODS
               else "it is not a known method")
        raise OnnxGradCamError(f"cannot export {spec.method!r}: {why}; exportable methods: "
                               f"{', '.join(GRAPH_METHODS)}")
    if spec.eigen_smooth:
        raise OnnxGradCamError("cannot export eigen_smooth: it needs an SVD, and no standard "
                               "ONNX op computes one")
    if spec.aug_smooth:
        raise OnnxGradCamError("cannot export aug_smooth: it runs six augmented passes per "
                               "image; export without it")
    if not spec.upsample and len(spec.layers) > 1:
        raise OnnxGradCamError("--no-upsample takes one target layer: maps of several layers "
                               "are combined only after upsampling")
    if spec.target_kind is not None and spec.target_kind not in SEED_KINDS:
        raise OnnxGradCamError(f"unknown target kind {spec.target_kind!r}; choose from "
                               f"{', '.join(SEED_KINDS)}")


def export_model(source: LoadedModel, graph: ExplainerModel, spec: ExportSpec
                 ) -> onnx.ModelProto:
    """The exported model (see module docstring) of ``source``'s explainer ``graph`` (built
    with the method in the graph and the ``ranks`` seed, or the seed of ``spec.target_kind``)
    and ``spec``."""
    check_exportable(spec)
    assert graph.cams is not None, "the explainer graph has no map: build it with the method"
    _check_free_names(graph.model, [n.removeprefix("ogc_") for n in graph.seed_inputs])
    op = Emitter(opset=source.info.opset, dtype=source.info.dtype(graph.activations[0]),
                 prefix="ogc_cam/")
    target_nodes = _target_nodes(op, source) if spec.target_kind is None else []
    _cam_outputs(op, graph, spec.upsample)
    model = _assemble(source, graph, spec, target_nodes, op)
    write_metadata(model, _export_metadata(source, spec))
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        line = str(exc).strip().splitlines()[0]
        raise OnnxGradCamError(f"the exported model fails the ONNX checker: {line}") from None
    return model


# ---- pieces ----------------------------------------------------------------------------------
def _target_nodes(op: Emitter, source: LoadedModel) -> list[onnx.NodeProto]:
    """``target`` (N,) or (1,) broadcast to the batch as the explainer graph's ``ogc_target``."""
    batch = op.dims(source.input_name, 0, 1)
    nodes = [*op.nodes, helper.make_node("Expand", [TARGET_INPUT, batch], [TARGET],
                                         name="ogc_target_default")]
    del op.nodes[:]
    return nodes


def _cam_outputs(op: Emitter, graph: ExplainerModel, upsample: bool) -> None:
    """The explainer graph's first-layer map after ReLU and min-max, and (``upsample``) its
    heatmap, squeezed to the outputs ``cam_coarse`` and ``cam``."""
    assert graph.cams is not None
    _squeeze_to(op, normalise(op, graph.coarse[0]), CAM_COARSE)
    if upsample:
        _squeeze_to(op, graph.cams, CAM)


def _squeeze_to(op: Emitter, maps: str, name: str) -> None:
    """Maps (N, 1, …) → the graph output ``name`` (N, …)."""
    op.squeeze(maps, [1])
    op.nodes[-1].output[0] = name


def _assemble(source: LoadedModel, graph: ExplainerModel, spec: ExportSpec,
              target_nodes: list[onnx.NodeProto], op: Emitter) -> onnx.ModelProto:
    """The explainer graph with ``target`` in front (or a target kind's inputs, named without
    the ``ogc_`` prefix), the CAM nodes behind, the original outputs plus ours, and nothing no
    output needs."""
    model = onnx.ModelProto()
    model.CopyFrom(graph.model)
    model.ir_version = max(model.ir_version, 4)  # an input with an initializer = a default
    g = model.graph
    public = {name: name.removeprefix("ogc_") for name in graph.seed_inputs}
    for node in g.node:  # the resolved targets become an output of ours
        node.output[:] = [CAM_TARGET if o == TARGETS else o for o in node.output]
        node.input[:] = [public.get(i, i) for i in node.input]
    for value in g.input:
        value.name = public.get(value.name, value.name)
    nodes = [*target_nodes, *g.node, *op.nodes]
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(op.initializers)
    if not public:
        if not spec.target_required:
            g.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), TARGET_INPUT))
        inputs = [i for i in g.input if i.name != TARGET]
        del g.input[:]
        g.input.extend([*inputs, helper.make_tensor_value_info(
            TARGET_INPUT, onnx.TensorProto.INT64, ["target_n"])])
    originals = [o for o in g.output if o.name in source.info.graph_outputs]
    del g.output[:]
    g.output.extend([*originals, *_output_infos(source, spec)])
    simplify(g)
    return model


def _check_free_names(model: onnx.ModelProto, inputs: list[str]) -> None:
    g = model.graph
    taken = {*(i.name for i in g.input), *(o.name for o in g.output),
             *(t.name for t in g.initializer), *(o for n in g.node for o in n.output)}
    for name in (*(inputs or [TARGET_INPUT]), CAM, CAM_COARSE, CAM_TARGET):
        if name in taken:
            raise OnnxGradCamError(f"the model already has a tensor named {name!r}, which the "
                                   "exported model needs for its own input or output; rename it")


def _output_infos(source: LoadedModel, spec: ExportSpec) -> list[onnx.ValueInfoProto]:
    layer = spec.layers[0]
    elem = helper.np_dtype_to_tensor_dtype(source.info.dtype(layer.name))
    n = source.input_shape[0] or "N"
    h, w = layer.hw
    out = [helper.make_tensor_value_info(CAM_COARSE, elem, [n, h or "h", w or "w"]),
           helper.make_tensor_value_info(CAM_TARGET, onnx.TensorProto.INT64, [n])]
    if spec.upsample:
        height, width = input_hw(source.info, source.input_layout)[2]
        out.insert(0, helper.make_tensor_value_info(CAM, elem, [n, height or "H",
                                                                width or "W"]))
    return out


def _export_metadata(source: LoadedModel, spec: ExportSpec) -> dict[str, str]:
    pre = spec.preprocessing
    preprocessing = {"size": list(pre.size) if pre.size else None, "layout": pre.layout,
                     "color": pre.color, "scale": pre.scale, "mean": list(pre.mean),
                     "std": list(pre.std)}
    facts = {
        "method": spec.method,
        "layers": json.dumps([la.name for la in spec.layers]),
        "score": spec.score_kind,
        "score_output": source.score_output,
        "upsample": "true" if spec.upsample else "false",
        "target": spec.target_kind or ("required" if spec.target_required else "optional"),
        "preprocessing": json.dumps(preprocessing),
    }
    return {EXPORT_PREFIX + k: v for k, v in facts.items()}
