"""Kink decisions of a head, and which of them sit on a knife edge.

A ReLU network's gradient is piecewise constant in the decisions its forward takes: which side
of zero each ReLU input lies on, which input a Max/MaxPool routes its cotangent to, which
branch a Where takes. A decision whose operand lies within float32 rounding of its threshold
may be taken the other way by another float32 implementation (another CPU, ONNX Runtime's
NCHWc kernels at ``ORT_ENABLE_ALL``, TensorFlow), and the gradient then jumps by that element's
cotangent. :data:`KINKS` says, per op type, what the decisions and their margins are;
:func:`knife_edges` counts the decisions within :data:`ROUNDING` of their threshold.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnx_gradcam.autodiff.rules._common import same_pads
from onnx_gradcam.graph import GraphInfo, attr

#: "Within float32 rounding" of a threshold: |margin| ≤ ROUNDING · depth · scale, where scale is
#: the largest |operand| of that sample's tensor (a cheap stand-in for the magnitudes the operand
#: was accumulated from) and depth counts the accumulating ops (Conv, Gemm, MatMul) it comes
#: through from the input, plus one: each adds rounding of a few eps32 relative to the tensor's
#: magnitude. About four times the largest per-depth float32-vs-float64 difference of the kink
#: operands measured on the models in the tests (see the commit that set it).
ROUNDING = 8.0 * float(np.finfo(np.float32).eps)
#: ops that accumulate (sum many products): each is one unit of ``depth`` above
ACCUMULATING = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
#: A map is flagged (one warning line per image in ``run``) when :attr:`KnifeEdges.shift`
#: exceeds this: a flip could then move the gradient by more than 1 %.
WARN_SHIFT = 1e-2


@dataclass(frozen=True)
class Decisions:
    """The decisions of one kink node: ``choice`` (an int per decision: which side of the
    threshold or which input won), ``margin`` (its distance to the nearest threshold, ≥ 0,
    ``inf`` where there is no choice) and ``scale`` (per sample, the operand's largest |value|).
    ``choice`` and ``margin`` are laid out like the cotangent that a flip would reroute."""

    choice: np.ndarray
    margin: np.ndarray
    scale: np.ndarray


def _per_sample_max(*arrays: np.ndarray) -> np.ndarray:
    n = max(a.shape[0] if a.ndim else 1 for a in arrays)
    parts = [np.abs(np.broadcast_to(a, (n, *a.shape[1:]) if a.ndim else (n,))).reshape(n, -1)
             for a in arrays]
    return np.max([p.max(axis=1) if p.shape[1] else np.zeros(n) for p in parts], axis=0)


def _thresholds(x: np.ndarray, *levels: float | np.ndarray) -> Decisions:
    """Decisions of an element-wise op with kinks at ``levels``."""
    x = np.asarray(x, dtype=np.float64)
    choice = np.zeros(x.shape, dtype=np.int64)
    margin = np.full(x.shape, np.inf)
    for i, level in enumerate(levels):
        choice += (x > level).astype(np.int64) << i
        margin = np.minimum(margin, np.abs(x - level))
    return Decisions(choice, margin, _per_sample_max(x))


def _top_two(values: np.ndarray, sign: float, scale: np.ndarray) -> Decisions:
    """Decisions of a max (``sign`` 1) or min (−1) over the last axis of ``values``."""
    v = sign * np.asarray(values, dtype=np.float64)
    if v.shape[-1] < 2:
        return Decisions(np.zeros(v.shape[:-1], np.int64), np.full(v.shape[:-1], np.inf), scale)
    top = np.sort(v, axis=-1)[..., -2:]
    return Decisions(np.argmax(v, axis=-1), top[..., 1] - top[..., 0], scale)


def _pool_windows(x: np.ndarray, node: onnx.NodeProto) -> np.ndarray:
    """MaxPool's windows of ``x`` (N, C, *spatial): (N, C, *out, kernel size), −inf padded."""
    kernel = [int(k) for k in attr(node, "kernel_shape", [])]  # type: ignore[union-attr]
    r = len(kernel)
    strides = [int(s) for s in attr(node, "strides", [1] * r)]  # type: ignore[union-attr]
    dilations = [int(d) for d in attr(node, "dilations", [1] * r)]  # type: ignore[union-attr]
    size = x.shape[2:]
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    auto_pad = attr(node, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = same_pads(auto_pad, size, strides, span)
        pads = begin + end
    elif auto_pad == "VALID":
        pads = [0] * 2 * r
    else:
        pads = [int(p) for p in attr(node, "pads", [0] * 2 * r)]  # type: ignore[union-attr]
    ceil = int(attr(node, "ceil_mode", 0))  # type: ignore[arg-type]
    out, extra = [], []
    for n, s, k, b, e in zip(size, strides, span, pads[:r], pads[r:]):
        length = n + b + e - k
        count = (-(-length // s) if ceil else length // s) + 1
        if ceil and (count - 1) * s >= n + b:  # a last window starting in the end padding
            count -= 1
        out.append(count)
        extra.append(max((count - 1) * s + k - (n + b + e), 0))
    padding = [(0, 0), (0, 0)] + [(b, e + x_) for b, e, x_ in zip(pads[:r], pads[r:], extra)]
    padded = np.pad(np.asarray(x, np.float64), padding, constant_values=-np.inf)
    windows = np.lib.stride_tricks.sliding_window_view(padded, span, axis=tuple(range(2, 2 + r)))
    index = tuple(slice(0, (c - 1) * s + 1, s) for c, s in zip(out, strides))
    windows = windows[(slice(None), slice(None), *index)]
    windows = windows[(Ellipsis, *(slice(None, None, d) for d in dilations))]
    return windows.reshape(*windows.shape[:2 + r], -1)


def _reduced(x: np.ndarray, node: onnx.NodeProto, inputs: Sequence[np.ndarray]) -> np.ndarray:
    """The values each output of a ReduceMax/ReduceMin takes its extreme over, on the last axis,
    laid out like the output."""
    axes = attr(node, "axes", None)
    if axes is None and len(inputs) > 1 and inputs[1] is not None and np.size(inputs[1]):
        axes = np.asarray(inputs[1]).reshape(-1).tolist()
    if axes is None or not len(axes):  # type: ignore[arg-type]
        if int(attr(node, "noop_with_empty_axes", 0)):  # type: ignore[arg-type]
            return x[..., None]
        axes = list(range(x.ndim))
    axes = sorted(int(a) % x.ndim for a in axes)  # type: ignore[union-attr]
    keep = [a for a in range(x.ndim) if a not in axes]
    moved = np.transpose(x, keep + axes)
    values = moved.reshape(*moved.shape[:len(keep)], -1)
    if int(attr(node, "keepdims", 1)):  # type: ignore[arg-type]
        shape = [1 if a in axes else x.shape[a] for a in range(x.ndim)]
        values = values.reshape(*shape, values.shape[-1])
    return values


def _clip(node: onnx.NodeProto, inputs: Sequence[np.ndarray]) -> Decisions:
    x = inputs[0]
    low = inputs[1] if len(inputs) > 1 and inputs[1] is not None else attr(node, "min", None)
    high = inputs[2] if len(inputs) > 2 and inputs[2] is not None else attr(node, "max", None)
    return _thresholds(x, *[np.asarray(b, np.float64) for b in (low, high) if b is not None])


def _max_min(sign: float) -> Callable[[onnx.NodeProto, Sequence[np.ndarray]], Decisions]:
    def decisions(node: onnx.NodeProto, inputs: Sequence[np.ndarray]) -> Decisions:
        stacked = np.stack(np.broadcast_arrays(*[np.asarray(i, np.float64) for i in inputs]), -1)
        return _top_two(stacked, sign, _per_sample_max(*inputs))
    return decisions


def _reduce(sign: float) -> Callable[[onnx.NodeProto, Sequence[np.ndarray]], Decisions]:
    def decisions(node: onnx.NodeProto, inputs: Sequence[np.ndarray]) -> Decisions:
        return _top_two(_reduced(inputs[0], node, inputs), sign, _per_sample_max(inputs[0]))
    return decisions


def _comparison(node: onnx.NodeProto, inputs: Sequence[np.ndarray]) -> Decisions:
    a, b = (np.asarray(i, np.float64) for i in inputs[:2])
    d = _thresholds(a - b, 0.0)
    return Decisions(d.choice, d.margin, _per_sample_max(a, b))


def _hard_sigmoid(node: onnx.NodeProto, inputs: Sequence[np.ndarray]) -> Decisions:
    alpha = float(attr(node, "alpha", 0.2))  # type: ignore[arg-type]
    beta = float(attr(node, "beta", 0.5))  # type: ignore[arg-type]
    return _thresholds(inputs[0], -beta / alpha, (1 - beta) / alpha)


def _shrink(node: onnx.NodeProto, inputs: Sequence[np.ndarray]) -> Decisions:
    lambd = float(attr(node, "lambd", 0.5))  # type: ignore[arg-type]
    return _thresholds(inputs[0], -lambd, lambd)


def _at_zero(node: onnx.NodeProto, inputs: Sequence[np.ndarray]) -> Decisions:
    return _thresholds(inputs[0], 0.0)


KinkRule = Callable[[onnx.NodeProto, Sequence[np.ndarray]], Decisions]
#: Op types whose gradient is discontinuous in their operands, and their decisions (from the
#: node and its input values). Exact ties and exact zeros are excluded by :func:`knife_edges`:
#: they come from exact arithmetic (sums of zeros, copies) that every implementation repeats.
KINKS: dict[str, KinkRule] = {
    **dict.fromkeys(["Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Abs"], _at_zero),
    "ThresholdedRelu": lambda node, inputs: _thresholds(
        inputs[0], float(attr(node, "alpha", 1.0))),  # type: ignore[arg-type]
    "HardSwish": lambda node, inputs: _thresholds(inputs[0], -3.0, 3.0),
    "HardSigmoid": _hard_sigmoid,
    "Shrink": _shrink,
    "Clip": _clip,
    "Max": _max_min(1.0),
    "Min": _max_min(-1.0),
    "MaxPool": lambda node, inputs: _top_two(_pool_windows(inputs[0], node), 1.0,
                                             _per_sample_max(inputs[0])),
    "GlobalMaxPool": lambda node, inputs: _top_two(
        np.asarray(inputs[0]).reshape(*np.shape(inputs[0])[:2], 1, 1, -1), 1.0,
        _per_sample_max(inputs[0])),
    "ReduceMax": _reduce(1.0),
    "ReduceMin": _reduce(-1.0),
    **dict.fromkeys(["Greater", "Less", "GreaterOrEqual", "LessOrEqual"], _comparison),
}


@dataclass(frozen=True)
class KinkNode:
    """A kink node of a head: which of its inputs are tensors to fetch (None: a constant, in
    ``constants``) and which cotangent a flip of its decisions reroutes (its output's; for a
    comparison, that of the Where it steers; None where there is none)."""

    node: onnx.NodeProto
    inputs: list[str | None]
    constants: dict[int, np.ndarray]
    cotangent: str | None
    depth: int = 1  # accumulating ops from the input to this node, plus one (see ROUNDING)

    def decisions(self, values: Mapping[str, np.ndarray]) -> Decisions:
        inputs = [self.constants[i] if name is None else values[name]
                  for i, name in enumerate(self.inputs)]
        return KINKS[self.node.op_type](self.node, inputs)


def kink_nodes(info: GraphInfo, head: Sequence[int], cotangents: Mapping[str, str]
               ) -> list[KinkNode]:
    """The kink nodes of ``head`` (node indices), with the names of their cotangents in a
    gradient graph (``cotangents``: head tensor → its total cotangent)."""
    out = []
    for index in head:
        node = info.nodes[index]
        if node.op_type not in KINKS or node.domain not in ("", "ai.onnx"):
            continue
        names: list[str | None] = []
        constants = {}
        for i, name in enumerate(node.input):
            if name and name in info.constants:
                names.append(None)
                constants[i] = info.constants[name]
            elif name:
                names.append(name)
            else:
                names.append(None)
                constants[i] = None  # type: ignore[assignment]
        steered = node.output[0]
        if node.op_type in _COMPARISONS:
            where = [info.nodes[c] for c in info.consumers.get(steered, [])
                     if info.nodes[c].op_type == "Where" and info.nodes[c].input[0] == steered]
            steered = where[0].output[0] if where else ""
        depth = 1 + sum(info.nodes[i].op_type in ACCUMULATING for i in info.ancestors(
            node.input[0]))
        out.append(KinkNode(node, names, constants, cotangents.get(steered), depth))
    return out


_COMPARISONS = {"Greater", "Less", "GreaterOrEqual", "LessOrEqual"}


@dataclass
class KnifeEdges:
    """Per sample: ``count`` of the decisions between the layer and the score that lie within
    float32 rounding of their threshold (:data:`ROUNDING`) and carry a cotangent, and ``shift``,
    how far the gradient could move if they flipped, as a first-order estimate: Σ over kink
    tensors of ‖cotangent on the knife-edge elements‖ / ‖cotangent of the tensor‖ (for a ReLU
    right after the layer, a lower bound of ‖Δgradient‖ / ‖gradient‖ and usually equal to it).
    ``ops`` names the op types holding them; ``flips`` (filled by a comparison against a float64
    forward, as :func:`onnx_gradcam.verify.verify` does) counts decisions taken differently."""

    count: np.ndarray
    shift: np.ndarray
    ops: list[list[str]] = field(default_factory=list)
    flips: np.ndarray | None = None

    def flagged(self, i: int) -> bool:
        return bool(self.count[i]) and float(self.shift[i]) > WARN_SHIFT

    def as_dict(self, i: int) -> dict:
        out = {"count": int(self.count[i]), "shift": float(self.shift[i]),
               "ops": sorted(set(self.ops[i])) if self.ops else []}
        if self.flips is not None:
            out["flips_vs_float64"] = int(self.flips[i])
        return out


def knife_edges(kinks: Sequence[KinkNode], values: Mapping[str, np.ndarray], n: int
                ) -> KnifeEdges:
    """Count the knife-edge decisions of ``kinks`` in a batch of ``n`` whose forward tensors and
    cotangents are ``values`` (by name)."""
    count = np.zeros(n, np.int64)
    shift = np.zeros(n)
    ops: list[list[str]] = [[] for _ in range(n)]
    for kink in kinks:
        d = kink.decisions(values)
        if d.choice.ndim == 0 or d.choice.shape[0] != n:
            continue
        tolerance = ROUNDING * kink.depth * d.scale.reshape(-1, *[1] * (d.margin.ndim - 1))
        near = (d.margin > 0) & (d.margin <= tolerance)
        dy = values.get(kink.cotangent) if kink.cotangent else None
        if dy is not None and dy.size == near.size:
            dy = np.abs(np.asarray(dy, np.float64)).reshape(near.shape)
            near &= dy > 0
        else:
            dy = None
        per = near.reshape(n, -1).sum(axis=1)
        count += per
        for i in np.flatnonzero(per):
            ops[i].append(kink.node.op_type)
            if dy is not None:
                total = np.linalg.norm(dy[i])
                shift[i] += np.linalg.norm(dy[i][near[i]]) / total if total else 0.0
            else:
                shift[i] = np.inf  # a decision whose cotangent we cannot see: no estimate
    return KnifeEdges(count, shift, ops)


def decision_flips(kinks: Sequence[KinkNode], a: Mapping[str, np.ndarray],
                   b: Mapping[str, np.ndarray], n: int) -> np.ndarray:
    """Per sample, how many decisions of ``kinks`` differ between the forwards ``a`` and ``b``
    (ties excluded: a tie is no decision)."""
    flips = np.zeros(n, np.int64)
    for kink in kinks:
        da, db = kink.decisions(a), kink.decisions(b)
        if da.choice.ndim == 0 or da.choice.shape[0] != n:
            continue
        differ = (da.choice != db.choice) & (da.margin > 0) & (db.margin > 0)
        flips += differ.reshape(n, -1).sum(axis=1)
    return flips


def probe_names(kinks: Sequence[KinkNode]) -> list[str]:
    """The tensors to fetch for :func:`knife_edges`: operands, then cotangents (no repeats)."""
    names = [n for k in kinks for n in k.inputs if n] + [k.cotangent for k in kinks
                                                          if k.cotangent]
    return list(dict.fromkeys(names))
