"""ResNet-style ONNX classifiers built with onnx.helper (random weights), for benchmarks."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class _Builder:
    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, relu: bool = True) -> str:
        w, b, y = self.name("w"), self.name("b"), self.name("conv")
        std = np.sqrt(2.0 / (cin * k * k))
        self.inits += [numpy_helper.from_array(
            (self.rng.standard_normal((cout, cin, k, k)) * std).astype(np.float32), w),
            numpy_helper.from_array(np.zeros(cout, np.float32), b)]
        pad = k // 2
        self.nodes.append(helper.make_node("Conv", [x, w, b], [y], kernel_shape=[k, k],
                                           strides=[stride, stride], pads=[pad] * 4))
        if not relu:
            return y
        r = self.name("relu")
        self.nodes.append(helper.make_node("Relu", [y], [r]))
        return r

    def bottleneck(self, x: str, cin: int, mid: int, stride: int) -> str:
        cout = mid * 4
        y = self.conv(x, cin, mid, 1)
        y = self.conv(y, mid, mid, 3, stride)
        y = self.conv(y, mid, cout, 1, relu=False)
        skip = x if (cin == cout and stride == 1) else self.conv(x, cin, cout, 1, stride, False)
        s, r = self.name("add"), self.name("relu")
        self.nodes += [helper.make_node("Add", [y, skip], [s]), helper.make_node("Relu", [s], [r])]
        return r


def resnet(blocks: tuple[int, ...] = (3, 4, 6, 3), width: int = 64, classes: int = 1000,
           size: int = 224, seed: int = 0) -> onnx.ModelProto:
    """ResNet-50 by default (25.6 M parameters): stem, bottleneck stages, GAP, Flatten, Gemm."""
    b = _Builder(seed)
    x = b.conv("input", 3, width, 7, 2)
    pool = b.name("pool")
    b.nodes.append(helper.make_node("MaxPool", [x], [pool], kernel_shape=[3, 3], strides=[2, 2],
                                    pads=[1, 1, 1, 1]))
    x, cin = pool, width
    for stage, count in enumerate(blocks):
        mid = width * 2 ** stage
        for i in range(count):
            x = b.bottleneck(x, cin, mid, 2 if (i == 0 and stage > 0) else 1)
            cin = mid * 4
    b.inits += [numpy_helper.from_array(
        (b.rng.standard_normal((cin, classes)) * 0.01).astype(np.float32), "fc_w"),
        numpy_helper.from_array(np.zeros(classes, np.float32), "fc_b")]
    b.nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"]),
                helper.make_node("Flatten", ["gap"], ["flat"]),
                helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"])]
    graph = helper.make_graph(
        b.nodes, "resnet",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model
