"""Lower onnxruntime-training's ``com.microsoft`` gradient ops to standard ONNX.

``LOWERINGS`` maps a gradient op type to a pure function ``(op, node, forward) -> outputs``: the
:class:`Emitter`, a read-only :class:`Node` view, the forward node it differentiates (``None``
where unknown), and one value per node output (``None`` for an output it cannot compute; asking
for such an output is an error). onnxruntime puts most gradient ops in ``com.microsoft`` and a few
(``MaxPoolGrad``, ``AveragePoolGrad``) in the default domain, where ONNX has no such op. Like VJP
rules, a lowering never edits a graph; :func:`lower_nodes` wires its results in. Only the ops that
onnxruntime-training 1.19.2 actually emits for image-classifier heads are here; any other is one
clear error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx
from onnx import helper

from onnx_gradcam.autodiff.emitter import Emitter, Node, Value
from onnx_gradcam.autodiff.registry import registrar
from onnx_gradcam.autodiff.rules._common import (
    iota_of_shape,
    scatter_add_to_shape,
    transpose_window,
)
from onnx_gradcam.autodiff.rules.reduce import average_pool_vjp
from onnx_gradcam.errors import OnnxGradCamError
from onnx_gradcam.graph import GraphInfo
from onnx_gradcam.passes import live_nodes

Lowering = Callable[[Emitter, Node, Node | None], Sequence[Value | None]]
LOWERINGS: dict[str, Lowering] = {}
STANDARD = ("", "ai.onnx")


#: ``@lowers("ReluGrad", ...)`` registers a lowering for each contrib op type.
lowers = registrar(LOWERINGS, "lowering")


# ---- helpers ---------------------------------------------------------------------------------
def _like(op: Emitter, value: float, like: Value) -> Value:
    """The constant ``value`` in the float type of ``like`` (CastLike from opset 15)."""
    return op.CastLike(value, like) if op.opset >= 15 else op.const(value)


def broadcast_axes(op: Emitter, a: Value, b: Value) -> tuple[Value, Value]:
    """For shapes ``a``, ``b`` (int64 1-D), the axes of the broadcast result over which each
    input's gradient is summed: an axis where that input has 1 and the other not, and every
    leading axis the shorter shape lacks (onnxruntime's BroadcastGradientArgs)."""
    ra, rb = op.Size(a), op.Size(b)
    r = op.Max(ra, rb)
    one = op.const([1])

    def padded(shape: Value, rank: Value) -> tuple[Value, Value]:
        missing = op.Sub(r, rank)
        ones = op.Expand(one, op.Reshape(missing, one))
        return op.Concat(ones, shape, axis=0), op.Less(op.Range(op.const(0), r, op.const(1)),
                                                       missing)

    pa, lead_a = padded(a, ra)
    pb, lead_b = padded(b, rb)
    differ = op.Not(op.Equal(pa, pb))
    axes = []
    for p, lead in ((pa, lead_a), (pb, lead_b)):
        mask = op.Or(lead, op.And(op.Equal(p, one), differ))
        axes.append(op.Reshape(op.NonZero(mask), op.const([-1])))
    return axes[0], axes[1]


def _reduce_to(op: Emitter, dx: Value, x: str) -> Value:
    """Sum ``dx`` (shaped like a broadcast result) back to the shape of ``x``."""
    axes, _ = broadcast_axes(op, op.Shape(x), op.Shape(dx))
    summed = op.ReduceSum(dx, axes, keepdims=1, noop_with_empty_axes=1)
    return op.Reshape(summed, op.Shape(x))


def _forward(node: Node, forward: Node | None) -> Node:
    if forward is None:
        raise ValueError("its forward node is unknown")
    return forward


# ---- the lowerings ---------------------------------------------------------------------------
@lowers("Scale")
def scale_lowering(op: Emitter, node: Node, forward: Node | None) -> list[Value]:
    """Y = X · s, or X / s with ``scale_down=1`` (s: a one-element tensor of any numeric type)."""
    x, s = node.inputs[0], node.inputs[1]
    s = op.CastLike(s, x) if op.opset >= 15 else op.Cast(s, to=op.float_type)
    return [op.Div(x, s) if node.attr("scale_down", 0) else op.Mul(x, s)]


@lowers("ReluGrad")
def relu_grad_lowering(op: Emitter, node: Node, forward: Node | None) -> list[Value]:
    """dX = Where(X > 0, dY, 0) (onnxruntime passes Relu's output Y as X: the same test)."""
    dy, x = node.inputs[0], node.inputs[1]
    return [op.Where(op.Greater(x, _like(op, 0.0, x)), dy, _like(op, 0.0, dy))]


@lowers("LeakyReluGrad")
def leaky_relu_grad_lowering(op: Emitter, node: Node, forward: Node | None) -> list[Value]:
    """dX = Where(Y > 0, dY, α·dY)."""
    dy, y = node.inputs[0], node.inputs[1]
    alpha = float(node.attr("alpha", 0.01))
    return [op.Where(op.Greater(y, _like(op, 0.0, y)), dy, op.Mul(dy, _like(op, alpha, dy)))]


@lowers("SigmoidGrad")
def sigmoid_grad_lowering(op: Emitter, node: Node, forward: Node | None) -> list[Value]:
    """dX = dY · Y · (1 − Y)."""
    dy, y = node.inputs[0], node.inputs[1]
    return [op.Mul(dy, op.Mul(y, op.Sub(_like(op, 1.0, y), y)))]


@lowers("TanhGrad")
def tanh_grad_lowering(op: Emitter, node: Node, forward: Node | None) -> list[Value]:
    """dX = dY · (1 − Y²)."""
    dy, y = node.inputs[0], node.inputs[1]
    return [op.Mul(dy, op.Sub(_like(op, 1.0, y), op.Mul(y, y)))]


@lowers("GeluGrad")
def gelu_grad_lowering(op: Emitter, node: Node, forward: Node | None) -> list[Value]:
    """dX = dY · (Φ(X) + X · φ(X)), Φ(x) = ½(1 + erf(x/√2)), φ(x) = exp(−x²/2)/√(2π)
    (the exact-erf Gelu's derivative, which onnxruntime uses for every Gelu)."""
    dy, x = node.inputs[0], node.inputs[1]
    cdf = op.Mul(_like(op, 0.5, x),
                 op.Add(_like(op, 1.0, x), op.Erf(op.Mul(x, _like(op, 2 ** -0.5, x)))))
    pdf = op.Mul(op.Exp(op.Mul(op.Mul(x, x), _like(op, -0.5, x))),
                 _like(op, (2 * np.pi) ** -0.5, x))
    return [op.Mul(dy, op.Add(cdf, op.Mul(x, pdf)))]


def _softmax_axes(op: Emitter, node: Node, y: str, opset13: bool) -> list[int]:
    axis = int(node.attr("axis", -1 if opset13 else 1))
    if opset13:
        return [axis]
    rank = op.rank(y)
    return list(range(axis % rank, rank))


@lowers("SoftmaxGrad_13", "SoftmaxGrad")
def softmax_grad_lowering(op: Emitter, node: Node, forward: Node | None) -> list[Value]:
    """dX = Y · (dY − ReduceSum(dY · Y, axes, keepdims=1)); ``SoftmaxGrad_13`` reduces over
    ``axis`` only, ``SoftmaxGrad`` (opset < 13 Softmax) over every axis from ``axis`` on."""
    dy, y = node.inputs[0], node.inputs[1]
    axes = _softmax_axes(op, node, y, node.op_type.endswith("_13"))
    return [op.Mul(y, op.Sub(dy, op.reduce("ReduceSum", op.Mul(dy, y), axes)))]


@lowers("LogSoftmaxGrad_13", "LogSoftmaxGrad")
def log_softmax_grad_lowering(op: Emitter, node: Node, forward: Node | None) -> list[Value]:
    """dX = dY − Exp(Y) · ReduceSum(dY, axes, keepdims=1) (axes as for SoftmaxGrad)."""
    dy, y = node.inputs[0], node.inputs[1]
    axes = _softmax_axes(op, node, y, node.op_type.endswith("_13"))
    return [op.Sub(dy, op.Mul(op.Exp(y), op.reduce("ReduceSum", dy, axes)))]


@lowers("DivGrad")
def div_grad_lowering(op: Emitter, node: Node, forward: Node | None) -> list[Value]:
    """Y = A / B: dA = Σ_bcast dY / B, dB = Σ_bcast −dY · A / B² (each summed to its shape)."""
    dy, a, b = node.inputs[:3]
    da = op.Div(dy, b)
    db = op.Neg(op.Div(op.Mul(da, a), b))
    return [_reduce_to(op, da, a), _reduce_to(op, db, b)]


@lowers("FusedMatMul")
def fused_matmul_lowering(op: Emitter, node: Node, forward: Node | None) -> list[Value]:
    """Y = α · op(A) @ op(B), op = swap of the last two axes where ``transA``/``transB``
    (``Einsum("...ij->...ji")``, so the ranks need not be known), then a broadcasting MatMul."""
    if node.attr("transBatchA", 0) or node.attr("transBatchB", 0):
        raise ValueError("transBatchA/transBatchB are not supported")
    a, b = node.inputs[:2]
    a = op.Einsum(a, equation="...ij->...ji") if node.attr("transA", 0) else a
    b = op.Einsum(b, equation="...ij->...ji") if node.attr("transB", 0) else b
    y = op.MatMul(a, b)
    alpha = float(node.attr("alpha", 1.0))
    return [y if alpha == 1.0 else op.Mul(y, _like(op, alpha, y))]


@lowers("BroadcastGradientArgs")
def broadcast_gradient_args_lowering(op: Emitter, node: Node, forward: Node | None
                                     ) -> list[Value]:
    """(A_axes, B_axes) for shapes A, B: see :func:`broadcast_axes`."""
    return list(broadcast_axes(op, node.inputs[0], node.inputs[1]))


@lowers("ConvGrad")
def conv_grad_lowering(op: Emitter, node: Node, forward: Node | None) -> list[Value | None]:
    """ConvGrad(dY, X, W) → (dX, dW, dB); only dX = ConvTranspose(dY, W) cropped to X (the
    forward strides/pads/dilations/group; see :func:`~.rules._common.transpose_window`)."""
    dy, x, w = node.inputs[:3]
    w_shape = op.shape(w)
    kernel = node.attr("kernel_shape") or (list(w_shape[2:]) if w_shape else None)
    if not kernel or None in kernel:
        raise ValueError("the kernel shape is unknown")
    return [transpose_window(op, node, dy, w, x, list(kernel), int(node.attr("group", 1))),
            None, None]


@lowers("MaxPoolGrad")
def max_pool_grad_lowering(op: Emitter, node: Node, forward: Node | None) -> list[Value]:
    """dX.flat[I] += dY.flat for the flat (row-major, N·C·H·W) argmax indices I of MaxPool."""
    if node.attr("storage_order", 0):
        raise ValueError("column-major indices (storage_order=1) are not supported")
    x = _forward(node, forward).inputs[0]
    dy, indices = node.inputs[0], node.inputs[1]
    return [scatter_add_to_shape(op, op.Shape(x), indices, dy)]


@lowers("AveragePoolGrad")
def average_pool_grad_lowering(op: Emitter, node: Node, forward: Node | None) -> list[Value]:
    """dX = ConvTranspose(dY / count, ones per channel) cropped to X; ``count`` is the window
    size, or its non-pad elements with ``count_include_pad=0`` (our AveragePool VJP rule)."""
    fwd = _forward(node, forward)
    return [average_pool_vjp(op, fwd, [node.inputs[0]])[0]]


@lowers("SliceGrad")
def slice_grad_lowering(op: Emitter, node: Node, forward: Node | None) -> list[Value]:
    """SliceGrad(dY, shape, starts, ends[, axes, steps]): dX = 0 except dX[slice] = dY, as a
    scatter at Slice(iota(shape), starts, ends, axes, steps)."""
    dy, shape = node.inputs[0], node.inputs[1]
    index = op.Slice(iota_of_shape(op, shape), *node.inputs[2:6])
    return [scatter_add_to_shape(op, shape, index, dy)]


@lowers("GatherGrad")
def gather_grad_lowering(op: Emitter, node: Node, forward: Node | None) -> list[Value]:
    """GatherGrad(shape, indices, dY): dX.flat[Gather(iota(shape), indices, axis)] += dY."""
    shape, indices, dy = node.inputs[:3]
    index = op.Gather(iota_of_shape(op, shape), indices, axis=int(node.attr("axis", 0)))
    return [scatter_add_to_shape(op, shape, index, dy)]


@lowers("GatherElementsGrad")
def gather_elements_grad_lowering(op: Emitter, node: Node, forward: Node | None
                                  ) -> list[Value]:
    """GatherElementsGrad(dY, shape, indices): ScatterElements(zeros(shape), indices, dY, axis,
    reduction="add")."""
    dy, shape, indices = node.inputs[:3]
    zeros = op.Expand(_like(op, 0.0, dy), shape)
    return [op.ScatterElements(zeros, indices, dy, axis=int(node.attr("axis", 0)),
                               reduction="add" if op.opset >= 16 else None)]


# ---- wiring ----------------------------------------------------------------------------------
def _toposort(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    ready = set(available) | {""}
    pending, ordered = list(nodes), []
    while pending:
        remaining = [n for n in pending if not all(i in ready for i in n.input)]
        done = [n for n in pending if all(i in ready for i in n.input)]
        if not done:
            missing = sorted({i for n in remaining for i in n.input if i not in ready})
            raise OnnxGradCamError(f"the onnxruntime-training gradient graph reads tensors it "
                                   f"never computes: {', '.join(missing[:3])}")
        ordered += done
        ready.update(o for n in done for o in n.output)
        pending = remaining
    return ordered


def lower_nodes(info: GraphInfo, nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto],
                output: str, renames: dict[str, str], prefix: str, dtype: np.dtype,
                sources: dict[str, onnx.NodeProto] | None = None
                ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], str]:
    """Standard-ONNX nodes and initializers computing ``output`` from the backward ``nodes``.

    Every tensor the backward nodes or ``inits`` define is renamed ``prefix + name``; ``renames``
    maps the head model's own inputs (the seed) to explainer-graph tensors. Forward tensors keep
    their names. ``dtype`` is the float type of Python-number constants in lowerings. ``sources``
    maps forward node names to nodes: onnxruntime names a gradient node ``<forward name>_Grad/…``.
    Returns (nodes, initializers, the gradient's name).
    """
    init_names = {t.name for t in inits}
    forward = {o for n in info.nodes for o in n.output} | set(info.constants)
    forward |= set(info.graph_inputs) | set(renames)
    ordered = _toposort(live_nodes(nodes, [output]), forward | init_names)
    needed = {output} | {i for n in ordered for i in n.input}
    names = {o: prefix + o for n in ordered for o in n.output if o}
    names.update({t: prefix + t for t in init_names})
    names.update(renames)
    op = Emitter(opset=info.opset, dtype=dtype, shapes=info.shapes, constants=info.constants,
                 prefix=prefix + "lower/")
    for proto in ordered:
        inputs = [names.get(i, i) for i in proto.input]
        if proto.domain in STANDARD and onnx.defs.has(proto.op_type):
            op.nodes.append(helper.make_node(
                proto.op_type, inputs, [names.get(o, o) for o in proto.output],
                name=op.fresh(proto.op_type + "_node"), domain=proto.domain))
            op.nodes[-1].attribute.extend(proto.attribute)
            continue
        lowering = LOWERINGS.get(proto.op_type)
        if lowering is None:
            raise OnnxGradCamError(
                f"onnxruntime-training emitted the op {proto.domain or 'ai.onnx'}.{proto.op_type} "
                f"(for {proto.name or proto.output[0]!r}), which has no lowering to standard "
                f"ONNX; use --gradient-builder onnx (the default)")
        node = Node.from_proto(proto)
        node.inputs = inputs
        source = (sources or {}).get(proto.name.split("_Grad/")[0])
        forward = None if source is None else Node.from_proto(source)
        try:
            values = list(lowering(op, node, forward))
        except ValueError as exc:
            raise OnnxGradCamError(f"cannot lower {proto.domain}.{proto.op_type} "
                                   f"({proto.name or proto.output[0]!r}): {exc}") from None
        for out, value in zip(proto.output, values + [None] * len(proto.output)):
            if out not in needed:
                continue
            if value is None:
                raise OnnxGradCamError(f"the lowering of {proto.op_type} does not compute its "
                                       f"output {out!r}, which the gradient needs")
            names[out] = value
    gradient = op.Identity(names[output])
    kept = live_nodes(op.nodes, [gradient])
    needed = {i for n in kept for i in n.input}  # the initializers still read
    renamed_inits = []
    for tensor in inits:
        if names[tensor.name] in needed:
            copy = onnx.TensorProto()
            copy.CopyFrom(tensor)
            copy.name = names[tensor.name]
            renamed_inits.append(copy)
    return kept, [*renamed_inits, *(t for t in op.initializers if t.name in needed)], gradient
