"""Every VJP rule against float64 central finite differences (oracle 1)."""

from __future__ import annotations

from dataclasses import dataclass, field

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from onnx_gradcam.autodiff.registry import NON_DIFFERENTIABLE, VJP_RULES
from onnx_gradcam.autodiff.rules.qoperator import SIGNATURES
from tests.gradcheck import check_vjp, make_model

F64, F32 = np.float64, np.float32
N = helper.make_node


@dataclass
class Case:
    id: str
    nodes: list
    shape: list  # shape of the input "x" (str dims are symbolic)
    inits: dict = field(default_factory=dict)
    opset: int = 17
    dtype: type = F64
    batch: int = 2  # value of a symbolic first dim
    away_from: float | tuple | None = None  # keep |x - k| > 0.2 for the kinks k of piecewise ops
    positive: bool = False
    quantized: bool = False  # checked against its real-valued twin (:func:`_real_valued`)
    #: where a quantized rule reads forward values (rounded to the output's step s, while the
    #: twin's are exact), the relative error that rounding allows
    rtol: float | None = None


def w(*shape, seed=1, dtype=F64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def pos(*shape, seed=2, dtype=F64):
    return np.random.default_rng(seed).uniform(0.5, 2.0, shape).astype(dtype)


def _conv_cases():
    cases = []
    for name, attrs, wshape in [
        ("conv3x3", dict(pads=[1, 1, 1, 1]), (4, 3, 3, 3)),
        ("conv_stride2", dict(strides=[2, 2], pads=[1, 1, 1, 1]), (4, 3, 3, 3)),
        ("conv_stride2_odd", dict(strides=[2, 2], pads=[0, 1, 0, 1]), (4, 3, 3, 3)),
        ("conv_dilated", dict(dilations=[2, 2], pads=[2, 2, 2, 2]), (4, 3, 3, 3)),
        ("conv_depthwise", dict(group=3, pads=[1, 1, 1, 1]), (3, 1, 3, 3)),
        ("conv_same_upper_s2", dict(auto_pad="SAME_UPPER", strides=[2, 2]), (4, 3, 3, 3)),
        ("conv_same_lower_s2", dict(auto_pad="SAME_LOWER", strides=[2, 2]), (4, 3, 2, 2)),
        ("conv_valid_1x1", dict(auto_pad="VALID"), (5, 3, 1, 1)),
        ("conv_pointwise", dict(pads=[0, 0, 0, 0]), (5, 3, 1, 1)),  # a 1×1 Conv, W transposed
        ("conv_pointwise_padded", dict(pads=[1, 0, 0, 1]), (5, 3, 1, 1)),
        ("conv_pointwise_stride2", dict(strides=[2, 2]), (5, 3, 1, 1)),
    ]:
        cases.append(Case(name, [N("Conv", ["x", "W", "B"], ["y"], **attrs)], ["N", 3, 7, 7],
                          {"W": w(*wshape, dtype=F32), "B": w(wshape[0], dtype=F32)},
                          dtype=F32))
    # stride 1 runs as a Conv with the flipped kernel (each group's channels swapped); pads
    # past k_eff − 1 and strides keep ConvTranspose
    for name, attrs, wshape, shape in [
        ("conv_depthwise_multiplier", dict(group=3, pads=[1, 0, 1, 2]), (6, 1, 3, 3),
         ["N", 3, 6, 7]),
        ("conv_depthwise_dilated", dict(group=4, dilations=[2, 1], pads=[2, 1, 2, 1]),
         (4, 1, 3, 3), ["N", 4, 7, 6]),
        ("conv_depthwise_stride2", dict(group=4, strides=[2, 2]), (4, 1, 3, 3), ["N", 4, 7, 8]),
        ("conv_depthwise_same_upper", dict(group=4, auto_pad="SAME_UPPER"), (4, 1, 2, 4),
         ["N", 4, 5, 6]),
        ("conv_grouped_same_lower", dict(group=2, auto_pad="SAME_LOWER"), (6, 2, 2, 3),
         ["N", 4, 5, 6]),
        ("conv_pads_past_kernel", dict(pads=[3, 0, 0, 3]), (2, 3, 3, 2), ["N", 3, 5, 5]),
        ("conv1d_grouped", dict(group=2, pads=[2, 0]), (4, 2, 3), ["N", 4, 9]),
        ("conv3d_depthwise", dict(group=2, pads=[1, 0, 1, 0, 1, 1]), (2, 1, 2, 2, 3),
         ["N", 2, 3, 4, 4]),
    ]:
        cases.append(Case(name, [N("Conv", ["x", "W"], ["y"], **attrs)], shape,
                          {"W": w(*wshape, dtype=F32)}, dtype=F32))
    # tf2onnx's stride-2 form: an explicit Pad, then a VALID conv (the Pad's crop becomes the
    # transposed conv's pads); with symbolic H, W the transposed conv is sliced in the graph
    for name, shape in [("pad_then_conv_stride2", ["N", 4, 8, 7]),
                        ("pad_then_conv_stride2_symbolic_hw", ["N", 4, "H", "W"])]:
        cases.append(Case(name, [N("Pad", ["x", "p"], ["xp"]),
                                 N("Conv", ["xp", "W"], ["y"], group=4, strides=[2, 2])],
                          shape, {"W": w(4, 1, 3, 3, dtype=F32),
                                  "p": np.array([0, 0, 0, 1, 0, 0, 1, 1])}, dtype=F32))
    # tf2onnx pads the NHWC tensor, then transposes it to the conv's NCHW
    cases.append(Case("pad_nhwc_then_conv_stride2",
                      [N("Pad", ["x", "p"], ["xp"]),
                       N("Transpose", ["xp"], ["xt"], perm=[0, 3, 1, 2]),
                       N("Conv", ["xt", "W"], ["y"], group=4, strides=[2, 2])],
                      ["N", 8, 7, 4], {"W": w(4, 1, 3, 3, dtype=F32),
                                       "p": np.array([0, 0, 1, 0, 0, 1, 1, 0])}, dtype=F32))
    # a batch norm's scale after a conv (tf2onnx: a Mul, also behind the NHWC Transpose)
    cases.append(Case("conv_then_channel_scale",
                      [N("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
                       N("Mul", ["c", "s"], ["y"])], ["N", 3, 5, 5],
                      {"W": w(4, 3, 3, 3, dtype=F32), "s": w(1, 4, 1, 1, dtype=F32)}, dtype=F32))
    cases.append(Case("conv_nhwc_channel_scale",
                      [N("Conv", ["x", "W"], ["c"], group=4, strides=[2, 2], pads=[1, 1, 1, 1]),
                       N("Transpose", ["c"], ["t"], perm=[0, 2, 3, 1]),
                       N("Mul", ["s", "t"], ["y"])], ["N", 4, 7, 6],
                      {"W": w(4, 1, 3, 3, dtype=F32), "s": w(4, dtype=F32)}, dtype=F32))
    cases.append(Case("conv_pointwise_dense", [N("Conv", ["x", "W"], ["y"])], ["N", 6, 1, 1],
                      {"W": w(4, 6, 1, 1, dtype=F32)}, dtype=F32))  # a 1×1 map: one GEMM
    cases.append(Case("nhwc_pooled_dense_head", POOLED_DENSE_HEAD, ["N", 4, 4, 6],
                      {"W1": w(5, 6, 1, 1, dtype=F32), "W2": w(3, 5, 1, 1, dtype=F32)},
                      dtype=F32))
    return cases


#: tf2onnx's form of a MobileNetV3 head on an NHWC layer: mean over the positions, a Transpose
#: of (N, 1, 1, C) to (N, C, 1, 1), two 1×1 convs used as dense layers, flattened logits
POOLED_DENSE_HEAD = [
    N("ReduceMean", ["x"], ["m"], axes=[1, 2], keepdims=1),
    N("Transpose", ["m"], ["t"], perm=[0, 3, 1, 2]),
    N("Conv", ["t", "W1"], ["h"]), N("Relu", ["h"], ["r"]),
    N("Conv", ["r", "W2"], ["z"]), N("Flatten", ["z"], ["y"])]


def _qdq(scale, zero_point=None, axis=None, **attrs):
    """x → QuantizeLinear → DequantizeLinear → ·W → y, with the pair's parameters."""
    inits = {"s": np.asarray(scale, F32), "W": w(4, dtype=F32) + 2.0}
    names = ["x", "s"]
    if zero_point is not None:
        inits["zp"] = zero_point
        names.append("zp")
    axis_attr = {} if axis is None else {"axis": axis}
    nodes = [N("QuantizeLinear", names, ["q"], **axis_attr, **attrs),
             N("DequantizeLinear", ["q", *names[1:]], ["d"], **axis_attr),
             N("Mul", ["d", "W"], ["y"])]
    qmin, qmax = _integer_range(zero_point, attrs.get("output_dtype"))
    zp = np.zeros(1) if zero_point is None else zero_point.astype(F64)
    s = np.asarray(scale, F64)
    kinks = tuple(np.concatenate([((qmin - zp) * s).ravel(), ((qmax - zp) * s).ravel()]))
    return nodes, inits, kinks


def _integer_range(zero_point, output_dtype=None):
    if zero_point is not None:
        output_dtype = helper.np_dtype_to_tensor_dtype(zero_point.dtype)
    bits = {2: 8, 3: 8, 4: 16, 5: 16, 21: 4, 22: 4}[output_dtype or 2]
    signed = (output_dtype or 2) in (3, 5, 22)
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)


def _quantized_cases():
    cases = []
    for name, opset, shape, (nodes, inits, kinks) in [
        ("qdq_int8_per_tensor", 13, ["N", 3, 4], _qdq(0.02, np.array(3, np.int8))),
        ("qdq_uint8_default_zero_point_opset10", 10, [2, 3, 4], _qdq(0.01)),
        ("qdq_uint8_per_axis", 13, ["N", 3, 2, 4],
         _qdq([0.01, 0.02, 0.015], np.array([10, 128, 0], np.uint8), axis=1)),
        ("qdq_int8_per_axis_last", 19, [2, 3, 4],
         _qdq([0.01, 0.02, 0.015, 0.03], np.array([0, -5, 2, 7], np.int8), axis=-1)),
        ("qdq_int16", 21, [2, 3, 4], _qdq(2e-4, np.array(-100, np.int16))),
        ("qdq_uint16_output_dtype", 21, [2, 3, 4],
         _qdq(1e-4, output_dtype=onnx.TensorProto.UINT16)),
        ("qdq_int4", 21, [2, 3, 4], _qdq(0.25, np.array(1, ml_dtypes.int4))),
        ("qdq_uint4_per_axis", 21, [2, 3, 4],
         _qdq([0.1, 0.2, 0.15], np.array([3, 8, 0], ml_dtypes.uint4), axis=1)),
    ]:
        cases.append(Case(name, nodes, shape, inits, opset=opset, dtype=F32, away_from=kinks,
                          quantized=True))
    # a node unit (DequantizeLinear → Mul → QuantizeLinear) whose QuantizeLinear reads its
    # integer output (rules/quant.py); the wide range of "s2" clips none of these inputs
    nodes, inits, kinks = _qdq(0.02, np.array(128, np.uint8))
    nodes[-1:] = [N("Mul", ["d", "W"], ["m"]), N("QuantizeLinear", ["m", "s2", "zp"], ["q2"]),
                  N("DequantizeLinear", ["q2", "s2", "zp"], ["y"])]
    cases.append(Case("qdq_node_unit", nodes, ["N", 3, 4], {**inits, "s2": np.float32(0.1)},
                      opset=13, dtype=F32, away_from=kinks, quantized=True))
    return cases


U8, I8 = np.uint8, np.int8
#: x → QuantizeLinear(uint8, s 0.02, zp 128) → xq: x is clipped outside these
X_QUANT = {"xs": np.array(0.02, F32), "xzp": np.array(128, U8)}
X_KINKS = (-2.56, 2.54)


def _qop(op_type, inputs, output_scale, inits, shape, rtol=None, **attrs):
    """x → QuantizeLinear → ``op_type`` (com.microsoft where ONNX has no such op) →
    DequantizeLinear(output_scale, zp 128) → y."""
    domain = "" if op_type in ("QLinearConv", "QLinearMatMul") else "com.microsoft"
    nodes = [N("QuantizeLinear", ["x", "xs", "xzp"], ["xq"]),
             N(op_type, inputs, ["yq"], domain=domain, **attrs),
             N("DequantizeLinear", ["yq", "ys", "yzp"], ["y"])]
    inits = {**X_QUANT, **inits, "ys": np.array(output_scale, F32), "yzp": np.array(128, U8)}
    return Case(op_type.lower(), nodes, shape, inits, opset=13, dtype=F32, away_from=X_KINKS,
                quantized=True, rtol=rtol)


def _qoperator_cases():
    rng = np.random.default_rng(3)
    x_in = ["xq", "xs", "xzp"]
    out = ["ys", "yzp"]
    weights = {"W": rng.integers(-100, 100, (4, 3, 3, 3)).astype(I8),
               "ws": np.array([0.004, 0.006, 0.005, 0.003], F32), "wzp": np.zeros(4, I8)}
    matrix = {"M": rng.integers(-100, 100, (4, 3)).astype(I8), "ms": np.array(0.01, F32),
              "mzp": np.array(0, I8)}
    other = {"b": rng.integers(0, 255, (3, 1)).astype(U8), "bs": np.array(0.03, F32),
             "bzp": np.array(100, U8)}
    fine = [N("QuantizeLinear", ["x", "fs", "fzp"], ["fq"])]
    fine_quant = {"fs": np.array(0.015, F32), "fzp": np.array(120, U8)}
    cases = [
        _qop("QLinearConv", [*x_in, "W", "ws", "wzp", *out], 0.25, weights, ["N", 3, 5, 5],
             pads=[1, 1, 1, 1]),
        _qop("QLinearMatMul", [*x_in, "M", "ms", "mzp", *out], 0.1, matrix, ["N", 4]),
        _qop("QLinearAdd", [*x_in, "b", "bs", "bzp", *out], 0.05, other, ["N", 3, 4]),
        _qop("QLinearGlobalAveragePool", [*x_in, *out], 0.02, {}, ["N", 3, 4, 4]),
        _qop("QLinearAveragePool", [*x_in, *out], 0.02, {}, ["N", 3, 4, 4],
             kernel_shape=[2, 2], strides=[2, 2]),
        # these read forward values, rounded to half a step of their scale
        _qop("QLinearSigmoid", [*x_in, *out], 1 / 256, {}, [2, 6], rtol=2e-2),
        _qop("QLinearLeakyRelu", [*x_in, *out], 0.02, {}, [2, 6], alpha=0.1),
    ]
    # two operands computed from x: a fan-out through two quantizations
    mul = _qop("QLinearMul", [*x_in, "fq", "fs", "fzp", *out], 0.05, fine_quant, [2, 6],
               rtol=2e-2)
    concat = _qop("QLinearConcat", [*out, *x_in, "fq", "fs", "fzp"], 0.03, fine_quant,
                  ["N", 2, 3], axis=1)
    for case in (mul, concat):
        case.nodes[1:1] = fine
    # QGemm: a quantized output, and a float one (the logits of a quantized classifier)
    gemm_weight = {"G": rng.integers(-100, 100, (3, 4)).astype(I8),
                   "gs": np.array([0.01, 0.02, 0.015], F32), "gzp": np.zeros(3, I8)}
    qgemm = _qop("QGemm", [*x_in, "G", "gs", "gzp", "", *out], 0.1, gemm_weight, ["N", 4],
                 transB=1, alpha=0.5)
    qgemm_float = Case("qgemm_float_output", [
        N("QuantizeLinear", ["x", "xs", "xzp"], ["xq"]),
        N("QGemm", [*x_in, "G", "gs", "gzp"], ["y"], domain="com.microsoft", transB=1)],
        ["N", 4], {**X_QUANT, **gemm_weight}, opset=13, dtype=F32, away_from=X_KINKS,
        quantized=True)
    # an integer MaxPool between two QLinear ops routes by the integer maximum (the first in
    # the window where values tie)
    pool = Case("max_pool_uint8", [
        N("QuantizeLinear", ["x", "xs", "xzp"], ["xq"]),
        N("MaxPool", ["xq"], ["pq"], kernel_shape=[2, 2], strides=[2, 2]),
        N("Flatten", ["pq"], ["fq"]),
        N("DequantizeLinear", ["fq", "xs", "xzp"], ["y"])],
        ["N", 2, 4, 4], X_QUANT, opset=13, dtype=F32, away_from=X_KINKS, quantized=True)
    return cases + [mul, concat, qgemm, qgemm_float, pool, *_dynamic_cases(rng)]


def _dynamic_cases(rng):
    """``quantize_dynamic``'s pattern: x → DynamicQuantizeLinear → (q, s, zp) → ConvInteger or
    MatMulInteger with an int8 weight → Cast → Mul by s·s_W → y."""
    cases = []
    for op_type, shape, weight, w_zp, attrs in [
        ("ConvInteger", ["N", 3, 5, 5], rng.integers(-100, 100, (4, 3, 3, 3)).astype(I8),
         np.array(2, I8), {"pads": [1, 1, 1, 1]}),  # ORT: per-tensor only
        ("MatMulInteger", ["N", 4], rng.integers(-100, 100, (4, 3)).astype(I8),
         np.array([1, 0, -3], I8), {}),
    ]:
        nodes = [N("DynamicQuantizeLinear", ["x"], ["q", "s", "zp"]),
                 N(op_type, ["q", "W", "zp", "wzp"], ["yi"], **attrs),
                 N("Cast", ["yi"], ["yf"], to=onnx.TensorProto.FLOAT),
                 N("Mul", ["s", "ws"], ["scales"]),
                 N("Mul", ["yf", "scales"], ["y"])]
        inits = {"W": weight, "wzp": w_zp, "ws": np.array(0.004, F32)}
        cases.append(Case(f"dynamic_{op_type.lower()}", nodes, shape, inits, opset=13, dtype=F32,
                          quantized=True))
    return cases


CASES = [
    # element-wise with broadcasting
    Case("add_bcast", [N("Add", ["x", "b"], ["y"])], ["N", 3, 4], {"b": w(3, 1)}),
    Case("add_self", [N("Add", ["x", "x"], ["y"])], [2, 3]),
    Case("sub_bcast", [N("Sub", ["b", "x"], ["y"])], [2, 3, 4], {"b": w(4)}),
    Case("mul_bcast", [N("Mul", ["x", "b"], ["y"])], ["N", 3, 4, 4], {"b": w(1, 3, 1, 1)}),
    Case("mul_self_fanout", [N("Relu", ["x"], ["r"]), N("Mul", ["r", "x"], ["y"])], [2, 5],
         away_from=0.0),
    Case("div_both", [N("Exp", ["x"], ["e"]), N("Div", ["x", "e"], ["y"])], [2, 3]),
    Case("div_bcast", [N("Div", ["b", "x"], ["y"])], [2, 3], {"b": w(3)}, positive=True),
    Case("neg", [N("Neg", ["x"], ["y"])], [2, 3]),
    Case("identity", [N("Identity", ["x"], ["y"])], [2, 3]),
    Case("dropout", [N("Dropout", ["x"], ["y"])], [2, 3]),
    Case("cast", [N("Cast", ["x"], ["y"], to=11)], [2, 3]),
    Case("relu", [N("Relu", ["x"], ["y"])], ["N", 6], away_from=0.0),
    Case("leaky_relu", [N("LeakyRelu", ["x"], ["y"], alpha=0.1)], [2, 6], away_from=0.0),
    Case("prelu", [N("PRelu", ["x", "s"], ["y"])], [2, 3, 2], {"s": w(3, 1)}, away_from=0.0),
    Case("clip", [N("Clip", ["x", "lo", "hi"], ["y"])], [3, 6],
         {"lo": np.array(-0.5), "hi": np.array(0.6)}, away_from=0.55),
    Case("clip_min_only", [N("Clip", ["x", "lo"], ["y"])], [3, 6], {"lo": np.array(0.0)},
         away_from=0.0),
    Case("relu6_clip", [N("Clip", ["x", "lo", "hi"], ["y"])], [3, 6],
         {"lo": np.array(0.0), "hi": np.array(6.0)}, away_from=0.0),
    Case("where", [N("Greater", ["x", "z"], ["c"]), N("Where", ["c", "x", "b"], ["y"])], [2, 3],
         {"z": np.array(0.0), "b": w(3)}, away_from=0.0),
    Case("sigmoid", [N("Sigmoid", ["x"], ["y"])], [2, 3]),
    # x·σ(x) is one unit (swish_vjp); with σ(x) read elsewhere too, the two rules apart
    Case("swish", [N("Sigmoid", ["x"], ["s"]), N("Mul", ["x", "s"], ["y"])], [2, 6]),
    Case("swish_sigmoid_first", [N("Sigmoid", ["x"], ["s"]), N("Mul", ["s", "x"], ["y"])],
         ["N", 3, 2, 2]),
    Case("swish_float32", [N("Sigmoid", ["x"], ["s"]), N("Mul", ["x", "s"], ["y"])],
         ["N", 3, 2, 2], dtype=F32),
    Case("swish_sigmoid_shared", [N("Sigmoid", ["x"], ["s"]), N("Mul", ["x", "s"], ["m"]),
                                  N("Add", ["m", "s"], ["y"])], [2, 6]),
    Case("tanh", [N("Tanh", ["x"], ["y"])], [2, 3]),
    Case("exp", [N("Exp", ["x"], ["y"])], [2, 3]),
    Case("log", [N("Log", ["x"], ["y"])], [2, 3], positive=True),
    Case("sqrt", [N("Sqrt", ["x"], ["y"])], [2, 3], positive=True),
    Case("reciprocal", [N("Reciprocal", ["x"], ["y"])], [2, 3], positive=True),
    Case("erf", [N("Erf", ["x"], ["y"])], [2, 3], dtype=F32),
    Case("abs", [N("Abs", ["x"], ["y"])], [2, 3], away_from=0.0),
    Case("softplus", [N("Softplus", ["x"], ["y"])], [2, 3], dtype=F32),
    Case("sin", [N("Sin", ["x"], ["y"])], [2, 3]),
    Case("cos", [N("Cos", ["x"], ["y"])], [2, 3]),
    Case("elu", [N("Elu", ["x"], ["y"], alpha=0.7)], [2, 6], away_from=0.0, dtype=F32),
    Case("hard_sigmoid", [N("HardSigmoid", ["x"], ["y"], alpha=0.25, beta=0.5)], [4, 6],
         dtype=F32, away_from=2.0),
    Case("hard_swish", [N("HardSwish", ["x"], ["y"])], [4, 6], dtype=F32),
    Case("gelu_exact", [N("Gelu", ["x"], ["y"])], [2, 5], opset=20, dtype=F32),
    Case("gelu_tanh", [N("Gelu", ["x"], ["y"], approximate="tanh")], [2, 5], opset=20),
    Case("pow_const", [N("Pow", ["x", "p"], ["y"])], [2, 3], {"p": np.array(3.0)},
         positive=True),
    Case("pow_base", [N("Pow", ["b", "x"], ["y"])], [2, 3], {"b": pos(3)}),
    Case("max", [N("Max", ["x", "b"], ["y"])], [2, 3], {"b": np.zeros(3)}, away_from=0.0),
    Case("min", [N("Min", ["x", "b"], ["y"])], [2, 3], {"b": np.zeros(3)}, away_from=0.0),
    Case("sum3", [N("Sum", ["x", "b", "x"], ["y"])], [2, 3], {"b": w(3)}),
    # linear algebra
    Case("gemm", [N("Gemm", ["x", "W", "B"], ["y"])], ["N", 4], {"W": w(4, 3), "B": w(3)}),
    Case("gemm_transB", [N("Gemm", ["x", "W", "B"], ["y"], transB=1, alpha=0.5, beta=2.0)],
         ["N", 4], {"W": w(3, 4), "B": w(1, 3)}),
    Case("gemm_transA", [N("Gemm", ["x", "W"], ["y"], transA=1)], [4, 2], {"W": w(4, 3)}),
    Case("gemm_x_as_B", [N("Gemm", ["W", "x"], ["y"], transB=1)], [3, 4], {"W": w(2, 4)}),
    Case("matmul", [N("MatMul", ["x", "W"], ["y"])], ["N", 4], {"W": w(4, 3)}),
    Case("matmul_batched", [N("MatMul", ["x", "W"], ["y"])], [2, 3, 4], {"W": w(4, 5)}),
    Case("matmul_x_right", [N("MatMul", ["W", "x"], ["y"])], [2, 4, 3], {"W": w(5, 4)}),
    Case("matmul_vec", [N("MatMul", ["x", "v"], ["y"])], [2, 4], {"v": w(4)}),
    # reductions and pooling
    Case("reduce_mean_keep", [N("ReduceMean", ["x", "ax"], ["y"])], ["N", 3, 4, 4],
         {"ax": np.array([2, 3])}, opset=18),
    Case("reduce_mean_attr", [N("ReduceMean", ["x"], ["y"], axes=[1, 2], keepdims=0)],
         ["N", 4, 4, 3], opset=13),
    Case("reduce_mean_all", [N("ReduceMean", ["x"], ["y"], keepdims=0)], [2, 3], opset=17),
    Case("reduce_sum", [N("ReduceSum", ["x", "ax"], ["y"], keepdims=0)], [2, 3, 4],
         {"ax": np.array([-1])}),
    Case("reduce_max", [N("ReduceMax", ["x"], ["y"], axes=[2, 3], keepdims=0)], [2, 3, 3, 3]),
    Case("reduce_min", [N("ReduceMin", ["x"], ["y"], axes=[1])], [2, 4]),
    Case("global_average_pool", [N("GlobalAveragePool", ["x"], ["y"])], ["N", 3, 5, 4], dtype=F32),
    Case("global_max_pool", [N("GlobalMaxPool", ["x"], ["y"])], ["N", 3, 5, 4], dtype=F32),
    # squeeze-excite: x feeds the pooling and the excite product (cotangents: a broadcast
    # and a full tensor, added without writing the broadcast out)
    Case("squeeze_excite", [N("ReduceMean", ["x", "ax"], ["m"]), N("Sigmoid", ["m"], ["s"]),
                            N("Mul", ["x", "s"], ["y"])], ["N", 3, 4, 5],
         {"ax": np.array([2, 3])}, opset=18),
    Case("squeeze_excite_pool", [N("GlobalAveragePool", ["x"], ["m"]),
                                 N("HardSigmoid", ["m"], ["s"]), N("Mul", ["s", "x"], ["y"])],
         ["N", 3, 4, 5], dtype=F32),
    Case("max_pool", [N("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2])],
         ["N", 2, 6, 6], dtype=F32),
    Case("max_pool_overlap", [N("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                                pads=[1, 1, 1, 1])], ["N", 2, 7, 7], dtype=F32),
    Case("max_pool_ceil_dilated", [N("MaxPool", ["x"], ["y"], kernel_shape=[2, 3],
                                     strides=[2, 1], dilations=[2, 1], pads=[0, 1, 1, 0],
                                     ceil_mode=1)], [2, 2, 8, 7], dtype=F32),
    Case("max_pool_relu_ties", [N("Relu", ["x"], ["r"]),
                                N("MaxPool", ["r"], ["y"], kernel_shape=[2, 2], strides=[2, 2])],
         [2, 2, 6, 6], dtype=F32, away_from=0.0),
    Case("max_pool_symbolic_hw", [N("MaxPool", ["x"], ["y"], kernel_shape=[3, 3],
                                    strides=[2, 2], auto_pad="SAME_UPPER")], ["N", 2, "H", "W"],
         dtype=F32),
    # MaxPool: the last axis's phase split (its stride > 1) and plain strided slices (1)
    *[Case(f"max_pool_{name}", [N("MaxPool", ["x"], ["y"], **attrs)], shape, dtype=F32)
      for name, shape, attrs in [
          ("stride3", ["N", 2, 9, 10], dict(kernel_shape=[3, 3], strides=[3, 3])),
          ("k2_stride3_ceil", [2, 2, 8, 8], dict(kernel_shape=[2, 2], strides=[3, 3],
                                                 ceil_mode=1)),
          ("stride1_padded", ["N", 2, 6, 5], dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])),
          ("dilated_stride2", [2, 2, 9, 9], dict(kernel_shape=[3, 3], strides=[2, 2],
                                                 dilations=[2, 2], pads=[2, 1, 1, 2])),
          ("same_lower_stride2", ["N", 2, 7, 7], dict(kernel_shape=[3, 2], strides=[2, 2],
                                                      auto_pad="SAME_LOWER")),
          ("1d_stride2", ["N", 3, 11], dict(kernel_shape=[3], strides=[2], pads=[1, 1])),
          ("1d_stride1", [2, 3, 7], dict(kernel_shape=[2])),
          ("3d", [1, 2, 4, 5, 6], dict(kernel_shape=[2, 2, 3], strides=[1, 2, 2],
                                       pads=[0, 1, 1, 1, 0, 1])),
      ]],
    # Resize: linear in x, so finite differences are exact up to rounding
    Case("resize_nearest_scales", [N("Resize", ["x", "", "s"], ["y"], mode="nearest")],
         ["N", 2, 3, 4], {"s": np.array([1, 1, 2, 1.5], np.float32)}, dtype=F32),
    Case("resize_linear_half_pixel_sizes", [N("Resize", ["x", "", "", "z"], ["y"],
                                              mode="linear")],
         [2, 3, 4, 5], {"z": np.array([2, 3, 7, 9])}, dtype=F32),
    Case("resize_linear_align_corners_down", [N("Resize", ["x", "", "s"], ["y"], mode="linear",
                                                coordinate_transformation_mode="align_corners")],
         ["N", 2, 6, 7], {"s": np.array([1, 1, 0.5, 0.6], np.float32)}, dtype=F32),
    Case("resize_cubic_asymmetric", [N("Resize", ["x", "", "s"], ["y"], mode="cubic",
                                       coordinate_transformation_mode="asymmetric")],
         [2, 2, 4, 5], {"s": np.array([1, 1, 1.5, 2], np.float32)}, dtype=F32),
    Case("resize_linear_antialias_axes", [N("Resize", ["x", "", "s"], ["y"], mode="linear",
                                            antialias=1, axes=[2, 3])],
         ["N", 2, 8, 9], {"s": np.array([0.5, 0.4], np.float32)}, dtype=F32, opset=18),
    Case("resize_nearest_symbolic_hw", [N("Resize", ["x", "", "s"], ["y"], mode="nearest",
                                          nearest_mode="floor",
                                          coordinate_transformation_mode="asymmetric")],
         ["N", 2, "H", "W"], {"s": np.array([1, 1, 2, 2], np.float32)}, dtype=F32),
    Case("resize_nearest_channel_axis", [N("Resize", ["x", "", "s"], ["y"], mode="nearest")],
         [2, 3, 2, 2], {"s": np.array([1, 2, 1, 1], np.float32)}, dtype=F32),
    Case("resize_linear_3d_middle_axis", [N("Resize", ["x", "", "s"], ["y"], mode="linear")],
         [2, 5, 3], {"s": np.array([1, 1.6, 1], np.float32)}, dtype=F32),
    Case("average_pool", [N("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2])],
         ["N", 3, 6, 6], dtype=F32),
    Case("average_pool_pads", [N("AveragePool", ["x"], ["y"], kernel_shape=[3, 3],
                                 pads=[1, 1, 1, 1])], [2, 3, 5, 5], dtype=F32),
    Case("average_pool_pads_incl", [N("AveragePool", ["x"], ["y"], kernel_shape=[3, 3],
                                      strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1)],
         [2, 3, 6, 6], dtype=F32),
    # normalisation and softmax
    Case("batch_norm", [N("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], epsilon=1e-3)],
         ["N", 3, 4, 4], {"s": w(3), "b": w(3), "m": w(3), "v": pos(3)}),
    Case("instance_norm", [N("InstanceNormalization", ["x", "s", "b"], ["y"])], [2, 3, 4, 4],
         {"s": w(3), "b": w(3)}, dtype=F32),
    Case("layer_norm", [N("LayerNormalization", ["x", "s", "b"], ["y"], axis=-1)],
         [2, 3, 6], {"s": w(6), "b": w(6)}),
    Case("layer_norm_axis1", [N("LayerNormalization", ["x", "s", "b"], ["y"], axis=1)],
         [2, 3, 4], {"s": w(3, 4), "b": w(3, 4)}),
    Case("softmax", [N("Softmax", ["x"], ["y"])], ["N", 5]),
    # Einsum: a weight product, attention scores (x on both sides), a letter summed inside
    # the operand (broadcast back), an ellipsis, the implicit output
    Case("einsum_weight", [N("Einsum", ["x", "W"], ["y"], equation="bij,jk->bik")], ["N", 3, 4],
         {"W": w(4, 5)}),
    Case("einsum_attention", [N("Einsum", ["x", "x"], ["y"], equation="bhid,bhjd->bhij")],
         [2, 2, 3, 4]),
    Case("einsum_summed_inside", [N("Einsum", ["x", "W"], ["y"], equation="bij,k->bjk")],
         [2, 3, 4], {"W": w(5)}),
    Case("einsum_ellipsis", [N("Einsum", ["x", "W"], ["y"], equation="...ij,jk->...ik")],
         [2, 3, 4], {"W": w(4, 5)}),
    Case("einsum_implicit", [N("Einsum", ["x", "W"], ["y"], equation="ij,jk")], [3, 4],
         {"W": w(4, 5)}),
    Case("softmax_axis1_rank3", [N("Softmax", ["x"], ["y"], axis=1)], [2, 4, 3]),
    Case("softmax_opset11_coerced", [N("Softmax", ["x"], ["y"], axis=1)], [2, 3, 4], opset=11),
    Case("log_softmax", [N("LogSoftmax", ["x"], ["y"])], ["N", 5]),
    # shapes and indexing
    Case("flatten", [N("Flatten", ["x"], ["y"])], ["N", 2, 3, 3]),
    Case("reshape", [N("Reshape", ["x", "s"], ["y"])], ["N", 2, 3], {"s": np.array([0, 6])}),
    Case("squeeze", [N("Squeeze", ["x", "ax"], ["y"])], ["N", 4, 1, 1],
         {"ax": np.array([2, 3])}),
    Case("squeeze_opset11", [N("Squeeze", ["x"], ["y"], axes=[2])], [2, 4, 1], opset=11),
    Case("unsqueeze", [N("Unsqueeze", ["x", "ax"], ["y"])], ["N", 4], {"ax": np.array([1])}),
    Case("transpose", [N("Transpose", ["x"], ["y"], perm=[0, 2, 3, 1])], ["N", 2, 3, 4]),
    Case("transpose_default", [N("Transpose", ["x"], ["y"])], [2, 3, 4]),
    Case("expand", [N("Expand", ["x", "s"], ["y"])], [3, 1], {"s": np.array([2, 3, 4])}),
    Case("concat", [N("Relu", ["x"], ["r"]), N("Concat", ["x", "r", "b"], ["y"], axis=1)],
         ["N", 2, 3], {"b": w(2, 1, 3)}, batch=2, away_from=0.0),
    Case("split", [N("Split", ["x", "s"], ["a", "b"], axis=1), N("Mul", ["a", "b"], ["y"])],
         [2, 6], {"s": np.array([3, 3])}),
    Case("split_unused_output", [N("Split", ["x"], ["a", "b", "c"], axis=1, num_outputs=3),
                                 N("Add", ["a", "c"], ["y"])], [2, 6], opset=18),
    Case("slice", [N("Slice", ["x", "st", "en", "ax", "sp"], ["y"])], ["N", 8, 5],
         {"st": np.array([1, -1]), "en": np.array([7, -6]), "ax": np.array([1, 2]),
          "sp": np.array([2, -2])}),
    Case("gather", [N("Gather", ["x", "i"], ["y"], axis=1)], [2, 5],
         {"i": np.array([[0, 3], [3, 4]])}),
    # constant step-1 slices and consecutive gathers: dy padded back (rules/_common.pad_back)
    Case("slice_step1_clamped", [N("Slice", ["x", "st", "en", "ax", "sp"], ["y"])], ["N", 8, 5],
         {"st": np.array([1, 1]), "en": np.array([99, -1]), "ax": np.array([1, -1]),
          "sp": np.array([1, 1])}),
    Case("slice_no_axes", [N("Slice", ["x", "st", "en"], ["y"])], [3, 6],
         {"st": np.array([1, 2]), "en": np.array([3, 5])}),
    Case("slice_symbolic_axis", [N("Slice", ["x", "st", "en", "ax"], ["y"])], ["N", 4],
         {"st": np.array([1]), "en": np.array([2]), "ax": np.array([0])}, batch=3),
    Case("gather_scalar", [N("Gather", ["x", "i"], ["y"], axis=1)], ["N", 5, 3],
         {"i": np.array(-2)}),
    Case("gather_run", [N("Gather", ["x", "i"], ["y"], axis=2)], [2, 3, 6],
         {"i": np.array([2, 3, 4])}),
    Case("gather_unknown_rank", [N("Reshape", ["x", "s"], ["r"]),
                                 N("Gather", ["r", "i"], ["y"], axis=0)], [3, 4],
         {"s": np.array([-1]), "i": np.array(2)}),
    Case("slice_runtime_end", [N("Shape", ["x"], ["sh"]), N("Gather", ["sh", "one"], ["d"]),
                               N("Sub", ["d", "one"], ["e"]),
                               N("Unsqueeze", ["e", "zero"], ["en"]),
                               N("Slice", ["x", "st", "en", "ax"], ["y"])], [2, "W", 3],
         {"one": np.array(1), "zero": np.array([0]), "st": np.array([1]), "ax": np.array([1])}),
    Case("pad_crop_and_fill", [N("Pad", ["x", "p"], ["y"])], [2, 5, 4],
         {"p": np.array([0, -1, 2, 0, 2, -1])}),
    Case("gather_elements", [N("GatherElements", ["x", "i"], ["y"], axis=1)], [2, 4],
         {"i": np.array([[0, 0, 3], [2, 1, 1]])}),
    Case("pad_constant", [N("Pad", ["x", "p", "v"], ["y"])], [2, 3, 4],
         {"p": np.array([0, 1, 2, 0, 2, 1]), "v": np.array(0.5)}),
    # tf2onnx pads before stride-2 convs; a negative pad crops; pads computed at run time
    Case("pad_constant_negative", [N("Pad", ["x", "p"], ["y"])], ["N", 3, 6, 6],
         {"p": np.array([0, 0, 1, -1, 0, 0, -2, 1])}),
    Case("pad_constant_axes", [N("Pad", ["x", "p", "", "ax"], ["y"])], [2, 3, 4], opset=18,
         inits={"p": np.array([1, -1, 0, 2]), "ax": np.array([-1, 1])}),
    Case("pad_constant_computed_pads", [N("Abs", ["p0"], ["p"]), N("Pad", ["x", "p"], ["y"])],
         [2, 3, 4], {"p0": np.array([0, -1, 2, 0, 2, -1])}),
    Case("pad_reflect", [N("Pad", ["x", "p"], ["y"], mode="reflect")], [2, 4, 5],
         {"p": np.array([0, 1, 2, 0, 2, 1])}),
    Case("pad_edge", [N("Pad", ["x", "p"], ["y"], mode="edge")], [2, 3, 4],
         {"p": np.array([0, 2, 1, 0, 1, 2])}),
    *_conv_cases(),
    *_quantized_cases(),
    *_qoperator_cases(),
]


def _input(case: Case, rng: np.random.Generator) -> np.ndarray:
    shape = [case.batch if d == "N" else 5 if isinstance(d, str) else d for d in case.shape]
    if case.positive:
        return rng.uniform(0.5, 2.0, shape).astype(case.dtype)
    x = rng.standard_normal(shape) * 1.5
    kinks = case.away_from if isinstance(case.away_from, tuple) else (case.away_from,)
    for k in kinks if case.away_from is not None else ():
        near = np.abs(x - k) < 0.2
        x[near] = k + np.where(x[near] >= k, 0.2, -0.2) + 0.1 * np.sign(x[near] - k + 1e-9)
        x = np.where(np.abs(x - k) < 0.2, k + 0.3, x)
    return x.astype(case.dtype)


def _real_valued(case: Case):
    """The float64 function a quantized case approximates, written from the ONNX and ONNX
    Runtime specs' formulas: QuantizeLinear → clip(x / s + zp, qmin, qmax) without rounding,
    DequantizeLinear → (q − zp) · s, a QLinear op → its float op between the two."""
    rank = len(case.shape)
    inits = {k: np.asarray(v, F64) for k, v in case.inits.items()}
    nodes = []

    def attr(node, name, default):
        return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name),
                    default)

    def per_axis(name, axis, r):
        value = inits[name] if name else np.zeros(())
        if value.size == 1:
            return value.reshape(())
        shape = [1] * r
        shape[axis % r] = -1
        return value.reshape(shape)

    def dequantize(q, s, zp, out, axis=1, r=rank):
        if q in case.inits:  # a weight: dequantized here, once
            w8 = np.asarray(case.inits[q], F64)
            inits[out] = (w8 - per_axis(zp, 0 if s and inits[s].size > 1 else axis, w8.ndim)) \
                * per_axis(s, 0 if inits[s].size > 1 else axis, w8.ndim)
            return
        inits[out + "_s"], inits[out + "_zp"] = per_axis(s, axis, r), per_axis(zp, axis, r)
        nodes.extend([N("Sub", [q, out + "_zp"], [out + "_c"]),
                      N("Mul", [out + "_c", out + "_s"], [out])])

    def quantize(x, s, zp, out, output_dtype=None, axis=1, r=rank):
        qmin, qmax = _integer_range(case.inits.get(zp) if zp else None, output_dtype)
        inits[out + "_s"], inits[out + "_zp"] = per_axis(s, axis, r), per_axis(zp, axis, r)
        inits[out + "_lo"], inits[out + "_hi"] = np.array(qmin, F64), np.array(qmax, F64)
        nodes.extend([N("Div", [x, out + "_s"], [out + "_d"]),
                      N("Add", [out + "_d", out + "_zp"], [out + "_r"]),
                      N("Clip", [out + "_r", out + "_lo", out + "_hi"], [out])])

    def integer_product(node, ins, float_op, zero_point_shape):
        """ConvInteger / MatMulInteger: f(q − zp, W8 − zp_W) in float64."""
        inits[node.output[0] + "_w"] = np.asarray(case.inits[ins[1]], F64) \
            - inits[ins[3]].reshape(zero_point_shape)
        kept = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        nodes.extend([N("Sub", [ins[0], ins[2]], [node.output[0] + "_c"]),
                      N(float_op, [node.output[0] + "_c", node.output[0] + "_w"],
                        [node.output[0]], **kept)])

    for node in case.nodes:
        ins = [*node.input, "", ""]
        if node.op_type == "DynamicQuantizeLinear":  # the spec's s and zp, without rounding
            q, s, zp = node.output
            inits["zero"], inits["steps"] = np.zeros(()), np.array(255.0)
            nodes.extend([N("ReduceMax", [ins[0]], ["hi"], keepdims=0),
                          N("ReduceMin", [ins[0]], ["lo"], keepdims=0),
                          N("Max", ["hi", "zero"], ["hi0"]), N("Min", ["lo", "zero"], ["lo0"]),
                          N("Sub", ["hi0", "lo0"], ["span"]), N("Div", ["span", "steps"], [s]),
                          N("Div", ["lo0", s], ["lo_steps"]), N("Neg", ["lo_steps"], [zp]),
                          N("Div", [ins[0], s], ["x_steps"]), N("Add", ["x_steps", zp], [q])])
        elif node.op_type == "ConvInteger":
            integer_product(node, ins, "Conv", (-1, 1, 1, 1))
        elif node.op_type == "MatMulInteger":
            integer_product(node, ins, "MatMul", (1, -1))
        elif node.op_type == "Cast":
            nodes.append(N("Identity", node.input, node.output))
        elif node.op_type == "QuantizeLinear":
            quantize(ins[0], ins[1], ins[2], node.output[0], attr(node, "output_dtype", None),
                     attr(node, "axis", 1))
        elif node.op_type == "DequantizeLinear":
            dequantize(ins[0], ins[1], ins[2], node.output[0], attr(node, "axis", 1))
        elif node.op_type in SIGNATURES or node.op_type == "QLinearConcat":
            if node.op_type == "QLinearConcat":
                float_op, output = "Concat", (0, 1)
                operands = [(i, i + 1, i + 2) for i in range(2, len(node.input), 3)]
            else:  # the signatures' input indices (spec facts) are shared; formulas are not
                float_op, operands, output = SIGNATURES[node.op_type]
            reals = [f"{node.output[0]}_in{k}" for k in range(len(operands))]
            for (q, sc, zp), real in zip(operands, reals):
                dequantize(ins[q], ins[sc], ins[zp], real)
            kept = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if not ins[output[0]]:  # a float output (QGemm)
                nodes.append(N(float_op, reals, [node.output[0]], **kept))
                continue
            nodes.append(N(float_op, reals, [node.output[0] + "_f"], **kept))
            quantize(node.output[0] + "_f", ins[output[0]], ins[output[1]], node.output[0])
        else:
            nodes.append(node)
    return make_model(nodes, [("x", case.shape)], inits=inits, opset=17, dtype=F64)


def _model(case: Case):
    inits = {k: (v.astype(case.dtype) if v.dtype.kind == "f" else v) for k, v in case.inits.items()}
    contrib = any(n.domain == "com.microsoft" for n in case.nodes)
    return make_model(case.nodes, [("x", case.shape)], inits=inits, opset=case.opset,
                      dtype=case.dtype, domains={"com.microsoft": 1} if contrib else None)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_rule_matches_finite_differences(case: Case) -> None:
    x = _input(case, np.random.default_rng(0))
    if case.quantized:  # float32 gradient of the quantized graph vs float64 of the real one
        check_vjp(_model(case), {"x": x}, rtol=case.rtol or 1e-5, eps=1e-4,
                  reference=_real_valued(case))
        return
    # float64 wherever ONNX Runtime has a double kernel; float32 (looser) where it has none
    if case.dtype == F64:
        check_vjp(_model(case), {"x": x}, rtol=1e-6, eps=1e-6)
    else:
        check_vjp(_model(case), {"x": x}, rtol=2e-3, eps=1e-2)


def test_every_rule_has_a_case() -> None:
    covered = {n.op_type for c in CASES for n in c.nodes}
    missing = set(VJP_RULES) - covered
    assert not missing, f"rules without a finite-difference case: {sorted(missing)}"


def test_non_differentiable_ops_have_no_rule() -> None:
    assert not set(VJP_RULES) & NON_DIFFERENTIABLE


def _gradient_ops_after_folding(model: onnx.ModelProto, tmp_path) -> list[str]:
    """The gradient graph's op types as ONNX Runtime runs them per call (after its basic
    optimisations, constant folding among them), sorted."""
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sorted(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node
                  if any(o.startswith("ogc") for o in n.output))


def test_numbers_beside_tensors_of_known_rank_become_unit_constants_of_that_rank() -> None:
    """ONNX Runtime runs (N, C, 1, 1) against a rank-0 scalar one element at a time, so the
    emitter gives numbers (and forward scalar constants) the other operands' rank; Clip's
    bounds stay scalars (its schema wants them so)."""
    from onnx import numpy_helper

    from onnx_gradcam.autodiff.emitter import Emitter

    op = Emitter(opset=17, dtype=np.dtype(np.float32), shapes={"x": (None, 8, 1, 1)},
                 constants={"six": np.array(6.0, np.float32)})
    mask = op.Greater("x", 0.0)
    op.Where(mask, op.Mul("x", "six"), 0.0)
    op.Clip("x", 0.0, 6.0)
    shapes = {t.name: numpy_helper.to_array(t).shape for t in op.initializers}
    for node in op.nodes:
        consts = [shapes[i] for i in node.input if i in shapes]
        want = () if node.op_type == "Clip" else (1, 1, 1, 1)
        assert consts and all(s == want for s in consts), (node.op_type, consts)


def test_pooled_dense_head_gradient_runs_no_transpose_shape_or_scaling_per_call(
        tmp_path) -> None:
    """The gradient of :data:`POOLED_DENSE_HEAD` (its values: the finite-difference case
    above): the Transposes of (N, 1, 1, C) ↔ (N, C, 1, 1) are Reshapes that fold together,
    reshape targets are constants (no Shape node), and the mean's 1/(h·w) is folded into the
    1×1 conv's weight, so what ONNX Runtime runs per call (after its constant folding) is
    Reshapes, MatMuls, the ReLU mask and the broadcast to the positions."""
    from onnx_gradcam.explainer_graph import gradient_model
    from onnx_gradcam.graph import GraphInfo

    case = next(c for c in CASES if c.id == "nhwc_pooled_dense_head")
    model = gradient_model(GraphInfo(_model(case)), "x", "y")
    ops = _gradient_ops_after_folding(model, tmp_path)
    # the one Mul is the ReLU mask's (dy · Cast(y > 0)); a scaling would be a second
    assert ops and not {"Transpose", "Shape", "Div"} & set(ops), ops
    assert ops.count("Mul") == ops.count("Cast") == 1, ops


@pytest.mark.parametrize("case_id, window_ops", [
    ("conv_depthwise_multiplier", ["Conv"]),  # stride 1: the flipped-kernel Conv
    ("conv3d_depthwise", ["Conv"]),
    ("conv_pads_past_kernel", ["ConvTranspose"]),
    ("pad_then_conv_stride2", ["ConvTranspose"]),  # the Pad's crop is in its pads
    ("pad_nhwc_then_conv_stride2", ["ConvTranspose", "Transpose"]),
    ("conv_then_channel_scale", ["Conv"]),  # the scale is in the (flipped) weight
    ("conv_nhwc_channel_scale", ["ConvTranspose", "Transpose"]),
])
def test_window_gradients_run_one_window_op_per_call(tmp_path, case_id, window_ops) -> None:
    """What ONNX Runtime runs per call (after its constant folding) for these windows' input
    gradients (values: the finite-difference cases above): one Conv or ConvTranspose (and the
    layout's Transpose back), no Slice or Pad that crops its result and no Mul by a channel
    scale after it."""
    from onnx_gradcam.explainer_graph import gradient_model
    from onnx_gradcam.graph import GraphInfo

    case = next(c for c in CASES if c.id == case_id)
    model = gradient_model(GraphInfo(_model(case)), "x", "y")
    ops = _gradient_ops_after_folding(model, tmp_path)
    assert ops == window_ops, ops


def test_squeeze_excite_gradient_adds_the_pooled_cotangent_unexpanded(tmp_path) -> None:
    """x's two cotangents in a squeeze-excite block (values: the finite-difference cases
    above): the pooling's (N, C, 1, 1) one is added by a broadcasting Add, never expanded to
    x's size first."""
    from onnx_gradcam.explainer_graph import gradient_model
    from onnx_gradcam.graph import GraphInfo

    for case_id in ("squeeze_excite", "squeeze_excite_pool"):
        case = next(c for c in CASES if c.id == case_id)
        ops = _gradient_ops_after_folding(
            gradient_model(GraphInfo(_model(case)), "x", "y"), tmp_path)
        assert "Add" in ops and not {"Expand", "Sum"} & set(ops), ops


def test_a_quantized_tensor_from_an_op_without_a_quantized_rule_is_refused() -> None:
    """An integer Neg between Q and DQ (it does not keep the quantization parameters, as
    MaxPool or Reshape do) carries no cotangent: refused by name, never a silently zero
    gradient."""
    from onnx_gradcam.errors import UnsupportedOpError
    from onnx_gradcam.explainer_graph import gradient_model
    from onnx_gradcam.graph import GraphInfo

    nodes = [N("QuantizeLinear", ["x", "xs", "xzp"], ["q"]),
             N("Neg", ["q"], ["p"]),
             N("DequantizeLinear", ["p", "xs", "xzp"], ["y"])]
    model = make_model(nodes, [("x", [1, 2, 4, 4])], inits=X_QUANT, opset=13, dtype=F32)
    with pytest.raises(UnsupportedOpError, match="'p' is a quantized tensor made by Neg"):
        gradient_model(GraphInfo(model), "x", "y")


def test_swish_cotangents_stay_in_the_blocked_layout(tmp_path) -> None:
    """Between 1×1 convs with x·σ(x), the swish gradient runs on the convs' blocked (NCHWc)
    tensors: its ops are ones ONNX Runtime keeps blocked, and the cotangents are declared with
    their forward tensors' shapes (symbolic batch included; without them nothing feeding the
    gradient's products is blocked), so no ReorderOutput feeds them. Values: the chain rule in
    numpy."""
    from onnx_gradcam.explainer_graph import gradient_model
    from onnx_gradcam.graph import GraphInfo

    c = 32
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal((c, c, 1, 1)).astype(np.float32) * 0.2 for _ in range(3)]
    inits = [onnx.numpy_helper.from_array(v, f"W{i}") for i, v in enumerate(weights)]
    nodes = [N("Conv", ["x", "W0"], ["a"]), N("Conv", ["a", "W1"], ["b"]),
             N("Sigmoid", ["b"], ["s"]), N("Mul", ["b", "s"], ["r"]),
             N("Conv", ["r", "W2"], ["e"]),
             N("GlobalAveragePool", ["e"], ["g"]), N("Flatten", ["g"], ["y"])]
    graph = helper.make_graph(nodes, "swish", [helper.make_tensor_value_info(
        "x", onnx.TensorProto.FLOAT, ["N", c, 8, 8])], [helper.make_tensor_value_info(
            "y", onnx.TensorProto.FLOAT, ["N", c])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              ir_version=8)
    grad = gradient_model(GraphInfo(model), "a", "y")
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "swish.onnx")
    session = ort.InferenceSession(grad.SerializeToString(), opts,
                                   providers=["CPUExecutionProvider"])
    optimized = onnx.load(opts.optimized_model_filepath).graph.node
    made = {o: n for n in optimized for o in n.output}
    ours = [n for n in optimized if n.op_type in ("Mul", "Add", "HardSigmoid")
            and n.name.startswith("ogc")]
    assert len(ours) == 4, [n.op_type for n in optimized]
    assert all(made[i].op_type != "ReorderOutput" for n in ours for i in n.input if i in made)
    x = rng.standard_normal((2, c, 8, 8)).astype(np.float32)
    seed = rng.standard_normal((2, c)).astype(np.float32)
    got = session.run(["ogc_gradient"], {"x": x, "ogc_seed": seed})[0]
    w = [v[:, :, 0, 0].astype(np.float64) for v in weights]
    b = np.einsum("oi,nihw->nohw", w[1], np.einsum("oi,nihw->nohw", w[0], x.astype(np.float64)))
    s = 1 / (1 + np.exp(-b))
    de = np.broadcast_to(seed[:, :, None, None] / 64.0, b.shape)
    db = np.einsum("oi,nohw->nihw", w[2], de) * s * (1 + b * (1 - s))
    want = np.einsum("oi,nohw->nihw", w[1], db)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def _first_max_routing(x: np.ndarray, y: np.ndarray, dy: np.ndarray, kernel, strides,
                       dilations, begin) -> np.ndarray:
    """The oracle of MaxPool's gradient where windows tie: each output's cotangent added at
    the first position (row-major over the kernel offsets, pads skipped) holding its max."""
    dx = np.zeros_like(x)
    for index in np.ndindex(*y.shape):
        out = np.array(index[2:])
        for offset in np.ndindex(*kernel):
            at = out * strides + np.array(offset) * dilations - begin
            if (at >= 0).all() and (at < x.shape[2:]).all() and x[index[:2] + tuple(at)] == y[
                    index]:
                dx[index[:2] + tuple(at)] += dy[index]
                break
        else:
            raise AssertionError(f"output {index}: no input equals its max")
    return dx


@pytest.mark.parametrize("shape, attrs, begin", [
    ([2, 3, 9, 9], dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]), [1, 1]),
    ([2, 3, 8, 8], dict(kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1]), [0, 0]),
    ([2, 2, 6, 7], dict(kernel_shape=[2, 2], strides=[2, 2]), [0, 0]),
    ([2, 2, 6, 6], dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1]), [1, 1]),
    ([2, 2, 9, 10], dict(kernel_shape=[3, 3], strides=[3, 3]), [0, 0]),
    ([2, 2, 8, 8], dict(kernel_shape=[2, 2], strides=[3, 3], ceil_mode=1), [0, 0]),
    ([2, 2, 8, 8], dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1), [0, 0]),
    ([2, 2, 9, 9], dict(kernel_shape=[3, 3], strides=[2, 2], dilations=[2, 2],
                        pads=[2, 1, 1, 2]), [2, 1]),
    ([2, 2, 8, 7], dict(kernel_shape=[2, 3], strides=[2, 1], dilations=[2, 1],
                        pads=[0, 1, 1, 0], ceil_mode=1), [0, 1]),
    ([2, 2, 7, 8], dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"), [1, 0]),
    ([2, 2, 7, 8], dict(kernel_shape=[3, 2], strides=[2, 2], auto_pad="SAME_LOWER"), [1, 0]),
    ([2, 3, 11], dict(kernel_shape=[3], strides=[2], pads=[1, 1]), [1]),
    ([2, 3, 7], dict(kernel_shape=[2]), [0]),
    ([1, 2, 4, 5, 6], dict(kernel_shape=[2, 2, 3], strides=[1, 2, 2], pads=[0, 1, 1, 1, 0, 1]),
     [0, 1, 1]),
], ids=["k3s2_pads", "k3s2_end_pads", "k2s2", "k3s1", "k3s3", "k2s3_ceil", "k3s2_ceil",
        "dilated", "mixed_ceil", "same_upper", "same_lower", "1d", "1d_s1", "3d"])
def test_max_pool_routes_each_cotangent_to_its_windows_first_max(shape, attrs, begin) -> None:
    """Windows full of ties, within a window and across overlapping ones (x drawn from three
    integers; the cotangents are integers too, so every sum is exact): the gradient equals
    :func:`_first_max_routing` exactly, with the batch and spatial sizes symbolic."""
    from onnx_gradcam.explainer_graph import gradient_model
    from onnx_gradcam.graph import GraphInfo
    from tests.gradcheck import session

    r = len(shape) - 2
    symbolic = ["N", shape[1], *[f"S{i}" for i in range(r)]]
    model = make_model([N("MaxPool", ["x"], ["y"], **attrs)], [("x", symbolic)], dtype=F32)
    rng = np.random.default_rng(5)
    x = rng.integers(0, 3, shape).astype(F32)
    y = session(model).run(["y"], {"x": x})[0]
    dy = rng.integers(1, 9, y.shape).astype(F32)
    grad = session(gradient_model(GraphInfo(model), "x", "y"))
    got = grad.run(["ogc_gradient"], {"x": x, "ogc_seed": dy})[0]
    strides = attrs.get("strides", [1] * r)
    dilations = attrs.get("dilations", [1] * r)
    want = _first_max_routing(x, y, dy, attrs["kernel_shape"], strides, dilations, begin)
    np.testing.assert_array_equal(got, want)
