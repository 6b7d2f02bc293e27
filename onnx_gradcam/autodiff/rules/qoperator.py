"""ONNX Runtime's QOperator ops (QLinearConv, QLinearAdd, …), differentiated by their meaning.

Each op computes ``quantize(f(dequantize(inputs)))`` for a float op ``f`` in one integer kernel.
The forward stays that kernel; the backward is the float op's own rule run on dequantized copies
of the forward's integer tensors, between the two straight-through steps of ``rules/quant.py``:

- the output's cotangent (with respect to its real number, :data:`QUANTIZING`) becomes the float
  result's: ``dy = dq / s_y`` where the output is not clipped, 0 where it is. The float result is
  not kept by the kernel, so the test reads the integer output: at either end of its range it
  counts as clipped;
- ``f``'s rule gives the float inputs' cotangents, which become the integer inputs':
  ``dq_x = dx · s_x``.

Weights (constant integer inputs) are dequantized once, as constants.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnx_gradcam.autodiff.emitter import Emitter, Node, Value
from onnx_gradcam.autodiff.registry import VJP_RULES, vjp
from onnx_gradcam.autodiff.rules._common import Dys
from onnx_gradcam.autodiff.rules.quant import unclipped, unscaled

#: (float op, the quantized operands' (tensor, scale, zero point) input indices, the output's
#: (scale, zero point) input indices) of each op with a fixed signature
SIGNATURES = {
    "QLinearConv": ("Conv", [(0, 1, 2), (3, 4, 5)], (6, 7)),
    "QLinearMatMul": ("MatMul", [(0, 1, 2), (3, 4, 5)], (6, 7)),
    "QLinearAdd": ("Add", [(0, 1, 2), (3, 4, 5)], (6, 7)),
    "QLinearMul": ("Mul", [(0, 1, 2), (3, 4, 5)], (6, 7)),
    "QLinearGlobalAveragePool": ("GlobalAveragePool", [(0, 1, 2)], (3, 4)),
    "QLinearAveragePool": ("AveragePool", [(0, 1, 2)], (3, 4)),
    "QLinearSigmoid": ("Sigmoid", [(0, 1, 2)], (3, 4)),
    "QLinearLeakyRelu": ("LeakyRelu", [(0, 1, 2)], (3, 4)),
    # A, B, then the int32 bias C (a constant: not differentiated), then Y's parameters,
    # absent where Y is float
    "QGemm": ("Gemm", [(0, 1, 2), (3, 4, 5)], (7, 8)),
}


def _signature(op_type: str, inputs: int) -> tuple[str, list[tuple[int, int, int]],
                                                   tuple[int, int]]:
    """:data:`SIGNATURES`'s entry for ``op_type`` with ``inputs`` inputs (QLinearConcat's:
    Y_scale, Y_zero_point, then a (X, X_scale, X_zero_point) triple per tensor)."""
    if op_type == "QLinearConcat":
        return "Concat", [(i, i + 1, i + 2) for i in range(2, inputs, 3)], (0, 1)
    return SIGNATURES[op_type]


def float_op_of(node: onnx.NodeProto) -> tuple[str, list[str]]:
    """A QOperator node's float op and its quantized data inputs (the operands' tensors)."""
    float_op, operands, _ = _signature(node.op_type, len(node.input))
    return float_op, [node.input[q] for q, _, _ in operands]


def output_parameters(node: onnx.NodeProto) -> tuple[str, str]:
    """The (scale, zero point) tensor names of a QOperator (or QuantizeLinear) node's output
    ("" where absent: a QGemm with a float output)."""
    if node.op_type == "QuantizeLinear":
        return node.input[1], node.input[2] if len(node.input) > 2 else ""
    if node.op_type == "DynamicQuantizeLinear":  # computed per call: its other outputs
        return node.output[1], node.output[2]
    _, _, output = _signature(node.op_type, len(node.input))
    scale, zero_point = (node.input[i] if i < len(node.input) else "" for i in output)
    return scale, zero_point


def weight_axis(node: onnx.NodeProto | Node, operand: int) -> int:
    """The axis of a per-axis scale on ``operand`` (0 for the data, 1 for QLinearConv's and
    QGemm's weight): the output channel — QLinearConv's W (M, C/g, k…) and a transposed QGemm
    B (N, K) on axis 0, an untransposed B (K, N) on its last."""
    if operand == 0 or node.op_type not in ("QLinearConv", "QGemm"):
        return 1
    trans_b = (node.attr("transB", 0) if isinstance(node, Node) else next(
        (a.i for a in node.attribute if a.name == "transB"), 0))
    return -1 if node.op_type == "QGemm" and not trans_b else 0


def float_meaning(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` in which each contrib QOperator op is DequantizeLinear → its float op →
    QuantizeLinear (standard ONNX, the same tensor names): what ONNX's shape inference reads,
    as it does not know ONNX Runtime's contrib ops."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = []
    for node in model.graph.node:
        if node.op_type not in QUANTIZED_OPS or node.domain != "com.microsoft":
            nodes.append(node)
            continue
        float_op, operands, _ = _signature(node.op_type, len(node.input))
        scale, zero_point = output_parameters(node)
        result = node.output[0]
        reals = [f"{result}__ogc_real{k}" for k in range(len(operands))]
        for k, ((q, s, z), real) in enumerate(zip(operands, reals)):
            nodes.append(helper.make_node("DequantizeLinear", [node.input[q], node.input[s],
                                                               node.input[z]], [real],
                                          axis=weight_axis(node, k)))
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute
                 if a.name != "channels_last"}
        if not scale:  # a QGemm with a float output
            nodes.append(helper.make_node(float_op, reals, [result], **attrs))
            continue
        nodes.append(helper.make_node(float_op, reals, [result + "__ogc_float"], **attrs))
        nodes.append(helper.make_node("QuantizeLinear", [result + "__ogc_float", scale,
                                                         zero_point], [result]))
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def _param(op: Emitter, name: str | None, what: str) -> np.ndarray:
    value = op.value_of(name)
    if name is not None and value is None:
        raise ValueError(f"{what} {name!r} is computed at run time")
    return np.zeros((), np.int64) if value is None else value


def _dequantized(op: Emitter, q: str, scale: str, zero_point: str | None, axis: int = 0
                 ) -> Value:
    """A float copy of the integer tensor ``q`` (its real values); a constant for a weight
    (per-axis scales on ``axis``, see :func:`weight_axis`)."""
    s, zp = _param(op, scale, "scale"), _param(op, zero_point, "zero point")
    known = op.value_of(q)
    if known is not None:
        shape = [1] * known.ndim
        if s.size > 1:
            shape[axis if axis < known.ndim else -1] = -1
        real = ((known.astype(np.float64) - zp.astype(np.float64).reshape(shape))
                * s.astype(np.float64).reshape(shape))
        name = op.const(real.astype(op.dtype))
        op.know_shape(name, real.shape)
        return name
    if s.size > 1:
        raise ValueError(f"activation {q!r} has per-axis scales")
    name = op.DequantizeLinear(q, scale, zero_point)
    op.know_shape(name, op.shape(q))
    return name


def _output_cotangent(op: Emitter, q: Value, dq: Value, scale: str, zero_point: str | None
                      ) -> Value:
    """``dq / s_y`` where the integer output ``q`` lies strictly inside its range, else 0."""
    s, zp = _param(op, scale, "scale").astype(np.float64), _param(op, zero_point, "zero point")
    elem = helper.np_dtype_to_tensor_dtype(zp.dtype) if zero_point else TensorProto.UINT8
    return op.masked(unclipped(op, q, elem), unscaled(op, dq, s), q)


def _through(op: Emitter, node: Node, dys: Dys, float_op: str,
             operands: Sequence[tuple[int, int, int]], output: tuple[int, int],
             attrs: dict) -> list[Value | None]:
    """The rule of ``float_op`` between the straight-through steps (see the module's doc)."""
    inputs = [node.input(i) for i in range(max(len(node.inputs), max(output) + 1))]
    y_scale, y_zero_point = inputs[output[0]], inputs[output[1]]
    if y_scale is None:  # a float output (QGemm's may be)
        y, dy = node.outputs[0], dys[0]
    else:
        y = _dequantized(op, node.outputs[0], y_scale, y_zero_point)  # for rules that read it
        dy = _output_cotangent(op, node.outputs[0], dys[0], y_scale, y_zero_point)
    floats = [_dequantized(op, inputs[q], inputs[s], inputs[z], weight_axis(node, k))
              for k, (q, s, z) in enumerate(operands)]
    inner = Node(float_op, node.name, floats, [y], attrs)
    dxs = VJP_RULES[float_op](op, inner, [dy])
    result: list[Value | None] = [None] * len(node.inputs)
    for (q, s, _), dx in zip(operands, dxs[:len(operands)]):
        if dx is not None and op.value_of(inputs[q]) is None:
            scale = _param(op, inputs[s], "scale").astype(np.float64)
            result[q] = op.Mul(dx, op.const(np.asarray(scale, op.dtype)))
    return result


def _qoperator_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """dequantize → the float op's rule → quantize, straight through (module doc)."""
    float_op, operands, output = _signature(node.op_type, len(node.inputs))
    attrs = {k: v for k, v in node.attrs.items() if k != "channels_last"}
    if node.attr("channels_last", 0):
        raise ValueError("channels_last pooling is not supported")
    return _through(op, node, dys, float_op, operands, output, attrs)



QUANTIZED_OPS = frozenset({*SIGNATURES, "QLinearConcat"})
vjp(*QUANTIZED_OPS)(_qoperator_vjp)
