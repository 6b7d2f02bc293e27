"""Grad-CAM weights taken without forming the gradient (onnx_gradcam.autodiff.summed): of
VGG-style heads, against float64 finite differences of the head; at an early layer, from its
consumers' cotangents, against the float64 mean of the full gradient."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

import onnx_gradcam as og
from onnx_gradcam.autodiff.builder import build_gradient, head_nodes
from onnx_gradcam.autodiff.emitter import Emitter
from onnx_gradcam.autodiff.summed import consumer_gradient_mean
from onnx_gradcam.cams import METHODS
from onnx_gradcam.explainer_graph import GRADIENT
from onnx_gradcam.graph import GraphInfo
from onnx_gradcam.reference import evaluator, to_double
from tests.gradcheck import make_model, session
from tests.models import FLAT_HEADS, flat_head, flat_head_cnn


def average_pool(a: np.ndarray, kernel: int, pad: int) -> np.ndarray:
    """Stride-2 average pooling that counts the zero pads (ONNX Runtime has no float64 one)."""
    padded = np.pad(a, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    size = (padded.shape[2] - kernel) // 2 + 1
    out = np.zeros((*a.shape[:2], size, size))
    for i in range(size):
        for j in range(size):
            out[:, :, i, j] = padded[:, :, 2 * i:2 * i + kernel, 2 * j:2 * j + kernel].mean(
                axis=(2, 3))
    return out


def head_function(head: str, acts_shape: tuple[int, ...]):
    """The head as a float64 function of the layer: ONNX Runtime on the head's nodes, with
    an average pooling done by :func:`average_pool` first."""
    nodes, weights = flat_head(head)
    if nodes[0].op_type == "AveragePool":
        kernel, pad = (3, 1) if head.startswith("padded") else (2, 0)
        pooled = average_pool(np.zeros(acts_shape), kernel, pad)
        run = session(make_model(nodes[1:], [("pool", ["N", *pooled.shape[1:]])],
                                 output="logits", inits=weights))
        return lambda a: run.run(["logits"], {"pool": average_pool(a, kernel, pad)})[0]
    run = session(make_model(nodes, [("act", ["N", *acts_shape[1:]])], output="logits",
                             inits=weights))
    return lambda a: run.run(["logits"], {"act": a})[0]


def finite_difference_weights(head: str, acts: np.ndarray, targets: np.ndarray,
                              eps: float = 1e-6) -> np.ndarray:
    """w_nk = (1/h·w) Σ_ij ∂s/∂A_kij: the derivative of the target score along the direction
    that adds 1 to every position of channel k, by float64 central differences of the head."""
    f = head_function(head, acts.shape)
    n, k, h, w = acts.shape
    out = np.zeros((n, k))
    for c in range(k):
        step = np.zeros_like(acts, dtype=np.float64)
        step[:, c] = eps
        out[:, c] = (f(acts + step) - f(acts - step))[np.arange(n), targets] / (2 * eps) / (h * w)
    return out


@pytest.mark.parametrize("head", FLAT_HEADS)
def test_gradcam_weights_of_flattening_heads_equal_finite_differences(head: str) -> None:
    x = np.random.default_rng(3).standard_normal((3, 3, 16, 16)).astype(np.float32)
    ex = og.Explainer(flat_head_cnn(head), layer="act")
    res = ex.explain(x, targets=[0, 3, 4])
    acts = res.activations[0].astype(np.float64)
    w = finite_difference_weights(head, acts, res.targets)
    expected = np.einsum("nk,nkhw->nhw", w, acts)  # coarse maps come before the ReLU
    scale = np.abs(expected).max()
    assert np.abs(res.coarse - expected).max() <= 1e-5 * scale
    # the same weights as the full gradient's mean (the other methods' input)
    np.testing.assert_allclose(res.gradients[0].mean(axis=(2, 3)), w, rtol=1e-4,
                               atol=1e-6 * np.abs(w).max())
    # the maps graph reads the first weight for the forward product and, with the shortcut,
    # for the constant-folded sums Q, never for the backward product g·Wᵀ; a padded pooling
    # that counts its pads does not keep the sums: the gradient is formed and averaged
    first = "wh" if "wh" in flat_head(head)[1] else "wo"
    ops = [n.op_type for n in ex.graph.maps_model().graph.node if first in n.input]
    if head == "padded_avgpool_matmul":
        assert len(ops) == 2 and "Reshape" not in ops, ops
    else:
        assert sorted(ops) == ["MatMul" if "matmul" in head else "Gemm", "Reshape"]


# ---- an early layer: the mean from the cotangents of the layer's consumers -------------------
N, K, H, W = 2, 4, 15, 16  # batch, channels, the layer's height and width (odd and even)
CLASSES = 5


def _conv(x: str, y: str, weight: str, **attrs) -> onnx.NodeProto:
    return helper.make_node("Conv", [x, weight], [y], **attrs)


def _pad(x: str, y: str, pads: str, mode: str = "constant") -> onnx.NodeProto:
    return helper.make_node("Pad", [x, pads], [y], mode=mode)


#: id → (nodes reading ``act`` (and ``side``, a tensor of the same shape), their weights'
#: shapes (int64 arrays as given), whether the layer is NHWC). The consumer outputs the head
#: reads are the tensors named y…
CONSUMER_CASES = {
    # tf2onnx's SAME of a stride-2 conv on an even side: an explicit Pad after, none before
    "depthwise_s2_tf2onnx_pad": (
        [_pad("act", "p", "pads"), _conv("p", "y1", "wd", group=K, strides=[2, 2])],
        {"wd": (K, 1, 3, 3), "pads": np.array([0, 0, 0, 0, 0, 0, 1, 1])}, False),
    "depthwise_multiplier_s2": (
        [_conv("act", "y1", "wd", group=K, strides=[2, 2], pads=[0, 1, 1, 0])],
        {"wd": (2 * K, 1, 3, 3)}, False),
    "depthwise_s1_same": (
        [_conv("act", "y1", "wd", group=K, auto_pad="SAME_UPPER")], {"wd": (K, 1, 3, 3)}, False),
    "dense_3x3_s2_pads": (
        [helper.make_node("Conv", ["act", "w", "b"], ["y1"], strides=[2, 2], pads=[1, 1, 1, 1])],
        {"w": (6, K, 3, 3), "b": (6,)}, False),
    "dense_1x1_s2": (
        [helper.make_node("Conv", ["act", "w", "b"], ["y1"], strides=[2, 2])],
        {"w": (6, K, 1, 1), "b": (6,)}, False),
    "dense_dilation_2": (
        [_conv("act", "y1", "w", dilations=[2, 2], pads=[2, 1, 1, 2])], {"w": (6, K, 3, 3)},
        False),
    "conv_and_residual": (
        [_conv("act", "y1", "wd", group=K, pads=[1, 1, 1, 1]),
         helper.make_node("Add", ["act", "side"], ["y2"]),
         helper.make_node("Sub", ["side", "act"], ["y3"])],
        {"wd": (K, 1, 3, 3)}, False),
    # tf2onnx's NHWC block: Pad of H and W, Transpose to NCHW, Conv; the residual Add NHWC;
    # and a Transpose that swaps height and width on the way to a SAME_LOWER conv
    "nhwc_transposes": (
        [_pad("act", "p", "pads"),
         helper.make_node("Transpose", ["p"], ["pt"], perm=[0, 3, 1, 2]),
         _conv("pt", "y1", "wd", group=K, strides=[2, 2]),
         helper.make_node("Add", ["act", "side"], ["y2"]),
         helper.make_node("Identity", ["act"], ["a2"]),
         helper.make_node("Transpose", ["a2"], ["at"], perm=[0, 3, 2, 1]),
         _conv("at", "y3", "w", strides=[1, 2], auto_pad="SAME_LOWER")],
        {"wd": (K, 1, 3, 3), "w": (3, K, 3, 3), "pads": np.array([0, 0, 1, 0, 0, 1, 0, 0])},
        True),
    # a batch norm's scale after the conv, as tf2onnx writes it (NCHW, and behind the NHWC
    # Transpose): the conv's backward takes it into its weight, so the conv output c1 has no
    # cotangent of its own and the shortcut reads the product's
    "conv_then_channel_scale": (
        [_conv("act", "c1", "wd", group=K, strides=[2, 2], pads=[0, 0, 1, 1]),
         helper.make_node("Mul", ["c1", "scale"], ["y1"])],
        {"wd": (K, 1, 3, 3), "scale": (K, 1, 1)}, False),
    "nhwc_conv_then_channel_scale": (
        [helper.make_node("Transpose", ["act"], ["at"], perm=[0, 3, 1, 2]),
         _conv("at", "c1", "w", pads=[1, 1, 1, 1]),
         helper.make_node("Transpose", ["c1"], ["ct"], perm=[0, 2, 3, 1]),
         helper.make_node("Mul", ["ct", "scale"], ["y1"])],
        {"w": (6, K, 3, 3), "scale": (6,)}, True),
}
SCALED_CASES = ["conv_then_channel_scale", "nhwc_conv_then_channel_scale"]

#: consumers whose sums the shortcut does not know: the full gradient is formed and averaged
UNSUPPORTED_CASES = {
    "relu_before_conv": (
        [helper.make_node("Relu", ["act"], ["r"]), _conv("r", "y1", "wd", group=K)],
        {"wd": (K, 1, 3, 3)}, False),
    "grouped_conv": ([_conv("act", "y1", "w", group=2)], {"w": (6, K // 2, 3, 3)}, False),
    "conv_and_maxpool": (  # a consumer it knows, then one it does not
        [_conv("act", "y1", "wd", group=K),
         helper.make_node("MaxPool", ["act"], ["y2"], kernel_shape=[2, 2])],
        {"wd": (K, 1, 3, 3)}, False),
    "broadcasting_add": ([helper.make_node("Add", ["act", "bias"], ["y1"])],
                         {"bias": (1, K, 1, 1)}, False),
    "edge_pad": ([_pad("act", "p", "pads", mode="edge"), _conv("p", "y1", "wd", group=K)],
                 {"wd": (K, 1, 3, 3), "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1])}, False),
}


def _consumer_weights(case: tuple, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {k: v if isinstance(v, np.ndarray) else rng.standard_normal(v).astype(np.float32)
            for k, v in case[1].items()}


def _layer_shape(nhwc: bool, batch: int | str = "N") -> list:
    return [batch, H, W, K] if nhwc else [batch, K, H, W]


def consumer_model(case: tuple, weights: dict[str, np.ndarray]) -> tuple[onnx.ModelProto, list]:
    """input → act = Tanh(input), side = Sigmoid(input) → the case's consumers y… → per y:
    Tanh, Flatten, MatMul (random) → their sum ``logits`` (N, CLASSES): a score whose
    cotangent at each y varies over the positions. Returns (model, the y names)."""
    nodes, _, nhwc = case
    outs = [o for n in nodes for o in n.output if o.startswith("y")]
    part = make_model(nodes, [("act", _layer_shape(nhwc)), ("side", _layer_shape(nhwc))],
                      output=outs[0], extra_outputs=outs[1:], inits=weights, dtype=np.float32)
    shapes = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim[1:]]
              for o in part.graph.output}
    rng = np.random.default_rng(7)
    head = [helper.make_node("Tanh", ["input"], ["act"]),
            helper.make_node("Sigmoid", ["input"], ["side"]), *nodes]
    inits = dict(weights)
    for y in outs:
        inits[f"{y}_fc"] = rng.standard_normal((math.prod(shapes[y]), CLASSES)).astype(
            np.float32) / 4
        head += [helper.make_node("Tanh", [y], [f"{y}_t"]),
                 helper.make_node("Flatten", [f"{y}_t"], [f"{y}_f"]),
                 helper.make_node("MatMul", [f"{y}_f", f"{y}_fc"], [f"{y}_l"])]
    head.append(helper.make_node("Sum", [f"{y}_l" for y in outs], ["logits"]))
    model = make_model(head, [("input", _layer_shape(nhwc))], output="logits", inits=inits,
                       dtype=np.float32)
    onnx.checker.check_model(model, full_check=True)
    return model, outs


def _mean_graph(model: onnx.ModelProto, outs: list[str], nhwc: bool
                ) -> tuple[onnx.ModelProto | None, list[str]]:
    """``model`` plus input ``seed`` (N, CLASSES) and the outputs: the shortcut's mean, the
    ReduceMean of the full gradient (the old path) and each y's cotangent; None where the
    shortcut gives up."""
    info = GraphInfo(model)
    grad = build_gradient(info, "act", "logits", "seed")
    op = Emitter(opset=info.opset, dtype=np.dtype(np.float32), shapes=dict(info.shapes),
                 prefix="mean/")
    mean = consumer_gradient_mean(op, info, "act", 3 if nhwc else 1,
                                  head_nodes(info, "act", "logits"), grad.cotangents)
    if mean is None:
        assert not op.nodes, "a shortcut that gave up left nodes behind"
        return None, []
    old = op.reduce("ReduceMean", grad.gradient, [1, 2] if nhwc else [2, 3], keepdims=0)
    names = [mean, old, *(grad.cotangents[y] for y in outs)]
    full = onnx.ModelProto()
    full.CopyFrom(model)
    full.graph.node.extend([*grad.nodes, *op.nodes])
    full.graph.initializer.extend([*grad.initializers, *op.initializers])
    full.graph.input.append(helper.make_tensor_value_info("seed", onnx.TensorProto.FLOAT,
                                                          ["N", CLASSES]))
    del full.graph.output[:]
    shapes = [["N", K]] * 2 + [["N", *info.shapes[y][1:]] for y in outs]
    full.graph.output.extend(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, s)
                             for n, s in zip(names, shapes))
    onnx.checker.check_model(full, full_check=True)
    return full, names


def _linear_parts(case: tuple, weights: dict[str, np.ndarray], outs: list[str],
                  act: np.ndarray) -> list[np.ndarray]:
    """Each y's change when ``act`` (float64, any batch) is added to the layer: the linear
    map A → y in float64 (onnx.reference), its biases and pad values cancelled."""
    nodes, _, nhwc = case
    part = evaluator(to_double(make_model(
        nodes, [("act", _layer_shape(nhwc)), ("side", _layer_shape(nhwc))], output=outs[0],
        extra_outputs=outs[1:], inits=weights, dtype=np.float32)))
    side = np.zeros(act.shape)
    with_act = part.run(outs, {"act": act, "side": side})
    without = part.run(outs, {"act": np.zeros_like(act), "side": side})
    return [a - b for a, b in zip(with_act, without)]


def _channel_indicators(nhwc: bool) -> np.ndarray:
    """E (K, …layer): E[k] is 1 on every position of channel k, 0 elsewhere."""
    e = np.zeros((K, K, H, W))
    e[np.arange(K), np.arange(K)] = 1
    return e.transpose(0, 2, 3, 1) if nhwc else e


@pytest.mark.parametrize("name", CONSUMER_CASES)
def test_consumer_mean_equals_the_mean_of_the_full_gradient(name: str) -> None:
    """The shortcut's mean and ReduceMean of the full gradient (both float32, ONNX Runtime)
    against the float64 mean Σ_y <dy, J_y·E_k> / positions, J_y the linear map from the layer
    to consumer output y and E_k channel k's indicator (from the float32 cotangents dy the
    graph computed, so only the two summations differ). Bound: each of the n roundings of a
    sum errs by at most u·Σ|terms|; as independent errors they add up to ~√n·u·Σ|terms|: four
    times that, Σ|terms| = Σ_y <|dy|, |J_y|·E_k> (the weights' magnitudes)."""
    case = CONSUMER_CASES[name]
    nhwc = case[2]
    weights = _consumer_weights(case, np.random.default_rng(11))
    model, outs = consumer_model(case, weights)
    graph, names = _mean_graph(model, outs, nhwc)
    assert graph is not None, "the shortcut gave up"
    x = np.random.default_rng(5).standard_normal(_layer_shape(nhwc, N)).astype(np.float32)
    seed = np.random.default_rng(6).standard_normal((N, CLASSES)).astype(np.float32)
    new, old, *dys = ort.InferenceSession(graph.SerializeToString(),
                                          providers=["CPUExecutionProvider"]).run(
        names, {"input": x, "seed": seed})
    dys = [d.astype(np.float64) for d in dys]
    e = _channel_indicators(nhwc)
    linear = _linear_parts(case, weights, outs, e)
    magnitudes = _linear_parts(case, {k: np.abs(v) if v.dtype != np.int64 else v
                                      for k, v in weights.items()}, outs, e)
    positions = H * W

    def mean_along(parts: list[np.ndarray], absolute: bool = False) -> np.ndarray:
        return sum((np.abs(dy) if absolute else dy).reshape(N, -1)
                   @ (np.abs(j) if absolute else j).reshape(K, -1).T
                   for dy, j in zip(dys, parts)) / positions

    exact = mean_along(linear)
    terms = 9 * sum(dy[0].size for dy in dys) + positions
    bound = 4 * (np.finfo(np.float32).eps / 2) * np.sqrt(terms) * mean_along(magnitudes, True)
    assert np.all(np.abs(old - exact) <= bound), "the bound is too tight for the old path"
    assert np.all(np.abs(new - exact) <= bound), np.abs(new - exact) / bound
    # the bound sees the border: dropping the layer's last row changes the mean by far more
    last_row = e.copy()
    last_row[(slice(None), slice(None), H - 1) if nhwc else (Ellipsis, H - 1, slice(None))] = 0
    assert np.abs(exact - mean_along(_linear_parts(case, weights, outs, last_row))).max() \
        > 10 * bound.max()


@pytest.mark.parametrize("name", SCALED_CASES)
def test_a_scaled_conv_output_has_no_cotangent_of_its_own(name: str) -> None:
    """The scaled cases above reach the shortcut's reading of the product's cotangent: the
    conv's backward took the scale into its weight and never formed c1's."""
    case = CONSUMER_CASES[name]
    model, _ = consumer_model(case, _consumer_weights(case, np.random.default_rng(11)))
    cotangents = build_gradient(GraphInfo(model), "act", "logits", "seed").cotangents
    assert "y1" in cotangents and "c1" not in cotangents


def maps_compute_the_gradient(explainer: og.Explainer) -> bool:
    """Whether the maps graph still forms the full gradient at the layer (the tensor the
    full graph outputs as ``ogc_gradient``)."""
    graph = explainer.sessions.graph()
    source = next(n.input[0] for n in graph.model.graph.node if GRADIENT in n.output)
    return any(source in n.output for n in graph.maps_model().graph.node)


@pytest.mark.parametrize("name", UNSUPPORTED_CASES)
def test_consumers_the_shortcut_does_not_know_keep_the_full_gradient(name: str) -> None:
    case = UNSUPPORTED_CASES[name]
    model, outs = consumer_model(case, _consumer_weights(case, np.random.default_rng(11)))
    assert _mean_graph(model, outs, case[2])[0] is None
    explainer = og.Explainer(model, layer="act:NCHW")
    assert maps_compute_the_gradient(explainer)
    x = np.random.default_rng(5).standard_normal(_layer_shape(False, N)).astype(np.float32)
    res = explainer.explain(x)
    expected = np.einsum("nk,nkhw->nhw", res.gradients[0].mean(axis=(2, 3)), res.activations[0])
    np.testing.assert_allclose(res.coarse, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "xgradcam"])
def test_explainer_takes_the_shortcut_for_gradcam_only(method: str) -> None:
    """Grad-CAM's maps graph no longer forms the layer's gradient, and its maps are those
    of the full gradient's mean; methods that read the gradient itself still form it."""
    case = CONSUMER_CASES["conv_and_residual"]
    model, _ = consumer_model(case, _consumer_weights(case, np.random.default_rng(11)))
    explainer = og.Explainer(model, layer="act:NCHW", method=method)
    assert maps_compute_the_gradient(explainer) == (method != "gradcam")
    if method == "gradcam":
        x = np.random.default_rng(5).standard_normal(_layer_shape(False, N)).astype(np.float32)
        res = explainer.explain(x)
        expected = METHODS[method].cam(res.activations[0], res.gradients[0])
        np.testing.assert_allclose(res.coarse, expected, rtol=1e-5,
                                   atol=1e-6 * np.abs(expected).max())
