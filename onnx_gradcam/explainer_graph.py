"""The explainer graph: the forward model plus the head's gradient graph, as one ONNX model.

Inputs: the model's own inputs and ``ogc_target`` (int64 (N,), −1 = argmax per sample).
Outputs: the model's outputs, ``ogc_scores`` (N, C), ``ogc_targets`` (N,), the target layer's
activation and ``ogc_gradient`` (its gradient, laid out like the activation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from onnx_gradcam.autodiff.builder import build_gradient, seed_one_hot
from onnx_gradcam.autodiff.emitter import Emitter
from onnx_gradcam.graph import GraphInfo, Shape

TARGET = "ogc_target"
SCORES = "ogc_scores"
TARGETS = "ogc_targets"
GRADIENT = "ogc_gradient"
SEED = "ogc_seed"


@dataclass
class ExplainerModel:
    model: onnx.ModelProto
    activations: list[str]
    gradients: list[str]  # one per activation; empty when built without gradients
    head_ops: list[str]


def gradient_name(index: int) -> str:
    return GRADIENT if index == 0 else f"{GRADIENT}_{index}"


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


def gradient_model(info: GraphInfo, activation: str, score: str) -> onnx.ModelProto:
    """The model plus input ``ogc_seed`` (shaped like ``score``) and output ``ogc_gradient``
    = Σ seed · ∂score/∂activation. The plainest form: tests and oracles use it."""
    dtype = info.dtype(score)
    grad = build_gradient(info, activation, score, SEED)
    ident = helper.make_node("Identity", [grad.gradient], [GRADIENT], name="ogc_gradient_out")
    return _assemble(info, [*grad.nodes, ident], grad.initializers,
                     [_value(SEED, dtype, _symbolic(info.shapes.get(score), SEED))],
                     [(GRADIENT, info.dtype(activation), info.shapes.get(activation))])


def explainer_model(info: GraphInfo, activations: list[str], score: str,
                    with_gradient: bool = True) -> ExplainerModel:
    """The full explainer graph (see module docstring) for one or more target layers.
    ``score`` may be (N, C) or (N, 1, 1, C)/(N, C, 1, 1); ``ogc_scores`` is always (N, C)."""
    dtype = info.dtype(score)
    op = Emitter(opset=info.opset, dtype=dtype, shapes=info.shapes, prefix="ogc_seed/")
    score2d = op.Flatten(score, axis=1)
    seed2d, resolved = seed_one_hot(op, score2d, TARGET)
    seed = op.Reshape(seed2d, op.Shape(score)) if with_gradient else None
    nodes, inits = list(op.nodes), list(op.initializers)
    outputs = [(SCORES, dtype, (None, None)), (TARGETS, np.dtype(np.int64), (None,))]
    outputs += [(a, info.dtype(a), info.shapes.get(a)) for a in activations]
    gradients, head = [], []
    for index, activation in enumerate(activations if with_gradient else []):
        grad = build_gradient(info, activation, score, seed, prefix=f"ogc_grad{index}/")
        name = gradient_name(index)
        nodes += [*grad.nodes, helper.make_node("Identity", [grad.gradient], [name])]
        inits += grad.initializers
        outputs.append((name, info.dtype(activation), info.shapes.get(activation)))
        gradients.append(name)
        head = head or grad.head
    nodes += [helper.make_node("Identity", [score2d], [SCORES]),
              helper.make_node("Identity", [resolved], [TARGETS])]
    model = _assemble(info, nodes, inits, [_value(TARGET, np.dtype(np.int64), ["N"])], outputs)
    return ExplainerModel(model, list(activations), gradients, head)
