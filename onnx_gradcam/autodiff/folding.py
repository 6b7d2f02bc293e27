"""Rewrites at emission time that move per-run work onto constants ONNX Runtime folds once,
when the session loads. They read the nodes already emitted; the :class:`Emitter` only builds."""

from __future__ import annotations

import numpy as np
import onnx

from onnx_gradcam.autodiff.emitter import Emitter, Value

#: the most values a constant is copied for (scaled once at load, :func:`scale`): a head's
#: 1×1-conv weight, not a VGG fc layer
FOLD_LIMIT = 4 * 2**20


def scale(op: Emitter, x: Value, op_type: str, factor: float) -> Value:
    """``x`` ``op_type`` (Mul or Div) a constant ``factor``. Where ``x`` is rows gathered from
    a constant matrix (:meth:`Emitter.rows_product`), or a product a·B with a constant B
    (reshaped or not), the matrix is scaled instead, so the scaling costs nothing per run (the
    1/(h·w) of an average-pooling head)."""
    source = producer(op, x)
    if (source is not None and source.op_type == "Gather" and _axis(source) == 0
            and foldable(op, source.input[0])):
        matrix = op.emit(op_type, source.input[0], factor)
        return op.emit("Gather", matrix, source.input[1], axis=0)
    reshapes = []  # x = Reshape(…(MatMul(a, B))) with a constant B: a·(B·factor), reshaped
    while source is not None and source.op_type == "Reshape":
        reshapes.append(source.input[1])
        source = producer(op, source.input[0])
    if (source is not None and source.op_type == "MatMul" and foldable(op, source.input[1])
            and constant_size(op, source.input[1]) <= FOLD_LIMIT):
        out = op.emit("MatMul", source.input[0], op.emit(op_type, source.input[1], factor))
        for shape in reversed(reshapes):
            out = op.emit("Reshape", out, shape)
        return out
    return op.emit(op_type, x, factor)


def foldable(op: Emitter, name: str) -> bool:
    """Whether ``name`` is a forward constant, or computed by emitted nodes from constants
    only (a value ONNX Runtime's constant folding computes once)."""
    if name in op.constants:
        return name not in op.overridable
    if op.value_of(name) is not None:
        return True
    source = producer(op, name)
    return source is not None and all(foldable(op, i) for i in source.input if i)


def constant_size(op: Emitter, name: str) -> int:
    """How many values a foldable tensor holds (its largest constant source's count)."""
    if name in op.constants:
        shape = op.shape(name)
        return int(np.prod(shape)) if shape is not None else int(op.constants[name].size)
    value = op.value_of(name)
    if value is not None:
        return int(value.size)
    source = producer(op, name)
    return max((constant_size(op, i) for i in source.input if i), default=0) if (
        source is not None) else 0


def producer(op: Emitter, name: str) -> onnx.NodeProto | None:
    """The emitted node that computes ``name``, or None."""
    return next((n for n in reversed(op.nodes) if name in n.output), None)


def _axis(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 0)


def channel_scale(op: Emitter, dy: Value, rank: int) -> tuple[Value, np.ndarray] | None:
    """(d, c) where ``dy`` (rank ``rank``, channels on axis 1) is d times a forward constant
    that scales each channel alike, c (C,) or (1,): the cotangent of a conv's output that
    feeds a batch norm's scale (tf2onnx writes it as a Mul, also on the NHWC side of a
    Transpose). A conv's backward can take c into its weight, a constant ONNX Runtime folds
    once, instead of a pass over dy per call. None where ``dy`` is no such product."""
    source, perm = producer(op, dy), None
    if source is not None and source.op_type == "Transpose":
        perm = next((list(a.ints) for a in source.attribute if a.name == "perm"), None)
        source = producer(op, source.input[0]) if perm and len(perm) == rank else None
    if source is None or source.op_type != "Mul" or len(source.input) != 2:
        return None
    axis = perm[1] if perm else 1  # the Mul's axis that becomes dy's channels
    for d, c in (source.input, reversed(source.input)):
        value = op.value_of(c) if c not in op.overridable else None
        scale = per_channel(value, rank, axis)
        if scale is not None and np.dtype(value.dtype) == np.dtype(op.dtype):
            return (op.Transpose(d, perm=perm) if perm else d), scale
    return None


def per_channel(value: np.ndarray | None, rank: int, axis: int) -> np.ndarray | None:
    """``value`` flattened, (C,) or (1,), where it broadcasts against a rank-``rank`` tensor
    as one factor per index of ``axis`` (a batch norm's scale); None otherwise."""
    if value is None or value.ndim > rank:
        return None
    shape = (1,) * (rank - value.ndim) + value.shape
    return value.reshape(-1) if all(s == 1 for i, s in enumerate(shape) if i != axis) else None
