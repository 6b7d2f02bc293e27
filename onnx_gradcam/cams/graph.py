"""The CAM formulas and their post-processing as standard ONNX nodes, for exported models.

Each function mirrors its numpy twin in :mod:`onnx_gradcam.cams.gradient` and
:mod:`onnx_gradcam.cams.postprocess` term by term (same epsilons, same order of operations), so
an exported model and :class:`~onnx_gradcam.Explainer` give the same maps. Activations ``A``
and gradients ``G`` are NCHW tensors (N, K, h, w); a method returns the coarse map (N, 1, h, w),
kept 4-D (a channel of one) so that ``Resize`` takes it as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from onnx_gradcam.autodiff.emitter import Emitter, Value
from onnx_gradcam.cams.method import Method


def weighted_sum(op: Emitter, weights: Value, acts: Value) -> Value:
    """cam (N, 1, h, w) = Σ_k w_k · A_k for NCHW activations and weights (N, K, 1, 1) (or any
    shape whose flattening per sample is the K weights), as one batched MatMul
    (N, 1, K) × (N, K, h·w): one GEMM per sample instead of a broadcast product written out
    in full and summed again."""
    shape = op.shape(acts)
    channels = shape[1] if shape is not None else None
    w = op.Reshape(weights, op.const([-1, 1, channels] if channels else [0, 1, -1]))
    flat = op.MatMul(w, op.Reshape(acts, op.const([0, 0, -1])))
    if shape is not None and None not in shape[2:]:
        return op.Reshape(flat, op.const([0, 1, *shape[2:]]))
    return op.Reshape(flat, op.Concat(op.dims(acts, 0, 1), op.const([1]), op.dims(acts, 2, 4),
                                      axis=0))


def gradcam(op: Emitter, acts: Value, grads: Value) -> Value:
    """Grad-CAM: w_k = mean_ij G_kij; cam = Σ_k w_k A_k."""
    return weighted_sum(op, op.reduce("ReduceMean", grads, [2, 3]), acts)


def hirescam(op: Emitter, acts: Value, grads: Value) -> Value:
    """HiRes-CAM: cam = Σ_k (G ⊙ A)_k."""
    return op.reduce("ReduceSum", op.Mul(grads, acts), [1])


def gradcam_elementwise(op: Emitter, acts: Value, grads: Value) -> Value:
    """Grad-CAM element-wise: cam = Σ_k relu(G ⊙ A)_k."""
    return op.reduce("ReduceSum", op.Relu(op.Mul(grads, acts)), [1])


def gradcam_plusplus(op: Emitter, acts: Value, grads: Value) -> Value:
    """Grad-CAM++ (pytorch-grad-cam's form, no exp(S)): α = G² / (2G² + (Σ_ab A)·G³ + 1e-6),
    α = 0 where G = 0; w_k = Σ_ij relu(G)·α; cam = Σ_k w_k A_k (:func:`_plusplus_terms`)."""
    weights = op.reduce("ReduceSum", _plusplus_terms(op, acts, grads), [2, 3])
    return weighted_sum(op, weights, acts)


def _plusplus_terms(op: Emitter, acts: Value, grads: Value) -> Value:
    """Grad-CAM++'s relu(G)·α, α = G² / (2G² + (Σ_ab A)·G³ + 1e-6). pytorch-grad-cam also
    sets α = 0 where G = 0; the formula gives that itself (0 / 1e-6 = +0), so no mask."""
    g2 = op.Mul(grads, grads)
    g3 = op.Mul(g2, grads)
    sum_a = op.reduce("ReduceSum", acts, [2, 3])
    alpha = op.Div(g2, op.Add(op.Add(op.Mul(g2, 2.0), op.Mul(sum_a, g3)), 1e-6))
    return op.Mul(op.Relu(grads), alpha)


def xgradcam(op: Emitter, acts: Value, grads: Value) -> Value:
    """XGrad-CAM: w_k = Σ_ij G·A / (Σ_ab A + 1e-7); cam = Σ_k w_k A_k."""
    sum_a = op.reduce("ReduceSum", acts, [2, 3])
    weights = op.reduce("ReduceSum", op.Div(op.Mul(grads, acts), op.Add(sum_a, 1e-7)), [2, 3])
    return weighted_sum(op, weights, acts)


def layercam(op: Emitter, acts: Value, grads: Value) -> Value:
    """Layer-CAM: cam = Σ_k relu(G) ⊙ A."""
    return op.reduce("ReduceSum", op.Mul(op.Relu(grads), acts), [1])


@dataclass(frozen=True)
class Facts:
    """What a layer's head says about its gradient G and activation A, which lets a method take
    a shortcut (:class:`~onnx_gradcam.cams.Method`) instead of forming G."""

    #: a tensor of G's rank that G is a broadcast of (the gradient of a global average pooling
    #: head), and its size-1 axes. Where it has size 1 on both spatial axes (G the same at every
    #: position), the full-size G is never formed (an Expand, and the methods' products, of
    #: K·h·w values saved): the constant-G shortcut reads it instead. Where it pools only part of
    #: the space, mean weights are its mean.
    pooled: tuple[Value, tuple[int, ...]] | None = None
    #: G's mean over the positions per channel (N, K), where the head gives it without forming
    #: G (:func:`~onnx_gradcam.autodiff.summed.gradient_mean`)
    mean: Value | None = None
    #: A ≥ 0 by construction (a ReLU's output): the method's ``when_nonnegative`` twin applies
    nonnegative: bool = False
    #: a forward tensor holding mean_ij A per channel (the head's own average pool, K values per
    #: sample in any shape), which ``constant_g`` forms read instead of summing A again
    acts_mean: Value | None = None


def layer_coarse(op: Emitter, method: Method, acts: Value, grads: Value, layout: str,
                 facts: Facts = Facts()) -> Value:  # noqa: B008 (a frozen, empty record)
    """``method``'s coarse map (N, 1, h, w) of one layer whose tensors are NCHW or NHWC, by
    the cheapest of the method's shortcuts that ``facts`` allow."""
    if facts.nonnegative and method.when_nonnegative is not None:
        method = method.when_nonnegative
    cam = method.graph
    assert cam is not None, f"{method.name} has no graph form"
    value, size_one = facts.pooled if facts.pooled is not None else (None, ())
    for tensor in (grads, value):
        if tensor is not None:
            op.know_rank(tensor, 4)
    if layout == "NHWC":
        size_one = tuple(_TO_NCHW.index(a) for a in size_one)
    constant = value is not None and {2, 3} <= set(size_one) and 1 not in size_one
    acts = _activation_nchw(op, acts, layout)
    # weights (N, K), (N, K, 1, 1) or (N, 1, 1, K), flattened per sample
    if method.mean_weights and facts.mean is not None:
        return weighted_sum(op, facts.mean, acts)
    if constant and method.constant_weights is not None:
        return weighted_sum(op, method.constant_weights(op, value), acts)
    if layout == "NHWC":
        grads = op.Transpose(grads, perm=_TO_NCHW)
    if value is None or 1 in size_one:  # no pooled gradient, or a channel broadcast too
        return cam(op, acts, grads)
    value = op.Transpose(value, perm=_TO_NCHW) if layout == "NHWC" else value
    if method.mean_weights:
        return weighted_sum(op, op.reduce("ReduceMean", value, [2, 3]), acts)
    if constant and method.constant_g is not None:
        return method.constant_g(op, acts, value, facts.acts_mean)
    return cam(op, acts, value if constant and method.broadcast_safe else grads)


_TO_NCHW = [0, 3, 1, 2]


def _activation_nchw(op: Emitter, acts: Value, layout: str) -> Value:
    """A as NCHW. A tf2onnx NHWC tensor is NCHW inside ONNX Runtime, whose transpose optimizer
    cancels this Transpose against its own; reading the NHWC tensor as it is would make ORT
    materialise it (a transpose of A per call)."""
    if layout != "NHWC":
        return acts
    shape = op.shape(acts)
    acts = op.Transpose(acts, perm=_TO_NCHW)
    if shape is not None:
        op.shapes[acts] = tuple(shape[i] for i in _TO_NCHW)
    return acts


def weights_are_g(op: Emitter, g: Value) -> Value:
    """Grad-CAM (mean_ij G = g) and HiRes-CAM (Σ_k (G ⊙ A)_k = Σ_k g_k A_k): w_k = g_k."""
    return g


def weights_are_relu_g(op: Emitter, g: Value) -> Value:
    """Layer-CAM: Σ_k relu(G)_k ⊙ A_k = Σ_k relu(g_k) A_k: w_k = relu(g_k)."""
    return op.Relu(g)


def _spatial_mean(op: Emitter, acts: Value, acts_mean: Value | None) -> Value:
    """mean_ij A (N, K, 1, 1): the forward pass's ``acts_mean`` reshaped (no pass over A),
    else a ReduceMean of A."""
    if acts_mean is None:
        return op.reduce("ReduceMean", acts, [2, 3])
    shape = op.shape(acts)
    channels = shape[1] if shape is not None else None
    return op.Reshape(acts_mean, op.const([-1, channels, 1, 1] if channels else [0, -1, 1, 1]))


def _per_position(op: Emitter, acts: Value, value: float) -> Value:
    """``value`` / (h·w): a constant where the map's size is static."""
    shape = op.shape(acts)
    if shape is not None and None not in shape[2:]:
        return op.const(value / float(shape[2] * shape[3]))
    positions = op.Cast(op.ReduceProd(op.dims(acts, 2, 4), keepdims=0),
                        to=op.float_type)
    return op.Div(op.const(value), positions)


def xgradcam_constant_g(op: Emitter, acts: Value, g: Value,
                         acts_mean: Value | None = None) -> Value:
    """XGrad-CAM for G = g_k at every position: w_k = g_k·S_k / (S_k + 1e-7), S = Σ_ab A;
    with S = h·w·m (m = mean_ij A), w_k = g_k·m_k / (m_k + 1e-7/(h·w))."""
    m = _spatial_mean(op, acts, acts_mean)
    weights = op.Div(op.Mul(g, m), op.Add(m, _per_position(op, acts, 1e-7)))
    return weighted_sum(op, weights, acts)


def gradcam_plusplus_constant_g(op: Emitter, acts: Value, g: Value,
                                 acts_mean: Value | None = None) -> Value:
    """Grad-CAM++ for G = g_k at every position: α is the same at every position too, so
    w_k = h·w·relu(g_k)·α_k. With r = relu(g) and S = h·w·m (m = mean_ij A), for g > 0
    w = h·w·g³/(2g² + S·g³ + 1e-6) = r³ / (r²·(2/(h·w) + m·r) + 1e-6/(h·w)), and for g ≤ 0
    both are 0 (relu(g) = 0; α is finite, or the formula's 0·∞, which this form avoids)."""
    r = op.Relu(g)
    r2 = op.Mul(r, r)
    slope = op.Add(op.Mul(_spatial_mean(op, acts, acts_mean), r), _per_position(op, acts, 2.0))
    den = op.Add(op.Mul(r2, slope), _per_position(op, acts, 1e-6))
    return weighted_sum(op, op.Div(op.Mul(r2, r), den), acts)


def min_max(op: Emitter, maps: Value) -> Value:
    """Per map (N, 1, h, w): m −= min; m /= (1e-7 + max). A constant map becomes zeros."""
    shifted = op.Sub(maps, op.reduce("ReduceMin", maps, [2, 3]))
    return op.Div(shifted, op.Add(op.reduce("ReduceMax", shifted, [2, 3]), 1e-7))


def linear_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray]:
    """``cv2.resize``'s INTER_LINEAR along one axis, for upsampling (dst ≥ src): output x
    reads source fx = (x + ½)·src/dst − ½ from its neighbours left = ⌊fx⌋ and left + 1 with
    weights 1 − frac and frac (float32, as OpenCV's float path); an edge pixel repeats past
    either end. Returns (left int64 (dst,), frac float32 (dst,))."""
    fx = ((np.arange(dst) + 0.5) * (src / dst) - 0.5).astype(np.float32)
    left = np.floor(fx).astype(np.int64)
    frac = (fx - left.astype(np.float32)).astype(np.float32)
    frac[(left < 0) | (left >= src - 1)] = 0
    return np.clip(left, 0, src - 1), frac


def _interpolation(op: Emitter, src: int, dst: int,
                   rows: Sequence[int] | None = None) -> Value:
    """The (dst, src) matrix of :func:`linear_taps` (row x: 1 − frac at left, frac at
    left + 1), or only its ``rows``, as a few nodes on its (dst,)-vectors that ONNX Runtime
    folds into a constant when the session loads: the file holds 12·dst bytes, not
    4·dst·src. (A ``left + 1`` past the end is a one-hot row of zeros, and its weight is 0
    anyway.)"""
    left, frac = linear_taps(src, dst)
    if rows is not None:
        left, frac = left[list(rows)], frac[list(rows)]
    values = op.const(np.array([0, 1], dtype=np.float32))
    depth = op.const(src)
    near = op.Mul(op.OneHot(op.const(left), depth, values), op.const((1 - frac)[:, None]))
    far = op.Mul(op.OneHot(op.const(left + 1), depth, values), op.const(frac[:, None]))
    weights = op.Add(near, far)
    if op.dtype != np.float32:
        weights = op.Cast(weights, to=op.float_type)
    return weights


def extreme_samples(src: int, dst: int) -> list[int]:
    """The outputs of :func:`linear_taps` where an interpolated signal can take its minimum
    or maximum over all ``dst`` samples: between two neighbouring source pixels the signal is
    linear in frac, which grows with x, so each run of outputs sharing a ``left`` neighbour
    peaks at its first or last output (a clamped edge run is constant). At most 2·src."""
    left, _ = linear_taps(src, dst)
    starts = np.flatnonzero(np.diff(left, prepend=-1))
    ends = np.append(starts[1:] - 1, dst - 1)
    return sorted({int(i) for i in np.concatenate([starts, ends])})


def upsample(op: Emitter, maps: Value, size: Value | tuple[int, int],
             source: tuple[int | None, int | None] = (None, None)) -> Value:
    """Resize maps (N, 1, h, w) to ``size`` ((H, W), or an int64 [H, W] tensor) like
    ``cv2.resize`` INTER_LINEAR: bilinear on half-pixel centres, edges clamped, no antialias.

    Where both sizes are static (``source`` = (h, w)) and it is an upsampling, as two MatMuls
    with constant interpolation matrices (≤ 1e-6 from cv2.resize, which interpolates rows
    first; a ``Resize`` recomputes its coordinates on every run; :func:`_upsample_at`)."""
    static = _static_upsampling(size, source)
    if static is not None:
        return _upsample_at(op, maps, *static)
    hw = op.const(list(size)) if isinstance(size, tuple) else size
    sizes = op.Concat(op.dims(maps, 0, 2), hw, axis=0)
    return op.Resize(maps, None, None, sizes, mode="linear",
                     coordinate_transformation_mode="half_pixel")


def _static_upsampling(size: Value | tuple[int, int], source: tuple[int | None, int | None]
                       ) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """(source, size) where both are static and it is an upsampling, else None."""
    h, w = source
    if isinstance(size, tuple) and h is not None and w is not None and (
            size[0] >= h and size[1] >= w):
        return (h, w), size
    return None


def _upsample_at(op: Emitter, maps: Value, source: tuple[int, int], size: tuple[int, int],
                 samples: tuple[list[int], list[int]] | None = None) -> Value:
    """:func:`upsample` by constant matrices, at all outputs or at the ``samples`` (rows,
    columns) only. Columns first: the second, larger product then has a 2-D right operand,
    which ONNX Runtime runs as one GEMM over the whole batch."""
    rows, cols = samples if samples is not None else (None, None)
    columns = op.MatMul(_interpolation(op, source[0], size[0], rows), maps)  # N small GEMMs
    return op.MatMul(columns, op.Transpose(_interpolation(op, source[1], size[1], cols),
                                           perm=[1, 0]))


def normalise(op: Emitter, coarse: Value) -> Value:
    """Post-processing steps 1-2 on one layer's coarse map (N, 1, h, w): ReLU, then min-max."""
    return min_max(op, op.Relu(coarse))


def heatmap(op: Emitter, coarse: list[Value], size: Value | tuple[int, int],
            sources: Sequence[tuple[int | None, int | None]] = ()) -> Value:
    """Steps 1-4 on each layer's coarse map (N, 1, h, w) → the heatmap (N, 1, H, W).

    One layer upsampled by constant matrices U (:func:`upsample`) is normalised once, before
    upsampling, and the full-size map is written once, by the last product. With
    c = relu(coarse) and c₀ = c − min c (a constant map becomes exactly 0), rows of U sum to
    1, so the two min-max steps give (U·c₀ − lo)/(hi − lo + ε·(ε + r_c)) = U·n with
    n = (c₀ − lo)/(hi − lo + ε²) (ε² for ε·(ε + r_c): a relative change of ε·r_c/(hi − lo),
    ~1e-7 for an upsampling). lo and hi, the extremes of U·c₀ over the whole output grid, lie
    on the subgrid of :func:`extreme_samples` (bilinear = linear along each axis between
    source pixels): at most 2h × 2w values. The result is clipped to [0, 1], which rounding
    can miss by an ulp. ≤ 1e-6 from the two steps (tests/test_export.py), which would each
    read and write the full-size map once more."""
    sources = list(sources) or [(None, None)] * len(coarse)
    static = _static_upsampling(size, sources[0]) if len(coarse) == 1 else None
    if static is None:
        return combine(op, [normalise(op, c) for c in coarse], size, sources)
    (h, w), (height, width) = static
    relu = op.Relu(coarse[0])
    shifted = op.Sub(relu, op.reduce("ReduceMin", relu, [2, 3]))
    extremes = _upsample_at(op, shifted, *static,
                            (extreme_samples(h, height), extreme_samples(w, width)))
    low = op.reduce("ReduceMin", extremes, [2, 3])
    # ε² of the two steps, kept above zero in float16 (else a constant map divides 0 by 0)
    epsilon = max(1e-14, float(np.finfo(op.dtype).smallest_subnormal))
    spread = op.Add(op.Sub(op.reduce("ReduceMax", extremes, [2, 3]), low), epsilon)
    maps = _upsample_at(op, op.Div(op.Sub(shifted, low), spread), *static)
    return op.Clip(maps, op.const(0.0), op.const(1.0))


def combine(op: Emitter, normalised: list[Value], size: Value | tuple[int, int],
            sources: Sequence[tuple[int | None, int | None]] = ()) -> Value:
    """Steps 3-4: upsample each layer's normalised map to ``size`` (from its static (h, w) in
    ``sources``, where known); mean over the layers and min-max again (always, also for one
    layer, as pytorch-grad-cam does) → (N, 1, H, W). Step 4's ReLU is left out: bilinear
    weights and means of maps in [0, 1] stay ≥ 0 exactly."""
    sources = list(sources) or [(None, None)] * len(normalised)
    layers = [upsample(op, m, size, hw) for m, hw in zip(normalised, sources)]
    if len(layers) == 1:
        return min_max(op, layers[0])
    return min_max(op, op.reduce("ReduceMean", op.Concat(*layers, axis=1), [1]))
