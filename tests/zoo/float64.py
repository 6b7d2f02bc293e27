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

The float64 evaluator itself (a cast to double, vectorised numpy Conv and ConvTranspose) lives in
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


def head_relu_flips(model: onnx.ModelProto, layer: str, x: np.ndarray,
                    level: str = "ORT_ENABLE_ALL") -> list[tuple[str, int, float]]:
    """ReLU decisions in the head (the nodes downstream of ``layer``) that ONNX Runtime's float32
    forward, at graph optimisation ``level``, takes differently from this module's float64 one:
    (ReLU input, number of flipped entries, largest |x64| among them ÷ max |x64| of the tensor).
    """
    import onnxruntime as ort
    from onnx import helper

    down, watch = {layer}, []
    for node in model.graph.node:
        if any(i in down for i in node.input):
            down.update(node.output)
            if node.op_type == "Relu":
                watch.append(node.input[0])
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for name in watch:
        probe.graph.output.append(helper.make_tensor_value_info(name, F32, None))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    sess = ort.InferenceSession(probe.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    v32 = sess.run(watch, {sess.get_inputs()[0].name: x.astype(np.float32)})
    double = to_double(model)
    v64 = evaluator(double).run(watch, {double.graph.input[0].name: x.astype(np.float64)})
    flips = []
    for name, a, b in zip(watch, v32, v64):
        flipped = (a > 0) != (b > 0)
        if flipped.any():
            flips.append((name, int(flipped.sum()),
                          float(np.abs(b[flipped]).max() / np.abs(b).max())))
    return flips


def explainer_gradient32(model: onnx.ModelProto, layer: str, x: np.ndarray,
                         targets: np.ndarray, level: str) -> np.ndarray:
    """Our float32 gradient for ``layer`` on ONNX Runtime at graph optimisation ``level``."""
    import onnxruntime as ort

    loaded = load_model(model)
    graph = explainer_model(loaded.info, GraphSpec((layer,), loaded.logits))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    sess = ort.InferenceSession(graph.model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    return sess.run(graph.gradients[:1], {loaded.input_name: x.astype(np.float32),
                                          TARGET: targets.astype(np.int64)})[0]
