"""Shape and indexing ops: reshapes, transposes, concatenation, slicing, gathering, padding.

Index-moving ops share one trick: run the op on an "iota" (each element's flat index in ``x``)
to learn where every output element came from, then scatter-add ``dy`` back to those places.
"""

from __future__ import annotations

import numpy as np

from onnx_gradcam.autodiff.emitter import Emitter, Node, Value
from onnx_gradcam.autodiff.registry import vjp
from onnx_gradcam.autodiff.rules._common import (
    Dys,
    crop,
    iota,
    pad_back,
    scatter_add_flat,
    unbroadcast,
)


@vjp("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """dx = Reshape(dy, Shape(x))"""
    return [op.reshape_like(dys[0], node.inputs[0])] + [None] * (len(node.inputs) - 1)


@vjp("Transpose")
def transpose_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """dx = Transpose(dy, perm⁻¹) (a Reshape where only unit axes move)"""
    x = node.inputs[0]
    perm = node.attr("perm") or list(reversed(range(op.rank(x))))
    return [op.transpose_like(dys[0], [int(i) for i in np.argsort(perm)], x)]


@vjp("Expand")
def expand_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """dx = dy summed over the broadcast axes"""
    return [unbroadcast(op, dys[0], node.inputs[0], node.outputs[0]), None]


@vjp("Concat")
def concat_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """dx_i = the slice of dy that x_i filled: Split(dy, sizes along axis)"""
    axis = int(node.attr("axis")) % op.rank(node.outputs[0])
    sizes = op.Concat(*[op.dims(x, axis, axis + 1) for x in node.inputs], axis=0)
    if len(node.inputs) == 1:
        return [dys[0]]
    parts = op.Split(dys[0], sizes, axis=axis, outputs=len(node.inputs))
    return list(parts)


@vjp("Split")
def split_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """dx = Concat(dy_i along axis), zeros for outputs that got no gradient"""
    axis = int(node.attr("axis", 0))
    parts = [dy if dy is not None else op.zeros_like(y) for dy, y in zip(dys, node.outputs)]
    return [op.Concat(*parts, axis=axis)] + [None] * (len(node.inputs) - 1)


@vjp("Slice")
def slice_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """dx = scatter of dy to the positions the slice read (any starts/ends/axes/steps); a
    constant step-1 slice of static axes is dy zero-padded back into place"""
    x = node.inputs[0]
    dx = _slice_pad(op, node, dys[0])
    if dx is None:
        picked = (op.Slice(iota(op, x), *node.inputs[1:]) if op.opset >= 10
                  else op.Slice(iota(op, x), **node.attrs))
        dx = scatter_add_flat(op, x, picked, dys[0])
    return [dx] + [None] * (len(node.inputs) - 1)


def _slice_pad(op: Emitter, node: Node, dy: Value) -> Value | None:
    """Slice's :func:`pad_back` form, where its axes and steps are constants, every step is 1
    and every start a constant that is ≥ 0 (so the block starts there; its length is the
    output's)."""
    x, rank = node.inputs[0], op.known_rank(node.inputs[0])
    if op.opset < 10 or rank is None:
        return None
    starts, axes, steps = (op.value_of(node.input(i)) if node.input(i) else None
                           for i in (1, 3, 4))
    if starts is None or (node.input(3) and axes is None) or (
            node.input(4) and steps is None) or (steps is not None and (steps != 1).any()):
        return None
    axes = range(len(starts)) if axes is None else [int(a) % rank for a in axes]
    size = op.shape(x) or (None,) * rank
    spans: dict[int, tuple[int, int | str]] = {}
    for axis, start in zip(axes, starts.tolist()):
        if start < 0 or (size[axis] is not None and start >= size[axis]):
            return None
        spans[axis] = (int(start), node.outputs[0])
    return pad_back(op, x, dy, spans)


@vjp("Gather")
def gather_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """dx = scatter-add of dy to the gathered positions (repeated indices add up); a constant
    index, or a run of consecutive ones, is dy zero-padded back into place"""
    x, indices = node.inputs
    axis = int(node.attr("axis", 0))
    dx = _gather_pad(op, x, op.value_of(indices), axis, dys[0])
    if dx is None:
        picked = op.Gather(iota(op, x), indices, axis=axis)
        dx = scatter_add_flat(op, x, picked, dys[0])
    return [dx, None]


def _gather_pad(op: Emitter, x: str, indices: np.ndarray | None, axis: int,
                dy: Value) -> Value | None:
    """Gather's :func:`pad_back` form, for a constant index or a run of consecutive ones (each
    ≥ 0 where ``x``'s dim on the axis is unknown)."""
    if indices is None or indices.ndim > 1 or not indices.size:
        return None
    rank = op.known_rank(x)
    if rank is not None:
        axis %= rank
    shape = op.shape(x)
    size = shape[axis] if shape is not None and axis >= 0 else None
    taken = indices.reshape(-1).astype(np.int64)
    if size is not None:
        taken = np.where(taken < 0, taken + size, taken)
    if (np.diff(taken) != 1).any() or taken[0] < 0 or (size is not None and taken[-1] >= size):
        return None
    if indices.ndim == 0:  # Gather dropped the axis
        if axis < 0:
            return None
        dy = op.unsqueeze(dy, [axis])
    return pad_back(op, x, dy, {axis: (int(taken[0]), len(taken))})


@vjp("GatherElements")
def gather_elements_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """dx = ScatterElements(zeros(shape(x)), idx, dy, reduction=add)"""
    x, indices = node.inputs
    dx = op.ScatterElements(op.zeros_like(x), indices, dys[0],
                            axis=int(node.attr("axis", 0)), reduction="add")
    return [dx, None]


@vjp("Pad")
def pad_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """Constant padding: dx = Pad(dy, −pads), the padded border cropped off again (a negative
    pad crops, so pads that cropped x pad dy with zeros). Other modes: scatter-add of dy from
    each padded position's source."""
    x = node.inputs[0]
    mode = node.attr("mode", "constant")
    if op.opset < 11:
        raise ValueError(f"Pad {node.name!r}: opsets before 11 are not supported")
    rest = [None] * (len(node.inputs) - 1)
    if mode == "constant":
        pads, axes = node.inputs[1], node.input(3)
        known, axes_known = op.value_of(pads), op.value_of(axes)
        if known is not None and (axes is None or axes_known is not None):
            rank = op.rank(x)
            full = np.zeros(2 * rank, dtype=np.int64)
            chosen = range(rank) if axes is None else [int(a) % rank for a in axes_known]
            for i, a in enumerate(chosen):
                full[a], full[rank + a] = known[i], known[len(known) // 2 + i]
            return [crop(op, dys[0], full)] + rest
        # pads computed at run time: a negative pad crops (ONNX Pad; ONNX Runtime has it)
        return [op.Pad(dys[0], op.Neg(pads), *(["", axes] if axes else []))] + rest
    extra = [i or "" for i in node.inputs[1:]]
    extra[1:2] = [""] * len(extra[1:2])  # no fill value: ignored by these modes, and a float
    while extra and not extra[-1]:
        extra.pop()
    source = op.Pad(iota(op, x), *extra, mode=mode)
    return [scatter_add_flat(op, x, source, dys[0])] + rest
