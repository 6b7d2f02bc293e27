"""What a map explains: the scalar score per sample whose gradient the CAM methods weigh.

``Explainer.explain(x, targets=[...])`` takes one target per sample: an int (a class, as
:class:`Class`) or one of the objects below, each pytorch-grad-cam's target of the same name in
spirit. The seed (the score's cotangent, shaped like the scored output) is built as graph nodes
from per-sample inputs (a category and a mask, a vector, a weight tensor), so an exported
explainer can take targets as inputs too.

- :class:`Class` ``(c)``: out[c] of an (N, C) score (``ClassifierOutputTarget``).
- :class:`Segmentation` ``(category, mask)``: Σ mask · out[category] over an (N, C, H, W) output
  (``SemanticSegmentationTarget``); without a mask, the pixels the model assigns to the category
  (the seed kind :data:`PREDICTED`: the mask is read in the graph from its own forward pass).
- :class:`Similarity` ``(vector)``: cosine similarity of an (N, D) output with ``vector``
  (``SimilarityToConceptTarget``).
- :class:`Output` ``(index, output=None)``: one element, or the sum of a slice, of any output
  (regression values, binary heads, a YOLO-style box score ``(4 + cls, anchor)``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper

from onnx_gradcam.autodiff.emitter import Emitter, Value
from onnx_gradcam.errors import OnnxGradCamError
from onnx_gradcam.graph import Shape

#: graph inputs of the seeds (per sample: the batch axis first)
CATEGORY = "ogc_category"  # int64 (N,)
MASK = "ogc_mask"  # (N, H, W)
VECTOR = "ogc_vector"  # (N, D)
INDEX = "ogc_index"  # int64 (N, K, rank − 1): the elements each sample's score sums
INDEX_WEIGHT = "ogc_index_weight"  # (N, K): 1, or 0 where a sample has fewer than K elements


@dataclass(frozen=True)
class Class:
    """The score of class ``c`` in an (N, C) output (an int target means the same)."""

    c: int


@dataclass(frozen=True, eq=False)
class Segmentation:
    """Σ mask · out[category] over an (N, C, H, W) output; ``mask`` (H, W), float or bool, or
    None: the pixels whose argmax over C is ``category`` (pytorch-grad-cam's tutorial mask), read
    from the explainer graph's own forward pass; where there is no such pixel the result's
    label is −1 and its map means nothing."""

    category: int
    mask: Any = None

    def __post_init__(self) -> None:
        if self.mask is None:
            return
        mask = np.asarray(self.mask)
        if mask.ndim != 2 or mask.dtype.kind not in "biuf":
            raise OnnxGradCamError(f"Segmentation mask must be a 2-D (H, W) array of floats or "
                                   f"bools, got {mask.dtype} {mask.shape}")
        object.__setattr__(self, "mask", mask)


@dataclass(frozen=True, eq=False)
class Similarity:
    """Cosine similarity of an (N, D) output (e.g. an embedding) with ``vector`` (D,)."""

    vector: Any

    def __post_init__(self) -> None:
        vector = np.asarray(self.vector)
        if vector.dtype.kind not in "iuf" or vector.size == 0:
            raise OnnxGradCamError(f"Similarity vector must hold numbers, got {vector.dtype} "
                                   f"{vector.shape}")
        object.__setattr__(self, "vector", vector.reshape(-1))


@dataclass(frozen=True)
class Output:
    """out[index] of one sample: an int or a tuple over the output's axes after the batch (slices
    allowed: the sum over the slice). ``output`` names the graph output it reads; it must be the
    explainer's scored output (``Explainer(model, output=NAME)``)."""

    index: Any
    output: str | None = None


Target = int | Class | Segmentation | Similarity | Output
KINDS = {Segmentation: "segmentation", Similarity: "similarity", Output: "output"}
#: the seed kind of a :class:`Segmentation` without a mask: its only input is the category
PREDICTED = "predicted_segmentation"
#: every seed kind (what ``Explainer.export(target_kind=...)`` takes)
SEED_KINDS = (*KINDS.values(), PREDICTED)


def kind_of(targets: Sequence[Any]) -> str | None:
    """The seed kind of a list of targets: None for classes (ints, :class:`Class`, anything
    else the class check refuses), else one of :data:`SEED_KINDS`; refused when kinds are
    mixed in one batch."""
    kinds = {PREDICTED if isinstance(t, Segmentation) and t.mask is None else KINDS.get(type(t))
             for t in targets}
    if len(kinds) > 1:
        raise OnnxGradCamError("targets of different kinds in one batch: explain each kind "
                               "in its own call")
    return kinds.pop() if kinds else None


def classes(targets: Sequence[Any]) -> list[Any]:
    """``targets`` with each :class:`Class` replaced by its index (the rest is checked as
    class indices)."""
    return [t.c if isinstance(t, Class) else t for t in targets]


def feeds(kind: str, targets: Sequence[Any], output: str, shape: Shape | None,
          dtype: np.dtype) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """The graph inputs of the targets' seeds, and the int64 (N,) label each result reports
    (the category, the flat index of a one-element :class:`Output`, else −1; None for
    :data:`PREDICTED`: the graph's own, −1 where a predicted mask is empty)."""
    n = len(targets)
    tail = None if shape is None else tuple(shape[1:])
    if kind in ("segmentation", PREDICTED):
        if tail is not None and len(tail) != 3:
            raise OnnxGradCamError(f"Segmentation scores an (N, C, H, W) output; {output!r} is "
                                   f"{shape}: pick another with output=NAME")
        category = np.array([t.category for t in targets], dtype=np.int64)
        if tail is not None and tail[0] is not None and ((category < 0) | (
                category >= tail[0])).any():
            raise OnnxGradCamError(f"Segmentation category out of range: output {output!r} "
                                   f"has {tail[0]} categories")
        if kind == PREDICTED:
            return {CATEGORY: category}, None
        masks = [t.mask for t in targets]
        if len({m.shape for m in masks}) > 1:
            raise OnnxGradCamError("Segmentation masks of one batch differ in size")
        if tail is not None and None not in tail[1:] and masks[0].shape != tail[1:]:
            raise OnnxGradCamError(f"Segmentation mask is {masks[0].shape}; output {output!r} "
                                   f"is {shape}: the mask must be (H, W) = {tail[1:]}")
        return ({CATEGORY: category, MASK: np.stack(masks).astype(dtype)}, category)
    if kind == "similarity":
        vectors = [t.vector for t in targets]
        size = int(np.prod(tail)) if tail is not None and None not in tail else None
        if len({v.size for v in vectors}) > 1 or (size is not None and vectors[0].size != size):
            raise OnnxGradCamError(f"Similarity vector has {vectors[0].size} values; output "
                                   f"{output!r} is {shape}")
        return {VECTOR: np.stack(vectors).astype(dtype)}, np.full(n, -1, dtype=np.int64)
    for t in targets:
        if t.output is not None and t.output != output:
            raise OnnxGradCamError(f"Output target reads {t.output!r}, but this explainer scores "
                                   f"{output!r}: create it with output={t.output!r}")
    elements = [_elements(t.index, tail, output, shape) for t in targets]
    k = max(len(e) for e in elements)
    index = np.zeros((n, k, len(tail or ())), dtype=np.int64)
    weight = np.zeros((n, k), dtype=dtype)
    for i, e in enumerate(elements):
        index[i, :len(e)], index[i, len(e):] = e, e[0]
        weight[i, :len(e)] = 1
    static = tail is not None and None not in tail
    labels = np.array([np.ravel_multi_index(e[0], tail) if static and len(e) == 1 else -1
                       for e in elements], dtype=np.int64)
    return {INDEX: index, INDEX_WEIGHT: weight}, labels


def _elements(index: Any, tail: tuple | None, output: str, shape: Shape | None
              ) -> list[tuple[int, ...]]:
    """The elements (each a tuple over the axes after the batch) an :class:`Output` index
    selects; axes it leaves out are taken whole. Negative and open-ended parts need the axis'
    size, from the output's static shape."""
    parts = index if isinstance(index, tuple) else (index,)
    if tail is None or len(parts) > len(tail):
        raise OnnxGradCamError(f"Output index {index!r} does not fit output {output!r} {shape}")
    parts = parts + (slice(None),) * (len(tail) - len(parts))
    axes = []
    for part, dim in zip(parts, tail):
        if isinstance(part, slice):
            if dim is not None:
                values = list(range(*part.indices(dim)))
            elif part.stop is None or part.stop < 0 or (part.start or 0) < 0:
                raise OnnxGradCamError(f"Output index {index!r}: output {output!r} is {shape}; "
                                       "give slices explicit non-negative bounds on its "
                                       "symbolic axes")
            else:
                values = list(range(part.start or 0, part.stop, part.step or 1))
        elif isinstance(part, (int, np.integer)):
            if dim is None and part < 0:
                raise OnnxGradCamError(f"Output index {index!r}: a negative index on a symbolic "
                                       f"axis of {output!r} {shape}")
            if dim is not None and not -dim <= part < dim:
                raise OnnxGradCamError(f"Output index {index!r} is out of range for output "
                                       f"{output!r} {shape}")
            values = [int(part) % dim if dim is not None else int(part)]
        else:
            raise OnnxGradCamError(f"Output index {index!r}: use ints and slices")
        if not values:
            raise OnnxGradCamError(f"Output index {index!r} selects nothing of {output!r}")
        axes.append(values)
    return list(itertools.product(*axes))


def seed_inputs(kind: str, dtype: np.dtype, shape: Shape | None) -> list[onnx.ValueInfoProto]:
    """The graph inputs a kind's seed reads (value infos)."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    rank = len(shape) - 1 if shape else "R"
    names = {"segmentation": [(CATEGORY, onnx.TensorProto.INT64, ["N"]),
                              (MASK, elem, ["N", "H", "W"])],
             PREDICTED: [(CATEGORY, onnx.TensorProto.INT64, ["N"])],
             "similarity": [(VECTOR, elem, ["N", "D"])],
             "output": [(INDEX, onnx.TensorProto.INT64, ["N", "K", rank]),
                        (INDEX_WEIGHT, elem, ["N", "K"])]}[kind]
    return [helper.make_tensor_value_info(n, e, s) for n, e, s in names]


def seed_nodes(op: Emitter, kind: str, score: str, shape: Shape | None
               ) -> tuple[Value, Value, Value]:
    """(seed shaped like ``score``, the target's score (N, 1), the int64 (N,) label: the
    category, or −1 where it has none or its predicted mask is empty) as graph nodes reading
    the inputs of :func:`seed_inputs`."""
    label = None
    if kind in ("segmentation", PREDICTED):
        channels = shape[1] if shape is not None and shape[1] is not None else None
        count = op.const([channels]) if channels else op.dims(score, 1, 2)
        indices = op.Range(op.const(0), op.squeeze(count, [0]), op.const(1))
        hot = op.Cast(op.Equal(op.unsqueeze(CATEGORY, [1]), indices), to=op.float_type)
        mask, label = MASK, CATEGORY
        if kind == PREDICTED:  # the first maximum, as numpy's argmax; no gradient flows here
            mask = op.Cast(op.Equal(op.ArgMax(score, axis=1, keepdims=0, select_last_index=0),
                                    op.unsqueeze(CATEGORY, [1, 2])), to=op.float_type)
            pixels = op.reduce("ReduceSum", mask, [1, 2], keepdims=0)
            label = op.Where(op.Greater(pixels, op.const(0.0)), CATEGORY, op.const([-1]))
        seed = op.Mul(op.unsqueeze(hot, [2, 3]), op.unsqueeze(mask, [1]))
    elif kind == "similarity":
        # d cos(x, v)/dx = v̂/|x| − cos·x/|x|², cos = x·v̂/|x| (v̂ = v/|v|)
        x = op.Flatten(score, axis=1)
        v = op.Div(VECTOR, _norm(op, VECTOR))
        norm = _norm(op, x)
        cos = op.Div(op.reduce("ReduceSum", op.Mul(x, v), [1]), norm)
        flat = op.Sub(op.Div(v, norm), op.Mul(cos, op.Div(x, op.Mul(norm, norm))))
        seed = flat if shape is not None and len(shape) == 2 else op.Reshape(flat,
                                                                              op.Shape(score))
        return seed, cos, _no_label(op, score)
    else:  # Σ over the listed elements: the weights scattered into zeros shaped like the score
        zeros = op.ConstantOfShape(op.Shape(score), value=helper.make_tensor(
            "zero", helper.np_dtype_to_tensor_dtype(np.dtype(op.dtype)), [1], [0]))
        count = op.Shape(INDEX_WEIGHT)  # [N, K]
        batch = op.Expand(op.Reshape(op.Range(op.const(0), op.Gather(count, op.const(0)),
                                              op.const(1)), op.const([-1, 1, 1])),
                          op.Concat(count, op.const([1]), axis=0))
        seed = op.ScatterND(zeros, op.Concat(batch, INDEX, axis=2), INDEX_WEIGHT,
                            reduction="add")
    return (seed, op.reduce("ReduceSum", op.Flatten(op.Mul(seed, score), axis=1), [1]),
            label or _no_label(op, score))


def _no_label(op: Emitter, score: str) -> Value:
    """−1 per sample (N,): a target with no class of its own."""
    return op.ConstantOfShape(op.dims(score, 0, 1), value=helper.make_tensor(
        "minus_one", onnx.TensorProto.INT64, [1], [-1]))


def _norm(op: Emitter, x: Value) -> Value:
    """|x| per row (N, 1), floored at torch's cosine-similarity eps (1e-8)."""
    return op.Max(op.Sqrt(op.reduce("ReduceSum", op.Mul(x, x), [1])), op.const(1e-8))
