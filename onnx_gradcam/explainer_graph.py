"""The explainer graph: the forward model plus the head's gradient graph, as one ONNX model.

Inputs: the model's own inputs and ``ogc_target`` (int64 (N,), −1 = argmax per sample).
Outputs: the model's outputs, ``ogc_scores`` (N, C), ``ogc_targets`` (N,), the target layer's
activation, ``ogc_gradient`` (its gradient, laid out like the activation) and, when built for a
method that lives in the graph, ``ogc_coarse`` (N, 1, h, w): the method's map before ReLU and
normalisation, so a caller that wants only the map fetches h·w numbers, not 2·K·h·w.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

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
from onnx_gradcam.autodiff.summed import gradient_mean
from onnx_gradcam.cams import Method
from onnx_gradcam.cams.graph import heatmap, layer_coarse
from onnx_gradcam.errors import OnnxGradCamError
from onnx_gradcam.graph import GraphInfo, Shape
from onnx_gradcam.passes import simplify
from onnx_gradcam.targets import CATEGORY, KINDS, seed_inputs, seed_nodes
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
              inputs: list[onnx.ValueInfoProto], outputs: list[tuple[str, np.dtype, Shape | None]]
              ) -> onnx.ModelProto:
    model = onnx.ModelProto()
    model.CopyFrom(info.model)
    graph = model.graph
    graph.node.extend(nodes)
    graph.initializer.extend(inits)
    graph.input.extend(inputs)
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
                     [(GRADIENT, info.dtype(activation), info.shapes.get(activation))])


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


def explainer_model(info: GraphInfo, activations: list[str], score: str,
                    with_gradient: bool = True, rows: bool = False,
                    builder: str = "onnx", cam: Method | None = None,
                    layouts: Sequence[str] = (), targets: str = "ranks",
                    input_layout: str = "NCHW", grids: Sequence[Grid | None] = ()
                    ) -> ExplainerModel:
    """The full explainer graph (see module docstring) for one or more target layers.
    ``score`` may be (N, C) or (N, 1, 1, C)/(N, C, 1, 1); ``ogc_scores`` is always (N, C).

    With ``rows``, the graph also takes ``ogc_rows`` (int64 (M,)) and explains, for each m, the
    sample ``ogc_rows[m]`` for the target ``ogc_target[m]`` through a replicated head
    (:func:`replicate_head`): gradients and ``ogc_targets`` then have M rows, in one pass.
    ``builder`` picks the gradient builder (:func:`gradient_builder`). With ``cam`` (a method
    of :data:`onnx_gradcam.cams.GRAPH_METHODS`) and the activations' ``layouts``, the
    graph also outputs each layer's coarse map (``ogc_coarse``, ``ogc_coarse_1``, …) and the
    post-processed heatmap ``ogc_cams`` at the size of the input (whose ``input_layout`` says
    where its height and width are); a layer with a token ``grid`` is folded into an image
    (:meth:`~onnx_gradcam.tokens.Grid.image`) before the method reads it.
    ``targets`` says what ``ogc_target`` takes: ``ranks``, class indices and rank codes −1, −2,
    … (−r: the r-th best class); ``classes``, class indices and −1 (argmax) only (no sort,
    :func:`~onnx_gradcam.autodiff.builder.resolve_targets`); ``argmax``: the graph has no
    ``ogc_target`` input and explains each sample's best class (two nodes and one feed fewer,
    for the common call). A target kind of :mod:`onnx_gradcam.targets` (``segmentation``,
    ``similarity``, ``output``) builds the graph whose seed reads that kind's inputs instead.
    """
    build = gradient_builder(builder)
    dtype = info.dtype(score)
    op = Emitter(opset=info.opset, dtype=dtype, shapes=info.shapes, prefix="ogc_seed/")
    score_shape = info.shapes.get(score)
    if targets in KINDS.values():
        return _kind_model(info, activations, score, with_gradient, build, cam, layouts,
                           targets, input_layout, grids)
    two_d = score_shape is not None and len(score_shape) == 2
    score2d = score if two_d else op.Flatten(score, axis=1)
    if targets not in ("ranks", "classes", "argmax"):
        raise ValueError(f"targets must be ranks, classes, argmax or a target kind, "
                         f"not {targets!r}")
    rows = rows and with_gradient
    ranks = targets == "ranks" or rows
    target = TARGET if targets != "argmax" or rows else None
    extra_inputs = [_value(TARGET, np.dtype(np.int64), ["M"])] if target else []
    heads: list[tuple[GraphInfo, str, str]] = [(info, a, score) for a in activations]
    if rows:
        extra_inputs.append(_value(ROWS, np.dtype(np.int64), ["M"]))
        copies, replicated = [], []
        for index, activation in enumerate(activations):
            nodes, act_rep, score_rep = replicate_head(info, activation, score, ROWS,
                                                       f"__ogc_rep{index}")
            copies += nodes
            replicated.append((act_rep, score_rep))
        rep_info = GraphInfo(_assemble(info, copies, [], extra_inputs, []))
        heads = [(rep_info, a, s) for a, s in replicated]
        op.shapes = rep_info.shapes
        base_nodes = copies
    else:
        base_nodes = []
    seed_scores = op.Flatten(heads[0][2], axis=1) if rows else score2d
    seed2d, resolved = seed_one_hot(op, seed_scores, target, info.class_count(score), ranks)
    nodes = base_nodes + list(op.nodes)
    inits = list(op.initializers)

    def seed_of(index: int, head_info: GraphInfo, head_score: str
                ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], str, str | None]:
        seed_op = Emitter(opset=info.opset, dtype=dtype, prefix=f"ogc_seed{index}/")
        score_shape = head_info.shapes.get(head_score)
        if score_shape is not None and len(score_shape) == 2:  # (N, C) already
            seed, classes = seed2d, None if ranks else resolved
        else:
            seed, classes = seed_op.Reshape(seed2d, seed_op.Shape(head_score)), None
        return seed_op.nodes, seed_op.initializers, seed, classes

    return _with_gradients(info, score, activations, heads if with_gradient else [], seed_of, build,
                           cam, layouts, input_layout, nodes, inits, score2d, resolved,
                           extra_inputs, target is not None, grids)


def _kind_model(info: GraphInfo, activations: list[str], score: str, with_gradient: bool,
                build: Callable[..., GradientGraph], cam: Method | None, layouts: Sequence[str],
                kind: str, input_layout: str, grids: Sequence[Grid | None]) -> ExplainerModel:
    """The explainer graph for targets of a kind of :mod:`onnx_gradcam.targets`: the seed
    comes from the kind's inputs (:func:`~onnx_gradcam.targets.seed_nodes`); ``ogc_scores`` is
    the target's score (N, 1) and ``ogc_targets`` the category where there is one (else −1)."""
    dtype = info.dtype(score)
    shape = info.shapes.get(score)
    op = Emitter(opset=info.opset, dtype=dtype, shapes=info.shapes, prefix="ogc_seed/")
    seed, value = seed_nodes(op, kind, score, shape)
    label = (op.Identity(CATEGORY) if kind == "segmentation"
             else op.ConstantOfShape(op.dims(score, 0, 1), value=helper.make_tensor(
                 "minus_one", onnx.TensorProto.INT64, [1], [-1])))

    def seed_of(index: int, head_info: GraphInfo, head_score: str
                ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], str, str | None]:
        return [], [], seed, None

    return _with_gradients(info, score, activations,
                           [(info, a, score) for a in activations] if with_gradient else [],
                           seed_of, build, cam, layouts, input_layout, list(op.nodes),
                           list(op.initializers), value, label,
                           seed_inputs(kind, dtype, shape), False, grids)


def _with_gradients(info: GraphInfo, score: str, activations: list[str],
                    heads: list[tuple[GraphInfo, str, str]], seed_of: Callable,
                    build: Callable[..., GradientGraph], cam: Method | None,
                    layouts: Sequence[str], input_layout: str, nodes: list[onnx.NodeProto],
                    inits: list[onnx.TensorProto], score2d: str, resolved: str,
                    extra_inputs: list[onnx.ValueInfoProto], takes_target: bool,
                    grids: Sequence[Grid | None] = ()) -> ExplainerModel:
    """The explainer graph from its seed part: each head's gradient (seeded by ``seed_of``),
    coarse map and the heatmaps, and the outputs of the module docstring."""
    dtype = info.dtype(score)
    outputs = [(SCORES, dtype, (None, None)), (TARGETS, np.dtype(np.int64), (None,))]
    outputs += [(a, info.dtype(a), info.shapes.get(a)) for a in activations]
    gradients, head, coarse = [], [], []
    grids = list(grids) or [None] * len(activations)
    maps_shapes = [_coarse_shape(info.shapes.get(a), la, g)
                   for a, la, g in zip(activations, layouts, grids)]
    for index, (head_info, activation, head_score) in enumerate(heads):
        seed_nodes_, seed_inits, seed, classes = seed_of(index, head_info, head_score)
        grad = build(head_info, activation, head_score, seed, prefix=f"ogc_grad{index}/",
                     seed_classes=classes)
        name = indexed(GRADIENT, index)
        nodes += [*seed_nodes_, *grad.nodes,
                  helper.make_node("Identity", [grad.gradient], [name])]
        inits += [*seed_inits, *grad.initializers]
        outputs.append((name, info.dtype(activations[index]), info.shapes.get(activations[index])))
        gradients.append(name)
        head = head or grad.head
        if cam is not None:
            cam_op = Emitter(opset=info.opset, dtype=info.dtype(activations[index]),
                             shapes=dict(head_info.shapes), prefix=f"ogc_cam{index}/")
            coarse.append(indexed(COARSE, index))
            grid = grids[index]
            if grid is not None:  # tokens: folded into an NHWC image, no pooling shortcuts
                layer_map = layer_coarse(cam_op, cam, grid.image(cam_op, activation),
                                         grid.image(cam_op, grad.gradient), "NHWC")
            else:
                mean = None
                if cam.mean_weights and grad.pooled is None:
                    mean = gradient_mean(cam_op, head_info, activation,
                                         1 if layouts[index] == "NCHW" else 3,
                                         head_nodes(head_info, activation, head_score),
                                         grad.cotangents)
                layer_map = layer_coarse(cam_op, cam, activation, grad.gradient,
                                         layouts[index], grad.pooled, mean,
                                         head_info.nonnegative(activation),
                                         head_info.spatial_mean(activation, layouts[index]))
            nodes += [*cam_op.nodes, helper.make_node("Identity", [layer_map], [coarse[-1]])]
            inits += cam_op.initializers
            outputs.append((coarse[-1], info.dtype(activations[index]), maps_shapes[index]))
    nodes += [helper.make_node("Identity", [score2d], [SCORES]),
              helper.make_node("Identity", [resolved], [TARGETS])]
    cams = None
    if coarse:
        post = Emitter(opset=info.opset, dtype=info.dtype(activations[0]), prefix="ogc_post/")
        cams = CAMS
        sources = maps_shapes
        maps = heatmap(post, coarse, _input_size(post, info, input_layout),
                       [(s[2], s[3]) if s else (None, None) for s in sources])
        nodes += [*post.nodes, helper.make_node("Identity", [maps], [CAMS])]
        inits += post.initializers
        outputs.append((CAMS, info.dtype(activations[0]), _input_maps_shape(info, input_layout)))
    model = _assemble(info, nodes, inits, extra_inputs, outputs)
    return ExplainerModel(model, list(activations), gradients, head, coarse, cams, takes_target,
                          [i.name for i in extra_inputs if i.name not in (TARGET, ROWS)])


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
