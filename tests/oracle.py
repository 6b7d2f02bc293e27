"""The decision-matched float64 oracle: is our gradient the exact gradient of the forward ONNX
Runtime actually computed?

A ReLU net is piecewise smooth: its gradient is defined by the kink decisions of the forward
(ReLU/Clip masks, Max/Min choices, MaxPool routing, Where conditions, …). In float32 a decision
whose input lies within rounding distance of its kink can go either way, and ONNX Runtime's
optimisation levels (NCHWc kernels at ORT_ENABLE_ALL sum in another order) take such decisions
differently from float64 or from the source framework. So the oracle takes every decision of the
head (layer → score) *from the float32 forward that ran*, freezes it, and evaluates the head in
float64 with each kink op replaced by the linear piece that decision selects — a smooth
function whose directional derivatives central finite differences give to float64 accuracy.
Our float32 gradient must match them to :attr:`Report.tolerance` on any CPU at any optimisation
level.

How the decisions are read: the explainer graph that produced our gradient is run again by ONNX
Runtime with the kink ops' operands (the tensors our backward already reads), the head's side
inputs and its non-float tensors as extra outputs. Mostly that run's gradient is bit-identical to
the production one; where it is not (:attr:`Report.forward_delta`: on a tf2onnx graph left NHWC
an exposed NHWC tensor moves ONNX Runtime's transposes, so a ReduceMean sums in another order:
a rounding-sized difference), the directional errors are still those of the *production*
gradient against the decisions' run: had a decision that matters changed between the two runs,
they would show it (bench/results/oracle_table.txt: what one flipped decision does).

Independent of ``onnx_gradcam.autodiff``: only the explainer graph under test and its forward
values come from the library; the head is cut, frozen and differentiated here. The float64
evaluation is ``onnx.reference`` (with tests/zoo/float64.py's numpy Conv).

Near-kink decisions: the same decisions taken from a float64 forward of the whole model (cast to
double); where they differ from the float32 ones, the float32 map sits on a knife edge and no
framework's float32 autograd can be expected to agree with ours. :func:`check` counts them and
reports how close to its kink the float64 value was (÷ the tensor's max |value|).

Call: ``check(model, layer, x, targets, level)`` → :class:`Report` (also for the wild corpus).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper
from onnx.reference.op_run import OpRun

from onnx_gradcam.explainer_graph import SCORES, TARGET

#: directional derivatives of the frozen head vs ours: |<g, v> − D_v| ≤ tolerance · ‖g ⊙ v‖,
#: tolerance = max(TOLERANCE, NOISE_FACTOR × the head's measured float32 forward rounding)
TOLERANCE = 1e-5
NOISE_FACTOR = 10
LEVELS = ("ORT_ENABLE_ALL", "ORT_ENABLE_EXTENDED")
#: finite-difference steps along a direction v, ÷ (rms(layer) / rms(v)), tried on the first
#: direction: the smaller of the two consecutive steps whose estimates agree best is used (a
#: head with strong curvature wants a small step, one that cancels large terms a large one)
FD_STEPS = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
#: the optimisation level the production-path tests run the explainer at (tests/conftest.py)
LEVEL = os.environ.get("ONNX_GRADCAM_TEST_ORT_LEVEL", "ORT_ENABLE_ALL")
F32, F64 = onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE
FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
          onnx.TensorProto.BFLOAT16}
#: float ops whose output is piecewise constant: frozen at the float32 value
STEPS = {"Sign", "Floor", "Ceil", "Round"}
#: ops with a kink that this oracle cannot freeze (it says so rather than miss one)
UNSUPPORTED = {"TopK", "Mod", "ReduceL1", "ArgMin", "ArgMax", "If", "Loop", "Scan"}


def session_options(level: str) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    return opts


@dataclass
class Kink:
    """One kink node of the head and its decisions."""

    node: str
    op: str
    elements: int  # decisions taken (output elements)
    flips: int = 0  # of them, taken differently by the float64 forward
    distance: float = float("nan")  # largest float64 distance to the kink among the flips


@dataclass
class Report:
    layer: str
    level: str
    gradient: np.ndarray  # ours, float32, in the layer tensor's own layout
    #: max |gradient of the decisions' run − ours| ÷ max |ours|: 0 where the extra outputs left
    #: ONNX Runtime's forward as it was (see :func:`check`)
    forward_delta: float
    errors: list[float]  # per direction: |<g, v> − D_v| / ‖g ⊙ v‖, decisions from float32
    #: the head's float32 forward rounding: max |scores ORT − frozen head in float64| at the
    #: same layer value, ÷ max |scores|
    noise: float = float("nan")
    errors64: list[float] = field(default_factory=list)  # the same, decisions from float64
    kinks: list[Kink] = field(default_factory=list)
    directions: list[np.ndarray] = field(repr=False, default_factory=list)
    derivatives64: list[float] = field(default_factory=list)  # D_v with float64 decisions

    @property
    def error(self) -> float:
        return max(self.errors)

    @property
    def tolerance(self) -> float:
        """What :attr:`error` may reach: float32 arithmetic through a deep head (MobileNetV3's
        hard-swish and squeeze-excite blocks) rounds our gradient about as much as its forward
        (a few times :attr:`noise`), so a CPU that rounds more shows it in :attr:`noise`; a
        decision taken differently moves the gradient by orders of magnitude more
        (bench/results/oracle_table.txt)."""
        return max(TOLERANCE, NOISE_FACTOR * self.noise)

    @property
    def passed(self) -> bool:
        return self.error <= self.tolerance

    @property
    def near_kink(self) -> int:
        return sum(k.flips for k in self.kinks)

    @property
    def near_kink_distance(self) -> float:
        flipped = [k.distance for k in self.kinks if k.flips]
        return max(flipped) if flipped else float("nan")

    def summary(self) -> str:
        where = ", ".join(f"{k.op} {k.node}: {k.flips} at {k.distance:.1e}"
                          for k in self.kinks if k.flips)
        return (f"{self.layer} @ {self.level}: oracle {self.error:.1e} ≤ {self.tolerance:.0e}? "
                f"(float32 forward noise "
                f"{self.noise:.1e}, decisions' run {self.forward_delta:.0e} off ours), "
                f"near-kink {self.near_kink}" + (f" ({where})" if where else ""))

    def rel_directional(self, gradient: np.ndarray) -> float:
        """How far another gradient (same layout) is from the float64-decision oracle along the
        same directions (e.g. the framework's autograd): max of :func:`directional_error`."""
        return max(directional_error(gradient, v, d)
                   for v, d in zip(self.directions, self.derivatives64))


def directional_error(gradient: np.ndarray, v: np.ndarray, derivative: float) -> float:
    """|<g, v> − D_v| / ‖g ⊙ v‖: ~ the elementwise relative error of g for random v (a
    per-element rounding error ε gives ~ε; a wrong rule gives O(1))."""
    g = gradient.astype(np.float64)
    scale = float(np.linalg.norm(g * v))
    miss = abs(float(np.sum(g * v)) - derivative)
    return miss / scale if scale else miss


# ---- the graph ---------------------------------------------------------------------------------
class Head:
    """The nodes on a path from ``layer`` to ``score`` in ``model``, with its side inputs."""

    def __init__(self, model: onnx.ModelProto, layer: str, score: str) -> None:
        graph = model.graph
        self.model, self.layer, self.score = model, layer, score
        self.inits = {t.name: t for t in graph.initializer}
        producer = {o: n for n in graph.node for o in n.output if o}
        wanted, stack = {score}, [score]
        while stack:
            node = producer.get(stack.pop())
            if node is None:
                continue
            for name in node.input:
                if name and name not in wanted:
                    wanted.add(name)
                    stack.append(name)
        down = {layer}
        self.nodes: list[onnx.NodeProto] = []
        for node in graph.node:
            if any(i in down for i in node.input):
                down.update(o for o in node.output if o)
                if any(o in wanted for o in node.output):
                    self.nodes.append(node)
        if not self.nodes:
            raise ValueError(f"{layer!r} does not feed {score!r}")
        for node in self.nodes:
            if node.op_type in UNSUPPORTED:
                raise NotImplementedError(f"the oracle cannot freeze {node.op_type} "
                                          f"({node.name or node.output[0]})")
        made = {o for n in self.nodes for o in n.output}
        self.sides = sorted({i for n in self.nodes for i in n.input
                             if i and i not in made and i != layer and i not in self.inits})
        inferred = onnx.shape_inference.infer_shapes(model)
        self.types = {v.name: v.type.tensor_type.elem_type for v in
                      [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
        #: non-float tensors computed from the layer (conditions, indices): frozen as they ran
        self.frozen = sorted({o for n in self.nodes for o in n.output if o and (
            n.op_type in STEPS or self.types.get(o, F32) not in FLOATS)})
        self.kinks = [n for n in self.nodes if n.op_type in HANDLERS]
        self.opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))

    def watched(self) -> list[str]:
        """Tensors whose float32 values the oracle needs from the run that made our gradient."""
        names = {self.layer, *self.sides, *self.frozen}
        for node in self.kinks:
            names.update(i for i in node.input if i and i not in self.inits)
            names.add(node.output[0])
        return sorted(names)

    def value(self, name: str, values: dict[str, np.ndarray]) -> np.ndarray:
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        return values[name]


# ---- kink handlers: decisions from values, and the frozen linear piece -------------------------
@dataclass
class Frozen:
    key: np.ndarray  # the decisions, comparable between float32 and float64 runs
    margin: np.ndarray | None  # (float64 run) each decision's distance to its kink, shaped as key
    scale: float  # of the margins
    nodes: list[onnx.NodeProto]
    feeds: dict[str, np.ndarray]  # float arrays become float64 inputs


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _scale(x: np.ndarray) -> float:
    return float(np.abs(x).max()) or 1.0


def _masked(node, x, key: np.ndarray, factor: np.ndarray, offset: np.ndarray | None, tag: str,
            margin: np.ndarray) -> Frozen:
    """y = x·factor (+ offset): factor/offset arrays chosen by the decisions ``key``."""
    nodes = [helper.make_node("Mul", [node.input[0], tag + "f"],
                              [node.output[0] if offset is None else tag + "m"])]
    feeds = {tag + "f": factor.astype(np.float64)}
    if offset is not None:
        nodes.append(helper.make_node("Add", [tag + "m", tag + "o"], [node.output[0]]))
        feeds[tag + "o"] = offset.astype(np.float64)
    return Frozen(key, margin, _scale(x), nodes, feeds)


def _relu(node, v, head, tag):
    x = v(node.input[0])
    key = x > 0
    return _masked(node, x, key, key, None, tag, np.abs(x))


def _leaky(node, v, head, tag):
    x = v(node.input[0])
    key = x > 0
    if node.op_type == "LeakyRelu":
        slope = np.float64(_attr(node, "alpha", 0.01))
    else:
        slope = v(node.input[1]).astype(np.float64)
    return _masked(node, x, key, np.where(key, 1.0, np.broadcast_to(slope, x.shape)), None, tag,
                   np.abs(x))


def _abs(node, v, head, tag):
    x = v(node.input[0])
    return _masked(node, x, np.sign(x), np.sign(x), None, tag, np.abs(x))


def _elu(node, v, head, tag):
    x = v(node.input[0])
    key = x > 0
    alpha = float(_attr(node, "alpha", 1.0))
    y, m = node.output[0], tag + "m"
    nodes = [helper.make_node("Exp", [node.input[0]], [tag + "e"]),
             helper.make_node("Sub", [tag + "e", tag + "one"], [tag + "e1"]),
             helper.make_node("Mul", [tag + "e1", tag + "neg"], [tag + "n"]),
             helper.make_node("Mul", [node.input[0], m], [tag + "p"]),
             helper.make_node("Add", [tag + "p", tag + "n"], [y])]
    feeds = {m: key.astype(np.float64), tag + "one": np.ones(1),
             tag + "neg": alpha * (~key).astype(np.float64)}
    return Frozen(key, np.abs(x), _scale(x), nodes, feeds)


def _bounds(node, v, opset: int) -> tuple[float | None, float | None]:
    if opset >= 11:
        lo = v(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        hi = v(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        return (None if lo is None else float(lo), None if hi is None else float(hi))
    return _attr(node, "min"), _attr(node, "max")


def _region(z: np.ndarray, lo: float | None, hi: float | None):
    """Region codes (−1 below, 0 inside, 1 above), as the backward decides: inside iff
    lo < z < hi; and the distance to the nearer bound."""
    below = z <= lo if lo is not None else np.zeros(z.shape, bool)
    above = z >= hi if hi is not None else np.zeros(z.shape, bool)
    key = np.where(below, -1, np.where(above, 1, 0)).astype(np.int8)
    dist = np.full(z.shape, np.inf)
    for b in (lo, hi):
        if b is not None:
            dist = np.minimum(dist, np.abs(z.astype(np.float64) - b))
    return key, dist


def _clip(node, v, head, tag):
    x = v(node.input[0])
    lo, hi = _bounds(node, v, head.opset)
    key, dist = _region(x, lo, hi)
    offset = np.where(key < 0, lo or 0.0, np.where(key > 0, hi or 0.0, 0.0))
    frozen = _masked(node, x, key, key == 0, offset, tag, dist)
    return frozen


def _hard_sigmoid(node, v, head, tag):
    x = v(node.input[0])
    alpha, beta = float(_attr(node, "alpha", 0.2)), float(_attr(node, "beta", 0.5))
    z = x * x.dtype.type(alpha) + x.dtype.type(beta)
    key, dist = _region(z, 0.0, 1.0)
    inside = key == 0
    return _masked(node, x, key, alpha * inside, beta * inside + (key > 0), tag, dist)


def _hard_swish(node, v, head, tag):
    x = v(node.input[0])
    key, dist = _region(x, -3.0, 3.0)
    y, mid = node.output[0], tag + "mid"
    nodes = [helper.make_node("Add", [node.input[0], tag + "three"], [tag + "x3"]),
             helper.make_node("Mul", [node.input[0], tag + "x3"], [tag + "q"]),
             helper.make_node("Mul", [tag + "q", mid], [tag + "a"]),
             helper.make_node("Mul", [node.input[0], tag + "hi"], [tag + "b"]),
             helper.make_node("Add", [tag + "a", tag + "b"], [y])]
    feeds = {tag + "three": np.array([3.0]), mid: (key == 0) / 6.0,
             tag + "hi": (key > 0).astype(np.float64)}
    return Frozen(key, dist, _scale(x), nodes, feeds)


def _max_min(node, v, head, tag):
    """Elementwise Max/Min: y = Σ_i S_i·x_i with S_i one-hot on the first input equal to y."""
    y = v(node.output[0])
    xs = [np.broadcast_to(v(i), y.shape) for i in node.input]
    key = np.full(y.shape, -1, np.int64)
    for i, x in enumerate(xs):
        key = np.where((key < 0) & (x == y), i, key)
    others = [np.where(key == i, np.inf, np.abs(x.astype(np.float64) - y)) for i, x in
              enumerate(xs)]
    margin = np.min(others, axis=0) if len(xs) > 1 else np.full(y.shape, np.inf)
    nodes, feeds, parts = [], {}, []
    for i, name in enumerate(node.input):
        nodes.append(helper.make_node("Mul", [name, f"{tag}s{i}"], [f"{tag}p{i}"]))
        feeds[f"{tag}s{i}"] = (key == i).astype(np.float64)
        parts.append(f"{tag}p{i}")
    nodes.append(helper.make_node("Sum", parts, [node.output[0]]))
    return Frozen(key, margin, _scale(y), nodes, feeds)


def _window_pads(node, size: tuple[int, ...], kernel, strides, dilations, out: tuple[int, ...]):
    auto = _attr(node, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    r = len(kernel)
    if auto in ("NOTSET", ""):
        pads = list(_attr(node, "pads", [0] * 2 * r))
        return pads[:r]
    if auto == "VALID":
        return [0] * r
    begin = []
    for x, k, s, d, o in zip(size, kernel, strides, dilations, out):
        total = max((o - 1) * s + (k - 1) * d + 1 - x, 0)
        begin.append(total // 2 if auto == "SAME_UPPER" else total - total // 2)
    return begin


def _max_pool(node, v, head, tag):
    """y = x at the first position (row-major in its window) holding the window's max, as a
    GatherElements over the flattened spatial axes."""
    x, y = v(node.input[0]), v(node.output[0])
    n, c, *size = x.shape
    out = y.shape[2:]
    kernel = list(_attr(node, "kernel_shape"))
    r = len(kernel)
    strides = list(_attr(node, "strides", [1] * r))
    dilations = list(_attr(node, "dilations", [1] * r))
    begin = _window_pads(node, tuple(size), kernel, strides, dilations, out)
    flat_index = np.arange(int(np.prod(size))).reshape(size)
    reach = [(o - 1) * s + (k - 1) * d + 1 for o, s, k, d in zip(out, strides, kernel, dilations)]
    pad = [(b, max(rc - b - sz, 0)) for b, rc, sz in zip(begin, reach, size)]
    xp = np.pad(x, [(0, 0), (0, 0), *pad], constant_values=-np.inf)
    ip = np.pad(flat_index, pad, constant_values=-1)
    key = np.full(y.shape, -1, np.int64)
    best = np.full(y.shape, -np.inf)  # the runner-up's value, for the margin
    for offset in np.ndindex(*kernel):
        sl = tuple(slice(o * d, o * d + (m - 1) * s + 1, s)
                   for o, d, m, s in zip(offset, dilations, out, strides))
        window, index = xp[(slice(None), slice(None), *sl)], ip[sl]
        hit = (key < 0) & (window == y)
        best = np.where(~hit & (index >= 0), np.maximum(best, window), best)
        key = np.where(hit, index, key)
    margin = y.astype(np.float64) - best
    assert (key >= 0).all(), f"MaxPool {node.name}: a window's max not found"
    shape = np.array([n, c, -1], np.int64)
    nodes = [helper.make_node("Reshape", [node.input[0], tag + "shape"], [tag + "flat"]),
             helper.make_node("GatherElements", [tag + "flat", tag + "idx"], [tag + "g"], axis=2),
             helper.make_node("Reshape", [tag + "g", tag + "yshape"], [node.output[0]])]
    feeds = {tag + "shape": shape, tag + "idx": key.reshape(n, c, -1),
             tag + "yshape": np.array(y.shape, np.int64)}
    return Frozen(key, margin, _scale(x), nodes, feeds)


def _reduce_max(node, v, head, tag):
    """ReduceMax/ReduceMin/GlobalMaxPool: y = Σ_axes x·W, W splitting 1 among the tied
    extremes."""
    x = v(node.input[0])
    if node.op_type == "GlobalMaxPool":
        axes, keep = list(range(2, x.ndim)), 1
    else:
        axes = _attr(node, "axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = v(node.input[1]).tolist()
        axes = sorted(int(a) % x.ndim for a in axes) if axes else list(range(x.ndim))
        keep = int(_attr(node, "keepdims", 1))
    y = v(node.output[0])
    y_kept = y if keep else np.expand_dims(y, axes)
    hit = x == y_kept
    weights = hit / hit.sum(axis=tuple(axes), keepdims=True)
    nodes = [helper.make_node("Mul", [node.input[0], tag + "w"], [tag + "p"]),
             helper.make_node("ReduceSum", [tag + "p", tag + "axes"], [node.output[0]],
                              keepdims=keep)]
    feeds = {tag + "w": weights.astype(np.float64), tag + "axes": np.array(axes, np.int64)}
    diff = np.abs(x.astype(np.float64) - y_kept)
    margin = np.broadcast_to(np.min(np.where(hit, np.inf, diff), axis=tuple(axes),
                                    keepdims=True), x.shape)
    return Frozen(hit, np.where(hit, margin, np.inf), _scale(x), nodes, feeds)


HANDLERS: dict[str, Callable] = {
    "Relu": _relu, "LeakyRelu": _leaky, "PRelu": _leaky, "Abs": _abs, "Elu": _elu,
    "Clip": _clip, "HardSigmoid": _hard_sigmoid, "HardSwish": _hard_swish,
    "Max": _max_min, "Min": _max_min, "MaxPool": _max_pool,
    "ReduceMax": _reduce_max, "ReduceMin": _reduce_max, "GlobalMaxPool": _reduce_max,
}


class GatherElements(OpRun):
    """``onnx.reference``'s GatherElements uses np.choose (at most 64 choices)."""

    op_domain = ""

    def _run(self, data, indices, axis=None):
        return (np.take_along_axis(data, indices.astype(np.int64), axis=int(axis or 0)),)


def _evaluator(model: onnx.ModelProto):
    from onnx.reference import ReferenceEvaluator

    from tests.zoo.float64 import FAST_OPS

    return ReferenceEvaluator(model, new_ops=[*FAST_OPS, GatherElements])


# ---- the frozen head in float64 ----------------------------------------------------------------
def _freeze(head: Head, values: dict[str, np.ndarray]) -> tuple[list[Frozen], dict[str, Frozen]]:
    v = lambda name: head.value(name, values)  # noqa: E731
    frozen = {}
    for i, node in enumerate(head.kinks):
        frozen[node.output[0]] = HANDLERS[node.op_type](node, v, head, f"ogc_frozen/{i}/")
    return list(frozen.values()), frozen


def _head_model(head: Head, frozen: dict[str, Frozen], values: dict[str, np.ndarray]
                ) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The float64 head with kinks frozen: inputs the layer, side inputs, frozen tensors and the
    decisions' arrays; output the score."""
    from tests.zoo.float64 import to_double

    nodes, feeds = [], {}
    for node in head.nodes:
        out = node.output[0]
        if out in frozen:
            nodes += frozen[out].nodes
            feeds.update(frozen[out].feeds)
        elif all(o in head.frozen or not o for o in node.output):
            continue  # its outputs are fed as they ran
        else:
            nodes.append(node)
    for name in [*head.sides, *head.frozen, head.layer]:
        feeds[name] = values[name]
    used = {i for n in nodes for i in n.input}
    inputs = []
    for name, array in feeds.items():
        if name not in used:
            continue
        elem = helper.np_dtype_to_tensor_dtype(array.dtype)
        inputs.append(helper.make_tensor_value_info(name, F32 if elem == F64 else elem, None))
    inits = [t for t in head.model.graph.initializer if t.name in used]
    graph = helper.make_graph(nodes, "frozen_head", inputs,
                              [helper.make_tensor_value_info(head.score, F32, None)], inits)
    model = helper.make_model(graph, opset_imports=list(head.model.opset_import))
    model.ir_version = head.model.ir_version
    double = to_double(model)
    return double, {k: (a.astype(np.float64) if a.dtype.kind == "f" else a)
                    for k, a in feeds.items() if k in used}


def _directional(head: Head, frozen: dict[str, Frozen], values: dict[str, np.ndarray],
                 targets: np.ndarray, directions: list[np.ndarray],
                 relative_step: float | None) -> tuple[list[float], np.ndarray]:
    """Central float64 differences of Σ_n score[n, t_n] of the frozen head along each
    direction, at the layer value that ran (cast to float64); and the scores (N, C) there."""
    model, feeds = _head_model(head, frozen, values)
    run = _evaluator(model)
    a = feeds[head.layer]
    rows = np.arange(len(targets))

    def scores(point: np.ndarray) -> np.ndarray:
        return run.run([head.score], {**feeds, head.layer: point})[0].reshape(len(targets), -1)

    def derivative(v: np.ndarray, relative: float) -> float:
        step = relative * float(np.sqrt(np.mean(a * a))) / float(np.sqrt(np.mean(v * v)))
        up, down = scores(a + step * v), scores(a - step * v)
        return float((up[rows, targets] - down[rows, targets]).sum()) / (2 * step)

    out = []
    if relative_step is None:  # the step where the first direction's estimates settle
        trials = [(h, derivative(directions[0], h)) for h in FD_STEPS]
        spread = [abs(d1 - d2) for (_, d1), (_, d2) in zip(trials, trials[1:])]
        relative_step, first = trials[1 + int(np.argmin(spread))]
        out.append(first)
    out += [derivative(v, relative_step) for v in directions[len(out):]]
    return out, scores(a)


#: float64 forward values, decisions and derivatives per (model, layer, batch, targets, …)
_FLOAT64: dict[tuple, tuple] = {}


# ---- the check ---------------------------------------------------------------------------------
def _graph(explainer, targets: np.ndarray):
    return explainer._graph_for(targets, targets)  # the graph explain() uses for these targets


def _run(graph, model: onnx.ModelProto, x: np.ndarray, targets: np.ndarray, level: str,
         names: list[str], input_name: str) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), session_options(level),
                                providers=["CPUExecutionProvider"])
    feeds = {input_name: x}
    if graph.takes_target:
        feeds[TARGET] = targets
    return dict(zip(names, sess.run(names, feeds)))


def check(model: str | Path | onnx.ModelProto, layer: str | None, x: np.ndarray, targets,
          level: str = "ORT_ENABLE_ALL", directions: int = 3, seed: int = 0,
          float64_decisions: bool = True, reference64: onnx.ModelProto | None = None,
          step: float | None = None) -> Report:
    """The decision-matched oracle for our gradient of Σ_n score[n, targets[n]] w.r.t. ``layer``
    on batch ``x`` (the model's own layout), with the explainer graph run at ``level``.
    ``layer`` None: the layer the explainer detects. ``step``: the finite-difference step
    (None: chosen from :data:`FD_STEPS`).

    ``float64_decisions``: also count near-kink decisions (float64 forward of the whole model,
    cast to double) and take the directional derivatives of the head frozen with float64's
    decisions (:meth:`Report.rel_directional`, for comparing the framework's autograd).
    ``reference64``: the float64 forward from this double model instead (the same graph node
    for node, e.g. the converter's output for the framework's float64 model, whose weights are
    not float32-rounded), its tensors matched to ours by node position."""
    import onnx_gradcam as og

    explainer = og.Explainer(model, layer=layer, providers="cpu")
    layer = explainer.layer_names[0]
    targets = explainer.check_targets(targets, len(x)).copy()
    assert (targets >= 0).all(), "the oracle takes class indices"
    x = np.ascontiguousarray(x, dtype=np.float32)
    if explainer.model.input_shape[0] not in (None, len(x)):
        raise ValueError(f"the model takes batches of {explainer.model.input_shape[0]}: "
                         "check one sample at a time")
    graph = _graph(explainer, targets)
    gradient = graph.gradients[0]
    proto = explainer.model.proto
    head = Head(proto, layer, explainer.score)
    name = explainer.model.input_name
    plain = _run(graph, graph.model, x, targets, level, [gradient], name)[gradient]
    watched = [w for w in head.watched() if w != name]
    augmented = onnx.ModelProto()
    augmented.CopyFrom(graph.model)
    present = {o.name for o in augmented.graph.output}
    for w in watched:
        if w not in present:
            augmented.graph.output.append(helper.make_tensor_value_info(
                w, head.types.get(w, F32), None))
    values = _run(graph, augmented, x, targets, level, [gradient, SCORES, *watched], name)
    values[name] = x
    ours = values.pop(gradient)
    kinds, frozen = _freeze(head, values)
    rng = np.random.default_rng(seed)
    vs = [rng.standard_normal(ours.shape) for _ in range(directions)]
    derivatives, scores64 = _directional(head, frozen, values, targets, vs, step)
    errors = [directional_error(plain, v, d) for v, d in zip(vs, derivatives)]
    scores32 = values[SCORES]
    noise = float(np.abs(scores32 - scores64).max() / np.abs(scores64).max())
    delta = float(np.abs(ours - plain).max() / (np.abs(plain).max() or 1.0))
    report = Report(layer, level, plain, delta, errors, noise=noise, directions=vs)
    kinks = [Kink(n.name or n.output[0], n.op_type, int(f.key.size))
             for n, f in zip(head.kinks, kinds)]
    if float64_decisions:
        key = (explainer.sessions._digest, layer, hashlib.sha1(x.tobytes()).hexdigest(),
               tuple(targets.tolist()), directions, seed, step,
               None if reference64 is None else
               hashlib.sha1(reference64.SerializeToString()).hexdigest())
        if key not in _FLOAT64:  # level-independent: shared by the levels' checks
            values64 = _forward64(proto, name, x, watched, reference64)
            values64[name] = x.astype(np.float64)
            kinds64, frozen64 = _freeze(head, values64)
            # at the float64 layer value, with float64's decisions: the float64 truth's
            # directional derivatives
            derivatives = _directional(head, frozen64, values64, targets, vs, step)[0]
            _FLOAT64.clear()  # one entry: the arrays of a large head take GBs
            _FLOAT64[key] = ([Frozen(f.key, f.margin, f.scale, [], {}) for f in kinds64],
                             {n: values64[n] for n in head.frozen}, derivatives)
        kinds64, values64, report.derivatives64 = _FLOAT64[key]
        for kink, f32, f64 in zip(kinks, kinds, kinds64):
            flipped = f32.key != f64.key
            kink.flips = int(flipped.sum())
            if kink.flips and f64.margin is not None:
                kink.distance = float(np.max(f64.margin[flipped])) / f64.scale
        for n in head.frozen:  # conditions / indices / steps computed in the head
            differ = values[n] != values64[n]
            if differ.any():
                kinks.append(Kink(n, "frozen", int(differ.size), int(differ.sum())))
        report.errors64 = [directional_error(plain, v, d)
                           for v, d in zip(vs, report.derivatives64)]
    report.kinks = kinks
    return report


def _forward64(proto: onnx.ModelProto, input_name: str, x: np.ndarray, names: list[str],
               reference: onnx.ModelProto | None) -> dict[str, np.ndarray]:
    from tests.zoo.float64 import to_double

    if reference is None:
        double, mapped, feed = to_double(proto), names, input_name
    else:
        ours, theirs = proto.graph.node, reference.graph.node
        if [n.op_type for n in ours] != [n.op_type for n in theirs]:
            raise ValueError("reference64 is not the same graph node for node")
        rename = {a: b for m, n in zip(ours, theirs) for a, b in zip(m.output, n.output)}
        double, mapped, feed = reference, [rename[n] for n in names], reference.graph.input[0].name
    return dict(zip(names, _evaluator(double).run(mapped, {feed: x.astype(np.float64)})))
