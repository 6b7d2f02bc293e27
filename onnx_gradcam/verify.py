"""Check the gradient graph numerically on the user's own model (``inspect --verify``).

(a) Our gradient graph for the head (target layer → score), cast to float64 and run by
``onnx.reference``, against float64 central finite differences of the target score along
directions ``t`` in the layer's space, by the inner-product identity <J·t, c> = <t, Jᵀ·c> (JAX's
``check_vjp``): first along our gradient ``g`` itself (a rule that scales the gradient shows in
full there, where a random direction of a large layer sees ~1/√size of it), then along ``g``
plus a random direction of the same length (so the directional derivative stays ~‖g‖, well above
the float64 rounding of the difference quotient, while the random part probes what ``g``
misses). The error of a direction is |<t, g> − FD| / max(|<t, g>|, |FD|). A ReLU head is
piecewise linear, so a step that crosses a kink breaks the identity without any rule being
wrong: steps whose kink decisions differ from the point's are shrunk, and directions that cross
a kink at every step are replaced. Verdict PASS when every relative error is ≤
:data:`PASS_RTOL`; on FAIL the head is bisected (the same check on sub-heads from later tensors)
to name the op whose rule is likely wrong.

(b) The production float32 gradient (ONNX Runtime, the explainer's providers) against (a)'s
float64 gradient at the same activation, with the kink decisions counted that the two forwards
take differently and those on a knife edge (:mod:`onnx_gradcam.kinks`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnx_gradcam.autodiff.builder import build_gradient, head_nodes
from onnx_gradcam.autodiff.emitter import Emitter
from onnx_gradcam.explainer_graph import GRADIENT, SEED, TARGET
from onnx_gradcam.graph import GraphInfo
from onnx_gradcam.kinks import KinkNode, KnifeEdges, decision_flips, kink_nodes, probe_names
from onnx_gradcam.reference import evaluator, to_double

#: (a)'s verdict: the largest relative error of a correct gradient graph is float64 rounding
PASS_RTOL = 1e-6
#: finite-difference steps, relative to ‖activation‖: the first, and the smallest tried when a
#: step crosses a kink (below it, float64 rounding of the difference quotient nears PASS_RTOL)
STEP, SMALLEST_STEP = 1e-6, 1e-9


@dataclass
class VerifyReport:
    """What :func:`verify` found (printed by ``inspect --verify``)."""

    layer: str
    targets: list[int]
    image: str  # where the input came from
    errors: list[float]  # (a) per direction: relative error of our float64 VJP vs FD
    verdict: str  # PASS or FAIL
    suspect: str | None  # on FAIL: the op (and node) whose rule the bisection points at
    float32_error: float  # (b) ‖g32 − g64‖ / ‖g64‖
    knife: KnifeEdges  # (b) near-kink decisions of the float32 forward, flips vs float64
    steps: list[float] = field(default_factory=list)  # the FD step used per direction
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.verdict == "PASS"

    def as_dict(self) -> dict:
        return {"layer": self.layer, "targets": self.targets, "image": self.image,
                "vjp_vs_finite_differences": self.errors, "steps": self.steps,
                "verdict": self.verdict, "suspect": self.suspect,
                "float32_vs_float64": self.float32_error,
                "knife_edges": [self.knife.as_dict(i) for i in range(len(self.targets))],
                "seconds": round(self.seconds, 3)}


def head_model(info: GraphInfo, tensor: str, score: str) -> tuple[onnx.ModelProto, list[str]]:
    """The head from ``tensor`` to ``score`` as a model of its own: inputs ``tensor`` and the
    other tensors its nodes read from outside it (returned, e.g. a residual branch from before
    the layer, or a Shape), constants as initializers; output ``score``."""
    head = head_nodes(info, tensor, score)
    produced = {o for i in head for o in info.nodes[i].output}
    externals: list[str] = []
    inits, seen = [], {tensor}
    for i in head:
        for name in info.nodes[i].input:
            if not name or name in produced or name in seen:
                continue
            seen.add(name)
            if name in info.constants:
                inits.append(numpy_helper.from_array(info.constants[name], name))
            else:
                externals.append(name)

    def value(name: str) -> onnx.ValueInfoProto:
        shape = info.shapes.get(name)
        dims = None if shape is None else [d if d is not None else f"{name}_{k}"
                                           for k, d in enumerate(shape)]
        return helper.make_tensor_value_info(name, info.elem_types.get(name, 1), dims)

    graph = helper.make_graph([info.nodes[i] for i in head], "head",
                              [value(n) for n in (tensor, *externals)], [value(score)], inits)
    model = helper.make_model(graph, opset_imports=list(info.model.opset_import))
    model.ir_version = info.model.ir_version
    model.functions.extend(info.model.functions)
    return model, externals


def probe_model(info: GraphInfo, tensor: str, score: str, seed_from_targets: bool,
                extra: list[str] = ()) -> tuple[onnx.ModelProto, list[KinkNode], str]:
    """``info``'s model plus the gradient of ``score`` w.r.t. ``tensor`` and, as outputs, that
    gradient, the kink operands and cotangents of the head (:func:`probe_names`) and ``extra``.
    The seed is ``ogc_target`` (int64 class indices, one-hot in the graph) when
    ``seed_from_targets``, else ``ogc_seed`` shaped like ``score``. Returns (model, kinks,
    gradient name)."""
    dtype = info.dtype(score)
    op = Emitter(opset=info.opset, dtype=dtype, shapes=info.shapes, prefix="ogc_probe_seed/")
    inputs = []
    if seed_from_targets:
        shape = info.shapes.get(score)
        two_d = shape is not None and len(shape) == 2
        score2d = score if two_d else op.Flatten(score, axis=1)
        classes = info.class_count(score)
        if classes:
            indices = op.const(np.arange(classes, dtype=np.int64))
        else:
            indices = op.Range(op.const(0), op.Gather(op.Shape(score2d), op.const(1)),
                               op.const(1))
        hot = op.Cast(op.Equal(op.unsqueeze(TARGET, [1]), indices),
                      to=helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))
        seed = hot if two_d else op.Reshape(hot, op.Shape(score))
        inputs.append(helper.make_tensor_value_info(TARGET, onnx.TensorProto.INT64, ["N"]))
    else:
        seed = SEED
        inputs.append(helper.make_tensor_value_info(
            SEED, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), None))
    grad = build_gradient(info, tensor, score, seed, prefix="ogc_probe/")
    kinks = kink_nodes(info, head_nodes(info, tensor, score), grad.cotangents)
    model = onnx.ModelProto()
    model.CopyFrom(info.model)
    model.graph.node.extend([*op.nodes, *grad.nodes])
    model.graph.initializer.extend([*op.initializers, *grad.initializers])
    model.graph.input.extend(inputs)
    existing = {o.name for o in model.graph.output}
    for name in [grad.gradient, *probe_names(kinks), *extra]:
        if name not in existing:
            existing.add(name)
            elem = info.elem_types.get(name) or helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
            model.graph.output.append(helper.make_tensor_value_info(name, elem, None))
    return model, kinks, grad.gradient


class _Head:
    """A float64 head cut at ``tensor`` with its gradient graph, run by ``onnx.reference``."""

    def __init__(self, info: GraphInfo, tensor: str, score: str) -> None:
        model, self.externals = head_model(info, tensor, score)
        self.info = GraphInfo(model)
        self.tensor, self.score = tensor, score
        probe, self.kinks, self.gradient = probe_model(self.info, tensor, score, False)
        self.operands = list(dict.fromkeys(n for k in self.kinks for n in k.inputs if n))
        self.forward = evaluator(model)
        self.backward = evaluator(probe)

    def values(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [self.score, *self.operands]
        return dict(zip(names, self.forward.run(names, feeds)))

    def check(self, feeds: dict[str, np.ndarray], seed: np.ndarray, directions: int,
              rng: np.random.Generator
              ) -> tuple[list[float], list[float], np.ndarray, dict[str, np.ndarray]]:
        """(relative errors, steps, gradient, forward values) of the VJP at ``feeds`` along
        ``directions`` directions (see the module docstring), each step free of kink
        crossings."""
        names = [self.gradient, *probe_names(self.kinks)]
        outs = self.backward.run(names, {**feeds, SEED: seed})
        g = outs[0]
        base = {**self.values(feeds), **dict(zip(names, outs))}
        x = feeds[self.tensor]
        n = x.shape[0]
        errors, steps = [], []
        unit = g / np.linalg.norm(g) if np.any(g) else np.zeros_like(g)
        for attempt in range(4 * directions):
            if len(errors) == directions:
                break
            t = unit if attempt == 0 and np.any(g) else rng.standard_normal(x.shape)
            t = unit + t / np.linalg.norm(t) if attempt else t
            t = t / np.linalg.norm(t)
            step = STEP * max(float(np.linalg.norm(x)), 1.0)
            while step >= SMALLEST_STEP * max(float(np.linalg.norm(x)), 1.0):
                plus = self.values({**feeds, self.tensor: x + step * t})
                minus = self.values({**feeds, self.tensor: x - step * t})
                if not (decision_flips(self.kinks, base, plus, n).any()
                        or decision_flips(self.kinks, base, minus, n).any()):
                    break
                step /= 10
            else:
                continue  # every step crosses a kink: another direction
            numeric = float(np.sum(seed * (plus[self.score] - minus[self.score])) / (2 * step))
            analytic = float(np.sum(t * g))
            errors.append(abs(numeric - analytic) / max(abs(numeric), abs(analytic), 1e-300))
            steps.append(step)
        return errors, steps, g, base


def _one_hot(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    flat = np.zeros((len(targets), scores.size // len(targets)))
    flat[np.arange(len(targets)), targets] = 1.0
    return flat.reshape(scores.shape)


def verify(explainer, x: np.ndarray, image: str, directions: int = 4, seed: int = 0
           ) -> VerifyReport:
    """:meth:`onnx_gradcam.Explainer.verify` (see the module docstring), on the first layer."""
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    info, layer, score = explainer.model.info, explainer.layers[0], explainer.score
    result = explainer.explain(x)
    targets = result.targets
    head32, externals = head_model(info, layer.name, score)
    knife, values32 = explainer._probe(x, targets, layer.name, [layer.name, *externals])
    head64 = _Head(GraphInfo(to_double(head32)), layer.name, score)
    feeds = {name: (values32[name].astype(np.float64) if values32[name].dtype.kind == "f"
                    else values32[name]) for name in (layer.name, *externals)}
    scores64 = head64.forward.run([score], feeds)[0]
    one_hot = _one_hot(scores64, targets)
    errors, steps, g64, values64 = head64.check(feeds, one_hot, directions, rng)
    verdict = "PASS" if errors and max(errors) <= PASS_RTOL else "FAIL"
    suspect = _bisect(head64, feeds, one_hot, rng) if verdict == "FAIL" and errors else None
    if not errors:
        suspect = "no direction free of kink crossings; try another image or --layer"
    # the explainer graph's own gradient where it has one (gradient-free methods: the probe's)
    g32 = (_native(result.gradients[0], layer.layout) if explainer.method.needs_gradient
           else values32[GRADIENT])
    float32_error = float(np.linalg.norm(g32 - g64) / max(np.linalg.norm(g64), 1e-300))
    knife.flips = decision_flips(head64.kinks, values32, values64, len(targets))
    return VerifyReport(layer.name, [int(t) for t in targets], image, errors, verdict, suspect,
                        float32_error, knife, steps, time.perf_counter() - start)


def _native(nchw: np.ndarray, layout: str) -> np.ndarray:
    """An NCHW layer tensor of :class:`Explanation` back in the layer's own layout."""
    return nchw.transpose(0, 2, 3, 1) if layout == "NHWC" else nchw


def _bisect(head: _Head, feeds: dict[str, np.ndarray], seed: np.ndarray,
            rng: np.random.Generator) -> str:
    """The op whose rule likely is wrong: the consumers of the latest head tensor whose own
    sub-head (tensor → score) fails the check, found by bisection in forward order."""
    info = head.info
    order = head_nodes(info, head.tensor, head.score)
    tensors = [head.tensor] + [o for i in order for o in info.nodes[i].output
                               if o and o != head.score and info.elem_types.get(o) in (1, 11)]
    inner = evaluator(info.model)

    def fails(index: int) -> bool:
        tensor = tensors[index]
        try:
            sub = _Head(info, tensor, head.score)
        except Exception:  # noqa: BLE001 - a sub-head we cannot cut: count it as passing
            return False
        names = [tensor, *sub.externals]
        sub_feeds = dict(zip(names, inner.run(names, feeds)))
        errors = sub.check(sub_feeds, seed, 1, rng)[0]
        return bool(errors) and max(errors) > PASS_RTOL

    lo, hi = 0, len(tensors) - 1  # tensors[lo] fails; find the last failing index
    if fails(hi):
        lo = hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fails(mid):
            lo = mid
        else:
            hi = mid
    culprit = tensors[lo]
    nodes = [info.nodes[i] for i in order if culprit in info.nodes[i].input]
    return ", ".join(f"{n.op_type} (node {n.name or n.output[0]!r})" for n in nodes) or culprit
