"""Run an explainer graph in float64 with ``onnx.reference`` (ONNX Runtime has no double Conv).

Why: in float32, TensorFlow and ONNX Runtime round differently (≈1e-5 relative after 50 layers),
so a few of the millions of ReLU / MaxPool decisions of a deep ReLU net flip between the two, and
a gradient taken far below the output differs by up to ~10 % of its maximum *between TF float32
and TF float64 themselves*. Comparing our float32 gradient with TF float32 at 1e-4 therefore tests
rounding, not rules. In float64 flips are rare, and our gradient graph on the converted graph
cast to double matches TF's float64 GradientTape to ~1e-6 where no decision differs (ResNet-50,
all layers). One residual source remains: tf2onnx folds BatchNorm into conv weights in float32,
so the double model's weights differ from TF float64's by ~1e-7 and a head with millions of
ReLU6/ReLU units can still flip one or two (MobileNetV2: ~5e-3 at the early layer).

The float64 evaluator itself (a cast to double, vectorised numpy Conv, ConvTranspose, MaxPool
and AveragePool: ``onnx.reference``'s own are pure-Python loops) lives in
:mod:`onnx_gradcam.reference`, checked against ONNX Runtime in ``test_float64_ops``.
"""

from __future__ import annotations

import numpy as np
import onnx

from onnx_gradcam.explainer_graph import TARGET, GraphSpec, explainer_model
from onnx_gradcam.model import load_model
from onnx_gradcam.reference import FAST_OPS, Conv, ConvTranspose, evaluator, to_double

__all__ = ["FAST_OPS", "Conv", "ConvTranspose", "evaluator", "to_double"]

F32, F64 = onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE


def gradients64(model: onnx.ModelProto, layers: list[str], x: np.ndarray,
                targets: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """(scores, gradients) of our explainer graph for ``layers``, evaluated in float64.

    ``model``: a float64 model (e.g. tf2onnx's conversion of a float64 Keras model), or a float32
    one, cast to double first. The explainer graph is built from it exactly as
    :class:`onnx_gradcam.Explainer` builds it from a float one.
    """
    if model.graph.input[0].type.tensor_type.elem_type != F64:
        model = to_double(model)
    loaded = load_model(model)
    graph = explainer_model(loaded.info, GraphSpec(tuple(layers), loaded.logits))
    onnx.checker.check_model(graph.model, full_check=True)
    outputs = evaluator(graph.model).run(
        ["ogc_scores", *graph.gradients],
        {loaded.input_name: x.astype(np.float64), TARGET: targets.astype(np.int64)})
    return outputs[0], outputs[1:]
