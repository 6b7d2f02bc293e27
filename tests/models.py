"""Small ONNX classifiers built with onnx.helper for tests (no framework needed)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _init(name, array):
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def small_cnn(classes: int = 5, size: int = 16, channels: int = 8, seed: int = 0,
              softmax: bool = False, batch: int | str = "N", opset: int = 17,
              head: str = "gap_gemm") -> onnx.ModelProto:
    """input (N,3,size,size) → Conv-Relu → Conv-Relu ("act") → head → "logits" [→ "probs"].

    head: ``gap_gemm`` = GlobalAveragePool, Flatten, Gemm(W (K, C));
    ``mean_matmul`` = ReduceMean(2,3) + MatMul + Add.
    """
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((channels, 3, 3, 3)) * 0.4
    w2 = rng.standard_normal((channels, channels, 3, 3)) * 0.3
    wfc = rng.standard_normal((channels, classes))
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2],
                         name="conv2"),
        helper.make_node("Relu", ["c2"], ["act"], name="relu2"),
    ]
    inits = [_init("w1", w1), _init("b1", rng.standard_normal(channels) * 0.1),
             _init("w2", w2), _init("b2", rng.standard_normal(channels) * 0.1 + 0.2),
             _init("wfc", wfc), _init("bfc", rng.standard_normal(classes))]
    if head == "gap_gemm":
        nodes += [helper.make_node("GlobalAveragePool", ["act"], ["gap"], name="gap"),
                  helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
                  helper.make_node("Gemm", ["flat", "wfc", "bfc"], ["logits"], name="fc")]
    else:
        nodes += [helper.make_node("ReduceMean", ["act"], ["gap"], axes=[2, 3], keepdims=0,
                                   name="mean"),
                  helper.make_node("MatMul", ["gap", "wfc"], ["mm"], name="fc"),
                  helper.make_node("Add", ["mm", "bfc"], ["logits"], name="bias")]
    out = "logits"
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=1, name="softmax"))
        out = "probs"
    graph = helper.make_graph(
        nodes, "small_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [batch, classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def nhwc_cnn() -> onnx.ModelProto:
    """small_cnn with NHWC input and its head after a Transpose to NHWC (as tf2onnx emits): the
    internal layer ``act`` is NCHW, ``act_nhwc`` is channels-last."""
    base = small_cnn()
    nodes = [helper.make_node("Transpose", ["input_nhwc"], ["input"], perm=[0, 3, 1, 2]),
             *list(base.graph.node)[:4],
             helper.make_node("Transpose", ["act"], ["act_nhwc"], perm=[0, 2, 3, 1]),
             helper.make_node("ReduceMean", ["act_nhwc"], ["gap"], axes=[1, 2], keepdims=0),
             helper.make_node("MatMul", ["gap", "wfc"], ["logits"])]
    graph = helper.make_graph(
        nodes, "nhwc", [helper.make_tensor_value_info("input_nhwc", TensorProto.FLOAT,
                                                      ["N", 16, 16, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])],
        list(base.graph.initializer))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


#: VGG-style heads after small_cnn's layer ``act`` (N, 8, 8, 8): pooling, flattening and a
#: product with a weight matrix (see onnx_gradcam.autodiff.summed)
FLAT_HEADS = ("maxpool_flatten_gemm", "maxpool_transpose_reshape_matmul", "avgpool_matmul",
              "padded_avgpool_matmul")


def flat_head(head: str, classes: int = 5, hidden: int = 6, seed: int = 1
              ) -> tuple[list[onnx.NodeProto], dict[str, np.ndarray]]:
    """The nodes (``act`` → ``logits``) and float64 weights of one of :data:`FLAT_HEADS`:
    Gemm(transB, alpha) + Relu + Gemm after MaxPool 2×2 and Flatten; MaxPool 3×3/2 with pads,
    Transpose to NHWC and a Reshape whose shape is computed (as tf2onnx writes Flatten), MatMul +
    Relu + MatMul; AveragePool 2×2 and Flatten straight into the logits' MatMul (the product's
    cotangent is the one-hot seed); the same with a padded AveragePool that counts the pads
    (a pooling that does not keep the sums)."""
    rng = np.random.default_rng(seed)
    k = 8
    if head == "maxpool_flatten_gemm":
        w = {"wh": rng.standard_normal((hidden, k * 16)) * 0.2, "bh": rng.standard_normal(hidden),
             "wo": rng.standard_normal((hidden, classes))}
        nodes = [helper.make_node("MaxPool", ["act"], ["pool"], kernel_shape=[2, 2],
                                  strides=[2, 2]),
                 helper.make_node("Flatten", ["pool"], ["flat"]),
                 helper.make_node("Gemm", ["flat", "wh", "bh"], ["h"], transB=1, alpha=0.5),
                 helper.make_node("Relu", ["h"], ["hr"]),
                 helper.make_node("MatMul", ["hr", "wo"], ["logits"])]
    elif head == "maxpool_transpose_reshape_matmul":
        w = {"wh": rng.standard_normal((16 * k, hidden)) * 0.2,
             "wo": rng.standard_normal((hidden, classes)), "rest": np.array([-1], np.int64)}
        nodes = [helper.make_node("MaxPool", ["act"], ["pool"], kernel_shape=[3, 3],
                                  strides=[2, 2], pads=[1, 1, 1, 1]),
                 helper.make_node("Transpose", ["pool"], ["nhwc"], perm=[0, 2, 3, 1]),
                 helper.make_node("Shape", ["pool"], ["shape"], start=0, end=1),
                 helper.make_node("Concat", ["shape", "rest"], ["target"], axis=0),
                 helper.make_node("Reshape", ["nhwc", "target"], ["flat"]),
                 helper.make_node("MatMul", ["flat", "wh"], ["h"]),
                 helper.make_node("Relu", ["h"], ["hr"]),
                 helper.make_node("MatMul", ["hr", "wo"], ["logits"])]
    else:
        pads = [1, 1, 1, 1] if head == "padded_avgpool_matmul" else [0, 0, 0, 0]
        kernel = [3, 3] if pads[0] else [2, 2]
        w = {"wo": rng.standard_normal((16 * k, classes))}
        nodes = [helper.make_node("AveragePool", ["act"], ["pool"], kernel_shape=kernel,
                                  strides=[2, 2], pads=pads, count_include_pad=1),
                 helper.make_node("Flatten", ["pool"], ["flat"]),
                 helper.make_node("MatMul", ["flat", "wo"], ["logits"])]
    return nodes, w


def flat_head_cnn(head: str, classes: int = 5) -> onnx.ModelProto:
    """small_cnn (size 16, so ``act`` is (N, 8, 8, 8)) with one of :data:`FLAT_HEADS`."""
    base = small_cnn(classes=classes)
    nodes, weights = flat_head(head, classes)
    inits = [t for t in base.graph.initializer if t.name in {"w1", "b1", "w2", "b2"}]
    inits += [numpy_helper.from_array(v if v.dtype == np.int64 else v.astype(np.float32), k)
              for k, v in weights.items()]
    graph = helper.make_graph(
        [*list(base.graph.node)[:4], *nodes], head, list(base.graph.input),
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model
