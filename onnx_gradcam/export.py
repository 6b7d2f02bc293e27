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
(segmentation), ``vector`` (N, D) (similarity), ``index`` (N, K, rank − 1) and ``index_weight``
(N, K) (output: the elements each sample's score sums, weight 0 for padding); ``cam_target``
is then the category, or −1.

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
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnx_gradcam.autodiff.emitter import Emitter
from onnx_gradcam.cams import GRAPH_METHODS, METHODS
from onnx_gradcam.cams.graph import normalise
from onnx_gradcam.errors import OnnxGradCamError
from onnx_gradcam.explainer_graph import TARGET, TARGETS, ExplainerModel, input_hw
from onnx_gradcam.images import atomic_write, check_output_file
from onnx_gradcam.metadata import PREFIX, write_metadata
from onnx_gradcam.passes import simplify
from onnx_gradcam.targets import KINDS

if TYPE_CHECKING:
    from onnx_gradcam.explainer import Explainer

TARGET_INPUT = "target"
CAM = "cam"
CAM_COARSE = "cam_coarse"
CAM_TARGET = "cam_target"
EXPORT_PREFIX = PREFIX + "export."


def check_exportable(method: str) -> None:
    """Raise one clear line if ``method`` cannot be computed inside one ONNX graph."""
    if method not in GRAPH_METHODS:
        why = METHODS[method].not_in_graph if method in METHODS else "it is not a known method"
        raise OnnxGradCamError(f"cannot export {method!r}: {why}; exportable methods: "
                               f"{', '.join(GRAPH_METHODS)}")


def export_model(explainer: Explainer, upsample: bool = True,
                 target_required: bool = False, target_kind: str | None = None
                 ) -> onnx.ModelProto:
    """The exported model (see module docstring) for ``explainer``'s model, layers and method,
    explaining classes or (``target_kind``) targets of that kind."""
    check_exportable(explainer.method.name)
    if explainer.eigen_smooth:
        raise OnnxGradCamError("cannot export eigen_smooth: it needs an SVD, and no standard "
                               "ONNX op computes one")
    if explainer.aug_smooth:
        raise OnnxGradCamError("cannot export aug_smooth: it runs six augmented passes per "
                               "image; export without it")
    if not upsample and len(explainer.layers) > 1:
        raise OnnxGradCamError("--no-upsample takes one target layer: maps of several layers "
                               "are combined only after upsampling")
    if target_kind is not None and target_kind not in KINDS.values():
        raise OnnxGradCamError(f"unknown target kind {target_kind!r}; choose from "
                               f"{', '.join(KINDS.values())}")
    graph = explainer.ranked_graph if target_kind is None else explainer._graph(target_kind)
    _check_free_names(graph.model, [n.removeprefix("ogc_") for n in graph.seed_inputs])
    op = Emitter(opset=explainer.model.info.opset,
                 dtype=explainer.model.info.dtype(graph.activations[0]), prefix="ogc_cam/")
    target_nodes = _target_nodes(op, explainer) if target_kind is None else []
    _cam_outputs(op, graph, upsample)
    model = _assemble(explainer, graph, target_nodes, op, upsample, target_required)
    write_metadata(model, _export_metadata(explainer, upsample, target_required, target_kind))
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        line = str(exc).strip().splitlines()[0]
        raise OnnxGradCamError(f"the exported model fails the ONNX checker: {line}") from None
    return model


def export_explainer(explainer: Explainer, path: str | Path | None = None, *,
                     upsample: bool = True, target_required: bool = False,
                     target_kind: str | None = None) -> onnx.ModelProto:
    """Build the exported model and, if ``path`` is given, write it there (atomically)."""
    if path is not None:
        check_output_file(Path(path), explainer.model.files)
    model = export_model(explainer, upsample, target_required, target_kind)
    if path is not None:
        data = model.SerializeToString()
        atomic_write(Path(path), data)
    return model


# ---- pieces ----------------------------------------------------------------------------------
def _target_nodes(op: Emitter, explainer: Explainer) -> list[onnx.NodeProto]:
    """``target`` (N,) or (1,) broadcast to the batch as the explainer graph's ``ogc_target``."""
    batch = op.dims(explainer.model.input_name, 0, 1)
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


def _assemble(explainer: Explainer, graph: ExplainerModel, target_nodes: list[onnx.NodeProto],
              op: Emitter, upsample: bool, target_required: bool) -> onnx.ModelProto:
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
        if not target_required:
            g.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), TARGET_INPUT))
        inputs = [i for i in g.input if i.name != TARGET]
        del g.input[:]
        g.input.extend([*inputs, helper.make_tensor_value_info(
            TARGET_INPUT, onnx.TensorProto.INT64, ["target_n"])])
    originals = [o for o in g.output if o.name in explainer.model.info.graph_outputs]
    del g.output[:]
    g.output.extend([*originals, *_output_infos(explainer, upsample)])
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


def _output_infos(explainer: Explainer, upsample: bool) -> list[onnx.ValueInfoProto]:
    source = explainer.model
    elem = helper.np_dtype_to_tensor_dtype(source.info.dtype(explainer.layers[0].name))
    n = source.input_shape[0] or "N"
    h, w = explainer.layers[0].hw
    out = [helper.make_tensor_value_info(CAM_COARSE, elem, [n, h or "h", w or "w"]),
           helper.make_tensor_value_info(CAM_TARGET, onnx.TensorProto.INT64, [n])]
    if upsample:
        height, width = input_hw(source.info, source.input_layout)[2]
        out.insert(0, helper.make_tensor_value_info(CAM, elem, [n, height or "H",
                                                                width or "W"]))
    return out


def _export_metadata(explainer: Explainer, upsample: bool, target_required: bool,
                     target_kind: str | None = None) -> dict[str, str]:
    try:
        pre = explainer.preprocessing()
        size: list[int] | None = list(pre.size) if pre.size else None
    except OnnxGradCamError:  # a symbolic input size and none in the metadata
        pre, size = explainer.model.metadata.preprocessing, None
    preprocessing = {"size": size, "layout": pre.layout, "color": pre.color,
                     "scale": pre.scale, "mean": list(pre.mean), "std": list(pre.std)}
    facts = {
        "method": explainer.method.name,
        "layers": json.dumps([la.name for la in explainer.layers]),
        "score": explainer.score_kind,
        "score_output": explainer.model.score_output,
        "upsample": "true" if upsample else "false",
        "target": target_kind or ("required" if target_required else "optional"),
        "preprocessing": json.dumps(preprocessing),
    }
    return {EXPORT_PREFIX + k: v for k, v in facts.items()}


# ---- Triton ----------------------------------------------------------------------------------
_TRITON_TYPES = {
    onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.DOUBLE: "TYPE_FP64", onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.INT32: "TYPE_INT32", onnx.TensorProto.INT8: "TYPE_INT8",
    onnx.TensorProto.UINT8: "TYPE_UINT8", onnx.TensorProto.BOOL: "TYPE_BOOL",
    onnx.TensorProto.STRING: "TYPE_STRING",
}


def _triton_tensor(value: onnx.ValueInfoProto, optional: bool = False) -> str:
    tensor = value.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
    kind = _TRITON_TYPES.get(tensor.elem_type)
    if kind is None:
        raise OnnxGradCamError(f"Triton: tensor {value.name!r} has an element type Triton's "
                               "ONNX Runtime backend does not take")
    lines = [f'    name: "{value.name}"', f"    data_type: {kind}",
             f"    dims: [ {', '.join(map(str, dims))} ]"]
    if optional:
        lines.append("    optional: true")
    return "  {\n" + "\n".join(lines) + "\n  }"


def triton_config(model: onnx.ModelProto, name: str) -> str:
    """A Triton ``config.pbtxt`` for an exported model: ONNX Runtime backend, no server-side
    batching (``max_batch_size: 0``: the batch is the first dim of every tensor), ``target``
    declared ``optional`` when the model gives it a default."""
    g = model.graph
    defaults = {t.name for t in g.initializer}
    inputs = ",\n".join(_triton_tensor(i, optional=i.name in defaults) for i in g.input)
    outputs = ",\n".join(_triton_tensor(o) for o in g.output)
    return ("# Written by `onnx-gradcam export --triton`; see examples/triton/README.md.\n"
            f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: 0\n'
            f"input [\n{inputs}\n]\noutput [\n{outputs}\n]\n")


def write_triton(model: onnx.ModelProto, repository: str | Path, name: str,
                 reads: tuple[Path, ...] = ()) -> Path:
    """Write ``repository/name/config.pbtxt`` and ``repository/name/1/model.onnx``; return the
    model's folder. An existing ``name`` folder is overwritten file by file, but never a file
    in ``reads`` (the source model and its data)."""
    if not name or not all(c.isalnum() or c in "_-." for c in name) or name.startswith("."):
        raise OnnxGradCamError(f"Triton model name {name!r}: use letters, digits, _ - and .")
    folder = Path(repository) / name
    for path in (folder / "1" / "model.onnx", folder / "config.pbtxt"):
        check_output_file(path, reads)
    atomic_write(folder / "1" / "model.onnx", model.SerializeToString())
    atomic_write(folder / "config.pbtxt", triton_config(model, name).encode())
    return folder
