"""The explainer graph: the forward model plus the head's gradient graph, as one ONNX model.

Inputs: the model's own inputs and ``ogc_target`` (int64 (N,), −1 = argmax per sample), or
for a target kind of :mod:`onnx_gradcam.targets` that kind's inputs (:func:`seed`).
Outputs: the model's outputs, ``ogc_scores`` (N, C), ``ogc_targets`` (N,), the target layer's
activation, ``ogc_gradient`` (its gradient, laid out like the activation) and, when built for a
method that lives in the graph, ``ogc_coarse`` (N, 1, h, w): the method's map before ReLU and
normalisation, so a caller that wants only the map fetches h·w numbers, not 2·K·h·w.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import NamedTuple

import numpy as np
import onnx
from onnx import helper

from onnx_gradcam.autodiff.builder import (
    FLOAT_TYPES,
    GradientGraph,
    build_gradient,
    head_nodes,
    seed_one_hot,
)
from onnx_gradcam.autodiff.emitter import Emitter
from onnx_gradcam.autodiff.summed import consumer_gradient_mean, gradient_mean
from onnx_gradcam.cams import Method
from onnx_gradcam.cams.graph import Facts, heatmap, layer_coarse
from onnx_gradcam.errors import OnnxGradCamError
from onnx_gradcam.graph import GraphInfo, Shape
from onnx_gradcam.narrow import narrow_head
from onnx_gradcam.passes import simplify
from onnx_gradcam.targets import SEED_KINDS, seed_inputs, seed_nodes
from onnx_gradcam.tokens import Grid

TARGET = "ogc_target"
SCORES = "ogc_scores"
TARGETS = "ogc_targets"
GRADIENT = "ogc_gradient"
COARSE = "ogc_coarse"
CAMS = "ogc_cams"
SEED = "ogc_seed"
ROWS = "ogc_rows"


@dataclass
class ExplainerModel:
    model: onnx.ModelProto
    activations: list[str]
    gradients: list[str]  # one per activation; empty when built without gradients
    head_ops: list[str]
    coarse: list[str] = field(default_factory=list)  # per layer (N, 1, h, w), with ``cam``
    #: with ``cam``: the post-processed heatmap ``ogc_cams`` (N, 1, H, W)
    #: (CAM_CONVENTIONS.md, steps 1-4)
    cams: str | None = None
    takes_target: bool = True  # whether the graph has the input ``ogc_target``
    spec: GraphSpec | None = None  # what it was built from (:func:`explainer_model`)
    #: the inputs of a target kind's seed (:func:`onnx_gradcam.targets.seed_inputs`)
    seed_inputs: list[str] = field(default_factory=list)

    @cached_property
    def map_outputs(self) -> list[str]:
        """What a map session fetches: scores, targets, the coarse maps and the heatmaps."""
        return [SCORES, TARGETS, *self.coarse, *([self.cams] if self.cams else [])]

    def maps_model(self) -> onnx.ModelProto:
        """The graph with only the outputs a map needs (:attr:`map_outputs`), so ONNX
        Runtime drops what only the layer tensors' outputs need; the full model where the map
        is not computed in the graph."""
        if not self.coarse:
            return self.model
        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        wanted = set(self.map_outputs)
        keep = [o for o in model.graph.output if o.name in wanted]
        del model.graph.output[:]
        model.graph.output.extend(keep)
        simplify(model.graph)
        return model


def gradient_builder(name: str) -> Callable[..., GradientGraph]:
    """``onnx``: our VJP rules; ``ort-training``: onnxruntime-training's builder, lowered."""
    if name == "onnx":
        return build_gradient
    if name == "ort-training":
        from onnx_gradcam.autodiff.ort_training import build_gradient_ort

        return build_gradient_ort
    raise OnnxGradCamError(f"unknown gradient builder {name!r}; choose onnx or ort-training")


def indexed(name: str, index: int) -> str:
    """``name`` for the first layer, ``name_<index>`` for the others."""
    return name if index == 0 else f"{name}_{index}"


def _value(name: str, dtype: np.dtype | int, shape: list) -> onnx.ValueInfoProto:
    elem = dtype if isinstance(dtype, int) else helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    return helper.make_tensor_value_info(name, elem, shape)


def _symbolic(shape: Shape | None, name: str) -> list:
    """A value-info shape: static dims kept, unknown ones named; unknown rank → rank 0 dims."""
    if shape is None:
        return []
    return [d if d is not None else f"{name}_d{i}" for i, d in enumerate(shape)]


def _assemble(info: GraphInfo, nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto],
              inputs: list[onnx.ValueInfoProto], outputs: list[tuple[str, np.dtype, Shape | None]],
              value_info: Sequence[onnx.ValueInfoProto] = ()) -> onnx.ModelProto:
    model = onnx.ModelProto()
    model.CopyFrom(info.model)
    graph = model.graph
    graph.node.extend(nodes)
    graph.initializer.extend(inits)
    graph.input.extend(inputs)
    graph.value_info.extend(value_info)
    existing = {o.name for o in graph.output}
    for name, dtype, shape in outputs:
        if name not in existing:
            graph.output.append(_value(name, dtype, _symbolic(shape, name)))
            existing.add(name)
    return model


def _coarse_shape(shape: Shape | None, layout: str, grid: Grid | None = None) -> Shape | None:
    """(N, 1, h, w) of a layer's map, from the layer's NCHW or NHWC shape or token grid."""
    if grid is not None:
        return (shape[0] if shape else None, 1, grid.h, grid.w)
    if shape is None or len(shape) != 4:
        return None
    return (shape[0], 1, *(shape[2:4] if layout == "NCHW" else shape[1:3]))


def gradient_model(info: GraphInfo, activation: str, score: str,
                   builder: str = "onnx") -> onnx.ModelProto:
    """The model plus input ``ogc_seed`` (shaped like ``score``) and output ``ogc_gradient``
    = Σ seed · ∂score/∂activation. The plainest form: tests and oracles use it."""
    dtype = info.dtype(score)
    grad = gradient_builder(builder)(info, activation, score, SEED)
    ident = helper.make_node("Identity", [grad.gradient], [GRADIENT], name="ogc_gradient_out")
    return _assemble(info, [*grad.nodes, ident], grad.initializers,
                     [_value(SEED, dtype, _symbolic(info.shapes.get(score), SEED))],
                     [(GRADIENT, info.dtype(activation), info.shapes.get(activation))],
                     grad.value_info)


def replicate_head(info: GraphInfo, activation: str, score: str, rows: str, tag: str
                   ) -> tuple[list[onnx.NodeProto], str, str]:
    """A copy of the head (``activation`` → ``score``) that runs on the batch rows ``rows``
    (int64 (M,)): its inputs that carry the batch are gathered, its tensors renamed with ``tag``.

    Explaining k classes of N images then costs one backbone pass: the cheap head runs again on
    the N·k selected rows and is differentiated there. Returns (nodes, activation, score) of
    the copy.
    """
    downstream = {o for i in info.descendants(info.graph_inputs[0]) for o in info.nodes[i].output}
    rename: dict[str, str] = {}
    nodes: list[onnx.NodeProto] = []

    def gathered(name: str) -> str:
        if name not in rename:
            rename[name] = name + tag
            nodes.append(helper.make_node("Gather", [name, rows], [rename[name]], axis=0))
        return rename[name]

    gathered(activation)
    for index in head_nodes(info, activation, score):
        node = onnx.NodeProto()
        node.CopyFrom(info.nodes[index])
        for j, name in enumerate(node.input):
            if name in rename:
                node.input[j] = rename[name]
            elif name in downstream and info.elem_types.get(name) in FLOAT_TYPES:
                node.input[j] = gathered(name)
        for j, name in enumerate(node.output):
            if name:
                rename[name] = node.output[j] = name + tag
        node.name = node.name + tag if node.name else ""
        nodes.append(node)
    return nodes, rename[activation], rename[score]


@dataclass(frozen=True)
class GraphSpec:
    """What an explainer graph computes; with the model, the key of a built graph.

    ``layers``: the target activations, laid out as ``layouts`` says (NCHW or NHWC).
    ``score``: the differentiated tensor, (N, C) or (N, 1, 1, C)/(N, C, 1, 1); ``ogc_scores``
    is always (N, C). ``method``: a method with a graph form, whose coarse maps
    (``ogc_coarse``, ``ogc_coarse_1``, …) and heatmap ``ogc_cams`` at the input size (whose
    ``input_layout`` says where its height and width are) the graph then outputs; None: the
    graph stops at the gradients. ``gradient``: False for gradient-free methods (no gradient
    graph). ``seed``: what ``ogc_target`` takes (:func:`seed`). ``rows``: the graph also takes
    ``ogc_rows`` (int64 (M,)) and explains, for each m, the sample ``ogc_rows[m]`` for the target
    ``ogc_target[m]`` through a replicated head (:func:`replicate_head`): gradients and
    ``ogc_targets`` then have M rows, in one pass. ``builder``: :func:`gradient_builder`.
    ``grids``: per layer, the token grid (:class:`~onnx_gradcam.tokens.Grid`) a (N, T, C)
    layer is folded into before the method reads it, or None for an image layer.
    """

    layers: tuple[str, ...]
    score: str
    method: Method | None = None
    gradient: bool = True
    seed: str = "ranks"
    rows: bool = False
    layouts: tuple[str, ...] = ()
    input_layout: str = "NCHW"
    builder: str = "onnx"
    grids: tuple[Grid | None, ...] = ()

    def __post_init__(self) -> None:
        if self.seed not in SEEDS and self.seed not in SEED_KINDS:
            raise ValueError(f"seed must be one of {', '.join(SEEDS)} or a target kind "
                             f"({', '.join(SEED_KINDS)}), not {self.seed!r}")
        if self.rows and self.seed in SEED_KINDS:
            raise ValueError(f"rows explain class targets only, not {self.seed!r} targets")

    def grid(self, index: int) -> Grid | None:
        """Layer ``index``'s token grid, None for an image layer."""
        return self.grids[index] if self.grids else None


#: What ``ogc_target`` takes. ``ranks``: class indices and rank codes −1, −2, … (−r: the r-th
#: best class); ``classes``: class indices and −1 (argmax) only (no sort,
#: :func:`~onnx_gradcam.autodiff.builder.resolve_targets`); ``argmax``: no ``ogc_target`` input,
#: each sample's best class (two nodes and one feed fewer, for the common call). Besides these,
#: ``seed`` may be a target kind of :mod:`onnx_gradcam.targets` (``segmentation``,
#: ``similarity``, ``output``): the seed then reads that kind's inputs instead of ``ogc_target``.
SEEDS = ("ranks", "classes", "argmax")


@dataclass
class Seed:
    """The cotangent the gradient graph starts from (:func:`seed`)."""

    inputs: list[onnx.ValueInfoProto]  # the graph inputs it reads
    #: (M, C), or shaped like the score for a target kind: Σ value · ∂score/∂activation is the
    #: gradient
    value: str
    #: (M,) int64: the class each row explains (the output ``ogc_targets``; a target kind's
    #: category, or −1 where it has none)
    targets: str
    one_hot: bool  # value is one-hot at ``targets`` (the builder then folds its products)
    #: a target kind's score (M, 1), which ``ogc_scores`` then outputs instead of the class scores
    score: str | None = None


def seed(op: Emitter, spec: GraphSpec, scores: str, classes: int | None) -> Seed:
    """The seed of ``spec`` on the (M, C) ``scores`` (``classes`` = C where static): the one
    place a kind of target turns into a cotangent. A target kind
    (:mod:`onnx_gradcam.targets`) reads its own inputs and ``spec.score`` as it is."""
    if spec.seed in SEED_KINDS:
        shape = op.shapes.get(spec.score)
        value, score, label = seed_nodes(op, spec.seed, spec.score, shape)
        return Seed(seed_inputs(spec.seed, op.dtype, shape), value, label, one_hot=False,
                    score=score)
    ranks = spec.seed == "ranks" or spec.rows
    target = TARGET if spec.seed != "argmax" or spec.rows else None
    inputs = [_value(TARGET, np.dtype(np.int64), ["M"])] if target else []
    value, resolved = seed_one_hot(op, scores, target, classes, ranks)
    return Seed(inputs, value, resolved, one_hot=not ranks)


class Head(NamedTuple):
    """A layer's head: the graph it lives in, its activation and the score it ends in."""

    info: GraphInfo
    activation: str
    score: str


class _Parts:
    """Nodes, initializers and outputs gathered step by step into one model."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.outputs: list[tuple[str, np.dtype, Shape | None]] = []
        self.value_info: list[onnx.ValueInfoProto] = []

    def add(self, op: Emitter | GradientGraph, *nodes: onnx.NodeProto) -> None:
        self.nodes += [*op.nodes, *nodes]
        self.inits += op.initializers
        if isinstance(op, GradientGraph):
            self.value_info += op.value_info


def _identity(source: str, name: str) -> onnx.NodeProto:
    return helper.make_node("Identity", [source], [name])


def explainer_model(info: GraphInfo, spec: GraphSpec) -> ExplainerModel:
    """The full explainer graph (see module docstring) of ``spec``: the seed, per layer its
    gradient and map, the heatmap, assembled into one model."""
    dtype = info.dtype(spec.score)
    op = Emitter(opset=info.opset, dtype=dtype, shapes=info.shapes, prefix="ogc_seed/")
    score_shape = info.shapes.get(spec.score)
    two_d = score_shape is not None and len(score_shape) == 2
    kind = spec.seed in SEED_KINDS  # its seed reads the score as it is
    score2d = spec.score if two_d or kind else op.Flatten(spec.score, axis=1)
    rows = spec.rows and spec.gradient
    parts = _Parts()
    heads = [Head(info, a, spec.score) for a in spec.layers]
    row_inputs = []
    if rows:
        row_inputs = [_value(ROWS, np.dtype(np.int64), ["M"])]
        heads = _replicated_heads(info, spec, row_inputs, parts)
        op.shapes = heads[0].info.shapes
    seed_scores = op.Flatten(heads[0].score, axis=1) if rows else score2d
    start = seed(op, replace(spec, rows=rows), seed_scores, info.class_count(spec.score))
    parts.add(op)
    parts.outputs += [(SCORES, dtype, (None, None)), (TARGETS, np.dtype(np.int64), (None,))]
    parts.outputs += [(a, info.dtype(a), info.shapes.get(a)) for a in spec.layers]
    gradients, head, coarse = [], [], []
    for index, layer_head in enumerate(heads if spec.gradient else []):
        layer_head = _narrowed(layer_head, index, parts)
        grad = _layer_gradient(info, spec, index, layer_head, start, parts)
        gradients.append(indexed(GRADIENT, index))
        head = head or grad.head
        if spec.method is not None:
            coarse.append(_layer_map(info, spec, index, layer_head, grad, parts))
    parts.nodes += [_identity(start.score or score2d, SCORES),
                    _identity(start.targets, TARGETS)]
    cams = _heatmap(info, spec, coarse, parts) if coarse else None
    model = _assemble(info, parts.nodes, parts.inits, [*start.inputs, *row_inputs], parts.outputs,
                      parts.value_info)
    takes_target = any(i.name == TARGET for i in start.inputs)
    return ExplainerModel(model, list(spec.layers), gradients, head, coarse, cams, takes_target,
                          spec, [i.name for i in start.inputs if i.name != TARGET])


def _replicated_heads(info: GraphInfo, spec: GraphSpec, inputs: list[onnx.ValueInfoProto],
                      parts: _Parts) -> list[Head]:
    """Per layer, (graph, activation, score) of a copy of its head on the rows ``ogc_rows``."""
    copies, replicated = [], []
    for index, activation in enumerate(spec.layers):
        nodes, act_rep, score_rep = replicate_head(info, activation, spec.score, ROWS,
                                                   f"__ogc_rep{index}")
        copies += nodes
        replicated.append((act_rep, score_rep))
    rep_info = GraphInfo(_assemble(info, copies, [], inputs, []))
    parts.nodes += copies
    return [Head(rep_info, a, sc) for a, sc in replicated]


def _narrowed(head: Head, index: int, parts: _Parts) -> Head:
    """``head``, or where it reads a few tokens after token-wise ops, its copy on those tokens
    (:mod:`onnx_gradcam.narrow`), whose backward skips the rows the score never reads."""
    found = narrow_head(head.info, head.activation, head.score, f"__ogc_narrow{index}")
    if found is None:
        return head
    nodes, score = found
    parts.nodes += nodes
    return Head(GraphInfo(_assemble(head.info, nodes, [], [], [])), head.activation, score)


def _layer_gradient(info: GraphInfo, spec: GraphSpec, index: int, head: Head, start: Seed,
                    parts: _Parts) -> GradientGraph:
    """The gradient of layer ``index`` (output ``ogc_gradient``, ``ogc_gradient_1``, …): the
    seed, reshaped like a score that is not (N, C), through the layer's head."""
    seed_op = Emitter(opset=info.opset, dtype=info.dtype(spec.score), prefix=f"ogc_seed{index}/")
    score_shape = head.info.shapes.get(head.score)
    if start.score is not None or (score_shape is not None and len(score_shape) == 2):
        # a target kind's seed is shaped like the score, a class seed is (N, C) already here
        value, classes = start.value, start.targets if start.one_hot else None
    else:
        value, classes = seed_op.Reshape(start.value, seed_op.Shape(head.score)), None
    grad = gradient_builder(spec.builder)(head.info, head.activation, head.score, value,
                                          prefix=f"ogc_grad{index}/", seed_classes=classes)
    name = indexed(GRADIENT, index)
    parts.add(seed_op)
    parts.add(grad, _identity(grad.gradient, name))
    layer = spec.layers[index]
    parts.outputs.append((name, info.dtype(layer), info.shapes.get(layer)))
    return grad


def _layer_map(info: GraphInfo, spec: GraphSpec, index: int, head: Head, grad: GradientGraph,
               parts: _Parts) -> str:
    """Layer ``index``'s coarse map (``ogc_coarse``, ``ogc_coarse_1``, …) by the method's
    graph form, given what the head says about its gradient and activation (:class:`Facts`)."""
    method, layout, activation = spec.method, spec.layouts[index], spec.layers[index]
    head_info, head_activation = head.info, head.activation
    assert method is not None
    cam_op = Emitter(opset=info.opset, dtype=info.dtype(activation),
                     shapes=dict(head_info.shapes), prefix=f"ogc_cam{index}/")
    name = indexed(COARSE, index)
    grid = spec.grid(index)
    if grid is not None:  # tokens: folded into an NHWC image, no pooling shortcuts
        layer_map = layer_coarse(cam_op, method, grid.image(cam_op, head_activation),
                                 grid.image(cam_op, grad.gradient), "NHWC")
    else:
        mean = None
        if method.mean_weights and grad.pooled is None:
            # the head's matrix product, else the layer's own consumers (an early layer)
            args = (cam_op, head_info, head_activation, 1 if layout == "NCHW" else 3,
                    head_nodes(head_info, head_activation, head.score), grad.cotangents)
            mean = gradient_mean(*args)
            if mean is None:
                mean = consumer_gradient_mean(*args)
        facts = Facts(grad.pooled, mean, head_info.nonnegative(head_activation),
                      head_info.spatial_mean(head_activation, layout))
        layer_map = layer_coarse(cam_op, method, head_activation, grad.gradient, layout, facts)
    parts.add(cam_op, _identity(layer_map, name))
    parts.outputs.append((name, info.dtype(activation),
                          _coarse_shape(info.shapes.get(activation), layout, grid)))
    return name


def _heatmap(info: GraphInfo, spec: GraphSpec, coarse: list[str], parts: _Parts) -> str:
    """The post-processed heatmap ``ogc_cams`` (N, 1, H, W) of the layers' coarse maps."""
    first = spec.layers[0]
    post = Emitter(opset=info.opset, dtype=info.dtype(first), prefix="ogc_post/")
    sources = [_coarse_shape(info.shapes.get(a), la, spec.grid(i))
               for i, (a, la) in enumerate(zip(spec.layers, spec.layouts))]
    maps = heatmap(post, coarse, _input_size(post, info, spec.input_layout),
                   [(s[2], s[3]) if s else (None, None) for s in sources])
    parts.add(post, _identity(maps, CAMS))
    parts.outputs.append((CAMS, info.dtype(first), _input_maps_shape(info, spec.input_layout)))
    return CAMS


def input_hw(info: GraphInfo, layout: str) -> tuple[str, int, tuple[int | None, ...]]:
    """The image input's name, the axis its height starts at, and its static (H, W)."""
    name = info.graph_inputs[0]
    first = 2 if layout == "NCHW" else 1
    shape = info.shapes.get(name) or (None,) * 4
    return name, first, tuple(shape[first:first + 2])


def _input_size(op: Emitter, info: GraphInfo, layout: str) -> tuple[int, int] | str:
    """The input's (H, W): static, else read from its shape in the graph."""
    name, first, (h, w) = input_hw(info, layout)
    return (h, w) if h is not None and w is not None else op.dims(name, first, first + 2)


def _input_maps_shape(info: GraphInfo, layout: str) -> tuple[int | None, ...]:
    """(N, 1, H, W) of the heatmaps of the input's batch."""
    name, _, hw = input_hw(info, layout)
    return ((info.shapes.get(name) or (None,))[0], 1, *hw)
