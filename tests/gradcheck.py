"""Oracle 1: float64 central finite differences, checked along random directions.

For f: x ↦ y and a random cotangent c, the gradient graph returns g = Jᵀc. Along a random
direction t, <t, g> must equal <c, (f(x + h·t) − f(x − h·t)) / 2h> (the inner-product identity
JAX's ``check_vjp`` uses). Several directions make a wrong rule fail with near certainty.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from onnx_gradcam.autodiff.rules.qoperator import float_meaning
from onnx_gradcam.explainer_graph import GRADIENT, SEED, gradient_model
from onnx_gradcam.graph import GraphInfo
from tests.zoo.float64 import evaluator


def make_model(nodes, inputs, output="y", inits=None, opset=17, dtype=np.float64,
               extra_outputs=(), domains=None):
    """A model with float inputs ``inputs`` = [(name, shape)] and output ``output``."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    graph = helper.make_graph(
        nodes, "case",
        [helper.make_tensor_value_info(n, elem, s) for n, s in inputs],
        [helper.make_tensor_value_info(o, elem, None) for o in (output, *extra_outputs)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)] + [
        helper.make_opsetid(d, v) for d, v in (domains or {}).items()])
    model.ir_version = 8
    outputs = list(model.graph.output)
    del model.graph.output[:]
    readable = float_meaning(model) if domains else model  # contrib ops: their float meaning
    inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(readable).graph.value_info}
    model.graph.output.extend(inferred.get(o.name, o) for o in outputs)
    return model


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def check_vjp(model, feeds, wrt="x", score="y", directions=3, rtol=1e-6, eps=1e-6, seed=20261127,
              reference=None):
    """Assert the gradient graph of ``score`` w.r.t. ``wrt`` matches central differences (of
    ``reference``, a float64 model with the same inputs and score, where given: the real-valued
    function a quantized ``model`` approximates)."""
    rng = np.random.default_rng(seed)
    info = GraphInfo(model)
    grad_model = gradient_model(info, wrt, score)
    onnx.checker.check_model(grad_model, full_check=True)
    backward = session(grad_model)
    # the reference in float64 by onnx.reference (ONNX Runtime has no double Conv)
    forward = session(model) if reference is None else evaluator(reference)
    model_feeds = feeds
    if reference is not None:  # the model's own dtype (ORT quantizes float32) for the gradient
        feeds = {k: v.astype(np.float64) for k, v in feeds.items()}
    y = forward.run([score], feeds)[0]
    c = rng.standard_normal(y.shape).astype(y.dtype)
    dtype = next(iter(model_feeds.values())).dtype
    g = backward.run([GRADIENT], {**model_feeds, SEED: c.astype(dtype)})[0]
    x = feeds[wrt]
    assert g.shape == x.shape, (g.shape, x.shape)
    for _ in range(directions):
        t = rng.standard_normal(x.shape).astype(x.dtype)
        plus = forward.run([score], {**feeds, wrt: x + eps * t})[0]
        minus = forward.run([score], {**feeds, wrt: x - eps * t})[0]
        numeric = float(np.sum(c * (plus - minus)) / (2 * eps))
        analytic = float(np.sum(t * g))
        # relative to the Cauchy–Schwarz bound |t|·|g|, so cancellation cannot hide or fake errors
        scale = max(abs(numeric), abs(analytic), float(np.linalg.norm(t) * np.linalg.norm(g)))
        # the rounding noise of the difference quotient itself (matters when the gradient is ~0)
        noise = 10 * np.finfo(y.dtype).eps * float(np.abs(c).sum() * np.abs(y).max()) / eps
        assert abs(numeric - analytic) <= rtol * scale + noise, (numeric, analytic)
    return g
