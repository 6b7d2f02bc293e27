"""Reverse-mode gradient graph of a score w.r.t. a target layer, in standard ONNX.

Only the *head* — the nodes on a path from the target layer ``A`` to the score — is
differentiated; the backbone runs forward once. The walk goes backwards in topological order,
asks each node's VJP rule for its input cotangents and sums the cotangents of a tensor that feeds
several nodes (or one node twice).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from onnx_gradcam.autodiff import rules as _rules  # noqa: F401  (fills the registry)
from onnx_gradcam.autodiff.emitter import Emitter, Node
from onnx_gradcam.autodiff.registry import (
    INTEGER_PRESERVING,
    NON_DIFFERENTIABLE,
    QUANTIZING,
    VJP_RULES,
)
from onnx_gradcam.autodiff.rules.elementwise import swish_vjp
from onnx_gradcam.autodiff.rules.quant import dequantize
from onnx_gradcam.errors import OnnxGradCamError, UnsupportedOpError
from onnx_gradcam.graph import GraphInfo
from onnx_gradcam.passes import live_nodes


@dataclass
class GradientGraph:
    """Nodes and initializers computing ``gradient`` = Σ_c seed_c · ∂score_c/∂activation."""

    nodes: list[onnx.NodeProto]
    initializers: list[onnx.TensorProto]
    gradient: str
    head: list[str]  # op types of the differentiated head, in forward order
    #: where ``gradient`` is a broadcast of a smaller tensor of its rank (a pooling head's
    #: gradient), that tensor and its size-1 axes: reductions of the gradient can be taken
    #: from it
    pooled: tuple[str, tuple[int, ...]] | None = None
    #: the total cotangent of each head tensor the walk reached (for shortcuts that need the
    #: cotangent of a later tensor, e.g. :func:`onnx_gradcam.autodiff.summed.gradient_mean`)
    cotangents: dict[str, str] = field(default_factory=dict)
    #: declared types of emitted tensors shaped like forward ones (:func:`shaped_values`)
    value_info: list[onnx.ValueInfoProto] = field(default_factory=list)


def head_nodes(info: GraphInfo, activation: str, score: str) -> list[int]:
    """Indices (forward order) of the nodes on some path from ``activation`` to ``score``."""
    downstream = info.descendants(activation)
    upstream = info.ancestors(score)
    return [i for i in range(len(info.nodes)) if i in downstream and i in upstream]


def build_gradient(info: GraphInfo, activation: str, score: str, seed: str,
                   prefix: str = "ogc_grad/", seed_classes: str | None = None) -> GradientGraph:
    """Emit the VJP graph of ``score`` w.r.t. ``activation`` for the cotangent tensor ``seed``.

    ``seed`` must be shaped like ``score``. ``seed_classes``: where ``seed`` is one-hot (M, C),
    its class indices (M,), all within 0..C−1 (products with it become row gathers). Raises
    :class:`UnsupportedOpError` naming the op and node when a head op has no rule.
    """
    dtype = info.dtype(activation)
    #: fp16 heads are differentiated in float32 from the fp16 forward's values: fp16 products
    #: that cancel in a backward (SE blocks) lose digits float32 keeps
    wide = np.dtype(dtype) == np.float16
    op = Emitter(opset=info.opset, dtype=np.dtype(np.float32) if wide else dtype,
                 shapes=info.shapes, constants=info.constants, prefix=prefix,
                 overridable=info.overridable,
                 producers={name: info.nodes[i] for name, i in info.producer.items()})
    widened: dict[str, str] = {}
    weights: dict[str, str] = {}
    if wide:
        seed = widened.setdefault(seed, op.Cast(seed, to=op.float_type))
        op.know_shape(seed, info.shapes.get(score))
    if seed_classes is not None:
        op.mark_one_hot(seed, seed_classes, like=score)
    head = head_nodes(info, activation, score)
    if score != activation and not head:
        raise OnnxGradCamError(f"tensor {activation!r} does not feed the score {score!r}")
    differentiable = _differentiable(info, activation, head)
    #: quantized (8/16-bit integer) tensors on the path made by ops that carry no cotangent
    #: (integer Neg, …): a cotangent reaching one would be dropped silently
    quantized_elsewhere = {
        o for i in head for o in info.nodes[i].output
        if info.elem_types.get(o) in SMALL_INTEGERS and o not in differentiable}
    cotangents: dict[str, list[str]] = {score: [seed]}
    totals: dict[str, str] = {}
    swish = {} if wide else swish_units(info, head)

    for index in reversed(head):
        proto = info.nodes[index]
        dys = [_total(op, cotangents.get(o)) for o in proto.output]
        totals.update((o, dy) for o, dy in zip(proto.output, dys) if dy is not None)
        if all(dy is None for dy in dys) or proto.op_type in NON_DIFFERENTIABLE:
            continue
        if index in swish:  # its Sigmoid then gets no cotangent and is passed over
            x, s = swish[index]
            cotangents.setdefault(x, []).append(swish_vjp(op, x, s, proto.output[0], dys[0]))
            continue
        node = Node.from_proto(proto)
        node.inputs = [_weight(op, info, x, weights, wide) for x in node.inputs]
        if wide:
            node.inputs = [_float32(op, info, x, widened) for x in node.inputs]
            node.outputs = [_float32(op, info, y, widened) for y in node.outputs]
        else:
            node.outputs = _unfused_outputs(op, info, proto)
            if node.op_type not in QUANTIZING:  # float rules see the integers' float copies
                node.inputs = [_real(op, info, x, differentiable, widened,
                                     node.op_type == "Cast") for x in node.inputs]
                node.outputs = [_real(op, info, y, differentiable, widened)
                                for y in node.outputs]
        rule = VJP_RULES.get(node.op_type)
        if rule is None or proto.domain not in ("", "ai.onnx") and not (
                proto.domain == "com.microsoft" and node.op_type in QUANTIZING):
            raise UnsupportedOpError(
                f"op {node.op_type} (node {node.name or proto.output[0]!r}) has no gradient rule; "
                f"pick a target layer after it with --layer (see `onnx-gradcam inspect`)",
                proto.output[0])
        try:
            dxs = rule(op, node, dys)
        except ValueError as exc:
            raise UnsupportedOpError(
                f"op {node.op_type} (node {node.name or proto.output[0]!r}): {exc}; "
                f"pick a target layer after it with --layer", proto.output[0]) from None
        for i, x in enumerate(proto.input):
            if x in quantized_elsewhere and i < len(dxs) and dxs[i] is not None:
                raise UnsupportedOpError(
                    f"op {node.op_type} (node {node.name!r}): input {x!r} is a quantized tensor "
                    f"made by {info.op_of(x)}, which has no quantized gradient rule",
                    proto.output[0])
            if x not in differentiable:
                continue
            dx = dxs[i] if i < len(dxs) else None
            if dx is None:
                raise UnsupportedOpError(
                    f"op {node.op_type} (node {node.name!r}): input {i} ({x!r}) lies on the path "
                    f"from the target layer but its rule does not differentiate it",
                    proto.output[0])
            cotangents.setdefault(x, []).append(dx)

    total = _total(op, cotangents.get(activation))
    if total is None:
        raise OnnxGradCamError(f"the score {score!r} does not depend on tensor {activation!r}")
    gradient = op.Cast(total, to=onnx.TensorProto.FLOAT16) if wide else op.Identity(total)
    nodes = live_nodes(op.nodes, [gradient])
    read = {i for n in nodes for i in n.input}
    inits = [t for t in op.initializers if t.name in read]
    kept = {o for n in nodes for o in n.output} | {seed}
    values = shaped_values(op, info, kept)
    if wide:  # the shortcuts' tensors are float32; their fp16 consumers do without them
        return GradientGraph(nodes, inits, gradient, [info.nodes[i].op_type for i in head],
                             value_info=values)
    return GradientGraph(nodes, inits, gradient, [info.nodes[i].op_type for i in head],
                         op.broadcasts.get(total),
                         {t: dy for t, dy in totals.items() if dy in kept}, values)


def shaped_values(op: Emitter, info: GraphInfo, kept: set[str]) -> list[onnx.ValueInfoProto]:
    """Value infos of the emitted tensors in ``kept`` known to have a forward tensor's shape
    (:attr:`Emitter.shaped_like`), with that tensor's inferred sizes, symbolic names included.
    ONNX Runtime's own inference names a cotangent's batch size anew (it comes from the
    seed, not from the input); where it knows that a cotangent and the forward activation it
    is multiplied with have equal shapes, it runs the product in the blocked (NCHWc) layout
    of the convolutions around it instead of reordering both to plain NCHW."""
    out = []
    for name, like in op.shaped_like.items():
        value = info.values.get(like)
        if name in kept and value is not None and value.type.tensor_type.HasField("shape"):
            declared = onnx.ValueInfoProto()
            declared.CopyFrom(value)
            declared.name = name
            declared.type.tensor_type.elem_type = op.float_type
            out.append(declared)
    return out


def _weight(op: Emitter, info: GraphInfo, name: str, weights: dict[str, str],
            wide: bool) -> str:
    """``name``, or where a DequantizeLinear makes it from constants (a QDQ model's weight), a
    constant of its value, made once. The forward's DequantizeLinear then feeds only the node
    unit ONNX Runtime fuses it into (QLinearConv, QGemm): a backward that read it too would
    make ONNX Runtime run a float copy of the weight on every call."""
    if name in weights:
        return weights[name]
    index = info.producer.get(name)
    proto = info.nodes[index] if index is not None else None
    if (proto is None or proto.op_type != "DequantizeLinear" or proto.domain not in ("", "ai.onnx")
            or any(a.name == "block_size" and a.i for a in proto.attribute)
            or not all(i in info.constants and i not in info.overridable
                       for i in proto.input if i)):
        return name
    q, scale, *zero_point = (info.constants[i] for i in proto.input if i)
    axis = next((a.i for a in proto.attribute if a.name == "axis"), 1)
    value = dequantize(q, scale, zero_point[0] if zero_point else None, axis)
    if wide and value.dtype == np.float16:
        value = value.astype(np.float32)
    if value.dtype != op.dtype:
        return name
    weights[name] = op.const(value)
    op.know_shape(weights[name], value.shape)
    return weights[name]


def _unfused_outputs(op: Emitter, info: GraphInfo, proto: onnx.NodeProto) -> list[str]:
    """``proto``'s outputs as its rule reads them. Where only QuantizeLinear nodes consume them,
    they are the float result of a QDQ node unit that ONNX Runtime fuses into one integer kernel
    (QLinearSigmoid, QLinearConv, …); a rule that read them would give them a second consumer and
    stop the fusion, so the forward would leave the deployed kernel. A copy of the node computes
    them again for the rule instead (dropped with the rule's other unused nodes where it reads
    none)."""
    consumers = info.consumers
    if (proto.op_type in QUANTIZING or proto.op_type == "DequantizeLinear"
            or proto.domain not in ("", "ai.onnx") or not all(
                o and consumers.get(o) and all(info.nodes[c].op_type == "QuantizeLinear"
                                               for c in consumers[o]) for o in proto.output)):
        return list(proto.output)
    copy = onnx.NodeProto()
    copy.CopyFrom(proto)
    copy.name = op.fresh(f"{proto.op_type}_again_node")
    del copy.output[:]
    for name in proto.output:
        again = op.fresh(f"{proto.op_type}_again")
        copy.output.append(again)
        op.know_shape(again, info.shapes.get(name))
    op.nodes.append(copy)
    return list(copy.output)


def _float32(op: Emitter, info: GraphInfo, name: str, widened: dict[str, str]) -> str:
    """A float32 copy of the fp16 forward tensor ``name`` (a constant for a weight), made
    once; other tensors as they are."""
    if not name or info.elem_types.get(name) != onnx.TensorProto.FLOAT16:
        return name
    if name not in widened:
        value = info.constant(name)
        widened[name] = (op.const(value.astype(np.float32)) if value is not None
                         else op.Cast(name, to=op.float_type))
        op.know_shape(widened[name], info.shapes.get(name))
    return widened[name]


def swish_units(info: GraphInfo, head: list[int]) -> dict[int, tuple[str, str]]:
    """{index of Mul: (x, s)} for the head's x·σ(x) units (SiLU/Swish as exporters write it)
    whose s = Sigmoid(x) feeds only that Mul, for :func:`swish_vjp`; float tensors only."""
    units = {}
    for index in head:
        node = info.nodes[index]
        if node.op_type != "Mul" or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
            continue
        for x, s in (tuple(node.input), tuple(reversed(node.input))):
            made = info.producer.get(s)
            sigmoid = info.nodes[made] if made is not None else None
            if (sigmoid is not None and sigmoid.op_type == "Sigmoid" and x != s
                    and sigmoid.domain in ("", "ai.onnx") and list(sigmoid.input) == [x]
                    and info.consumers.get(s) == [index]
                    and info.elem_types.get(x) in (onnx.TensorProto.FLOAT,
                                                   onnx.TensorProto.DOUBLE)):
                units[index] = (x, s)
                break
    return units


def _differentiable(info: GraphInfo, activation: str, head: list[int]) -> set[str]:
    """The head's tensors that carry a cotangent: results of differentiable ops with an input
    that carries one — float results, the integer result of a quantizing op, an
    integer-preserving op's integer result. A head node reached only through Shape and other
    index results (a mask a Swin block builds from its input's size) carries none and needs no
    rule."""
    differentiable = {activation}
    for i in head:
        node = info.nodes[i]
        if node.op_type in NON_DIFFERENTIABLE or not any(
                x in differentiable for x in info.node_inputs[i]):
            continue
        integer = node.op_type in QUANTIZING or (node.op_type in INTEGER_PRESERVING
                                                 and node.input[0] in differentiable)
        differentiable.update(o for k, o in enumerate(node.output)
                              if _is_float(info, o) or integer and k == 0)
    return differentiable


def _real(op: Emitter, info: GraphInfo, name: str, differentiable: set[str],
          copies: dict[str, str], type_only: bool = False) -> str:
    """A float copy of the integer tensor ``name`` where it carries a cotangent: its cotangent
    is a float (with respect to the real number it stands for), and the rule of an
    integer-preserving op reads values and shapes; ``type_only`` (a Cast's rule, which casts
    the cotangent back to its input's type) a float stand-in. Other tensors as they are."""
    if name not in differentiable or info.elem_types.get(name) not in INTEGERS:
        return name
    if type_only:  # a float number of the same type: nothing to compute per call
        return op.const(np.zeros((), op.dtype))
    if name not in copies:
        copies[name] = op.Cast(name, to=op.float_type)
        op.know_shape(copies[name], info.shapes.get(name))
    return copies[name]


def _is_float(info: GraphInfo, name: str) -> bool:
    elem = info.elem_types.get(name)
    return elem is None or elem in FLOAT_TYPES


FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                onnx.TensorProto.BFLOAT16}


SMALL_INTEGERS = {onnx.TensorProto.UINT8, onnx.TensorProto.INT8, onnx.TensorProto.UINT16,
                  onnx.TensorProto.INT16, onnx.TensorProto.UINT4, onnx.TensorProto.INT4}
#: integer tensors that may carry a cotangent (ConvInteger and MatMulInteger accumulate in int32)
INTEGERS = SMALL_INTEGERS | {onnx.TensorProto.INT32}


def _total(op: Emitter, parts: list[str] | None) -> str | None:
    """The sum of a tensor's cotangents. A part that broadcasts a smaller tensor
    (:meth:`Emitter.broadcast`: a squeeze-excite block's pooling VJP) is added as that tensor,
    the Add broadcasting it, where another part has the full shape: the broadcast is then
    never written out and read back."""
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    full = [p for p in parts if p not in op.broadcasts]
    if not full:
        return op.Sum(*parts)
    total = full[0] if len(full) == 1 else op.Sum(*full)
    for part in parts:
        if part in op.broadcasts:
            total = op.Add(total, op.broadcasts[part][0])
    return total


def resolve_targets(op: Emitter, score2d: str, target: str | None, classes: int | None = None,
                    ranks: bool = True) -> str:
    """Class indices (M,) for int64 ``target`` (M,) over scores (M, C): a target ≥ 0 is a class;
    −r picks the class ranked r-th by score (−1 = argmax, −2 = runner-up, …). A static class
    count ``classes`` saves the shape arithmetic. Without ``ranks`` only −1 (argmax) and class
    indices are understood: one ArgMax instead of a full sort and a gather; with no ``target``
    at all, each sample's argmax."""
    if target is None:
        return op.ArgMax(score2d, axis=1, keepdims=0)
    if not ranks:
        best = op.ArgMax(score2d, axis=1, keepdims=0)
        return op.Where(op.Less(target, op.const(0)), best, target)
    count = op.const([classes]) if classes else op.Gather(op.Shape(score2d), op.const([1]))
    _, ranked = op.TopK(score2d, count, axis=1, largest=1, sorted=1, outputs=2)
    rank = op.Sub(op.const(-1), target)  # −1 → 0, −2 → 1, …
    by_rank = op.squeeze(op.GatherElements(ranked, op.unsqueeze(op.Max(rank, op.const(0)), [1]),
                                           axis=1), [1])
    return op.Where(op.Less(target, op.const(0)), by_rank, target)


def seed_one_hot(op: Emitter, score2d: str, target: str | None, classes: int | None = None,
                 ranks: bool = True) -> tuple[str, str]:
    """One-hot cotangent (M, C) for the targets of :func:`resolve_targets`.

    Returns (seed, resolved targets).
    """
    resolved = resolve_targets(op, score2d, target, classes, ranks)
    if classes and op.dtype == np.float32:  # one node; ORT has no double OneHot kernel
        values = op.const(np.array([0, 1], dtype=np.float32))
        return op.OneHot(resolved, op.const(classes), values, axis=-1), resolved
    if classes:
        indices = op.const(np.arange(classes, dtype=np.int64))
    else:
        indices = op.Range(op.const(0), op.Gather(op.Shape(score2d), op.const(1)), op.const(1))
    hot = op.Equal(op.unsqueeze(resolved, [1]), indices)
    seed = op.Cast(hot, to=op.float_type)
    return seed, resolved
