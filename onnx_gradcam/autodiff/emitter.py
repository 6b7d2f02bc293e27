"""Emit ONNX nodes that read like the math: ``dx = op.Where(op.Greater(x, 0.0), dy, 0.0)``.

Values are tensor names (``str``). Python numbers and numpy arrays passed as inputs become
initializers (floats take the head's float dtype, ints become int64). Every op type is checked
against the ONNX schema at the model's opset, so a misspelled op fails at once, not at run time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Union

import numpy as np
import onnx
from onnx import helper, numpy_helper

Value = str
Operand = Union[str, float, int, np.ndarray, None]  # noqa: UP007 (a runtime alias)


#: Ops whose inputs broadcast against each other. A Python number given to one of them becomes
#: a constant of the other operands' rank, all dims 1, not a rank-0 scalar: ONNX Runtime's CPU
#: kernels run a tensor with trailing unit dims, like a head's (N, C, 1, 1), against a rank-0
#: scalar one element at a time, and against a (1, 1, 1, 1) constant as one vectorised loop.
BROADCASTING = {"Add", "Sub", "Mul", "Div", "Pow", "Mod", "Max", "Min", "Sum", "Mean",
                "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or",
                "Xor", "Where", "BitShift"}
#: Ops whose result has the largest rank among their inputs (rank tracking for the above).
ELEMENTWISE = BROADCASTING | {
    "Relu", "Neg", "Abs", "Exp", "Log", "Sqrt", "Reciprocal", "Sigmoid", "Tanh", "Erf",
    "Not", "Cast", "Sign", "Floor", "Ceil", "Identity", "Clip", "Softplus", "HardSigmoid",
    "LeakyRelu", "Elu", "Selu", "IsNaN", "IsInf", "Cos", "Sin"}


@dataclass
class Node:
    """A read-only view of a forward node for VJP rules."""

    op_type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any]

    @classmethod
    def from_proto(cls, proto: onnx.NodeProto) -> Node:
        attrs = {a.name: helper.get_attribute_value(a) for a in proto.attribute}
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
        return cls(proto.op_type, proto.name, list(proto.input), list(proto.output), attrs)

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)

    def input(self, i: int) -> str | None:
        """The i-th input's name, or None where it is absent or empty (optional inputs)."""
        return self.inputs[i] if i < len(self.inputs) and self.inputs[i] else None


class OneHot(NamedTuple):
    """What :attr:`Emitter.one_hot` knows of a tensor of one-hot rows (M, C)."""

    classes: str  # int64 (M,), each in 0..C−1: where each row's one sits
    #: whether its shape has one non-unit axis besides the batch, statically: then a reshape to
    #: another such shape keeps every row's order, so its result is one-hot too
    kept: bool
    factor: str | None = None  # (M, 1): each row's value at its class (None: 1)


@dataclass
class Emitter:
    """Collects the nodes and constants of a gradient graph.

    ``shapes`` holds the static shapes known from shape inference (``None`` for a symbolic dim),
    ``constants`` the values of the forward graph's initializers and Constant nodes.

    Besides the nodes it keeps two facts that only the emitting rule knows and no pass could
    read back from the graph: :attr:`broadcasts` (which axes of a broadcast's source have size
    1, also where shapes are symbolic) and :attr:`one_hot` (which tensors are one-hot rows, and
    whether their forward shape lets a reshape keep them so, from the forward shapes the
    emitted graph does not carry). Rules do not feed them: :meth:`broadcast`,
    :meth:`mark_one_hot` and the reshape helpers do.
    """

    opset: int
    dtype: np.dtype
    shapes: dict[str, tuple[int | None, ...]] = field(default_factory=dict)
    constants: Mapping[str, np.ndarray] = field(default_factory=dict)
    prefix: str = "ogc_grad/"
    #: forward constants that are also graph inputs (a caller may feed them; never folded)
    overridable: frozenset[str] = frozenset()
    #: the forward node that makes each forward tensor (for rules whose result depends on where
    #: their input comes from: a QuantizeLinear of values already on its grid clips nothing)
    producers: Mapping[str, onnx.NodeProto] = field(default_factory=dict)
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    _count: int = 0
    _const_cache: dict[tuple, str] = field(default_factory=dict)
    _const_values: dict[str, np.ndarray] = field(default_factory=dict)
    _ranks: dict[str, int] = field(default_factory=dict)  # of emitted element-wise results
    #: results of :meth:`broadcast` → (the tensor they broadcast, its size-1 axes)
    broadcasts: dict[str, tuple[str, tuple[int, ...]]] = field(default_factory=dict)
    #: tensors known to be one-hot rows (M, C) (flattened per row), each row possibly times a
    #: factor → :class:`OneHot`
    one_hot: dict[str, OneHot] = field(default_factory=dict)
    #: emitted tensors → the forward tensor whose shape (symbolic sizes too) they have, for
    #: products ONNX Runtime can run in a convolution's blocked layout (see
    #: :func:`~onnx_gradcam.autodiff.builder.shaped_values`)
    shaped_like: dict[str, str] = field(default_factory=dict)

    # ---- naming and constants -------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}{hint}_{self._count}"

    def const(self, value: float | int | Sequence | np.ndarray, dtype: Any = None) -> Value:
        """An initializer holding ``value`` (python floats → the head's dtype, ints → int64)."""
        if dtype is None:
            if isinstance(value, np.ndarray):
                dtype = value.dtype
            elif isinstance(value, float) or (
                isinstance(value, (list, tuple)) and any(isinstance(v, float) for v in value)
            ):
                dtype = self.dtype
            else:
                dtype = np.int64
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._const_cache:
            name = self.fresh("const")
            self.initializers.append(numpy_helper.from_array(array, name))
            self._const_cache[key] = name
            self._const_values[name] = array
        return self._const_cache[key]

    def value_of(self, name: str | None) -> np.ndarray | None:
        """The value of a forward initializer/Constant or of a constant made by :meth:`const`;
        None where it is computed at run time."""
        if name is None:
            return None
        known = self._const_values.get(name)
        return known if known is not None else self.constants.get(name)

    def _operand(self, value: Operand, rank: int | None = None) -> str:
        """A tensor name for ``value``; a Python number (or a forward scalar constant) beside
        tensors of known ``rank`` becomes a constant of that rank, all dims 1 (see
        :data:`BROADCASTING`)."""
        if value is None:
            return ""
        if isinstance(value, str):
            shape = self.shapes.get(value)
            single = shape is None or all(d == 1 for d in shape)  # look at values only then
            known = self.constants.get(value) if rank and single else None
            if (known is not None and known.size == 1 and known.ndim < rank
                    and value not in self.overridable):  # a forward scalar: the same, reshaped
                return self.const(known.reshape((1,) * rank))
            return value
        if rank and isinstance(value, (int, float)) and not isinstance(value, bool):
            dtype = self.dtype if isinstance(value, float) else np.int64
            return self.const(np.full((1,) * rank, value, dtype=dtype))
        return self.const(value)

    def know_rank(self, name: str, rank: int) -> None:
        """Record the rank of a tensor made elsewhere (another emitter's output)."""
        self._ranks[name] = rank

    def known_rank(self, name: str) -> int | None:
        """The rank of a forward tensor or of an emitted element-wise result, if known."""
        shape = self.shapes.get(name)
        return len(shape) if shape is not None else self._ranks.get(name)

    # ---- emitting ----------------------------------------------------------------------------
    def emit(self, op_type: str, *inputs: Operand, outputs: int = 1, domain: str = "",
             **attrs: Any) -> Any:
        """Append one node; returns its output name (or a list of names if ``outputs > 1``)."""
        if not onnx.defs.has(op_type, domain):
            raise ValueError(f"unknown ONNX op {op_type!r}")
        names = [self.fresh(op_type) for _ in range(outputs)]
        rank = None
        if op_type in ELEMENTWISE and not domain:
            ranks = [r for r in (self.known_rank(i) for i in inputs if isinstance(i, str))
                     if r is not None]
            rank = max(ranks, default=None)
            if rank is not None:
                self._ranks[names[0]] = rank
        scalars_ok = op_type in BROADCASTING and not domain
        self.nodes.append(helper.make_node(
            op_type, [self._operand(i, rank if scalars_ok else None) for i in inputs], names,
            name=self.fresh(op_type + "_node"), domain=domain,
            **{k: v for k, v in attrs.items() if v is not None}))
        return names[0] if outputs == 1 else names

    def __getattr__(self, op_type: str) -> Callable[..., Any]:
        if not op_type[:1].isupper():
            raise AttributeError(op_type)
        return lambda *inputs, **kw: self.emit(op_type, *inputs, **kw)

    # ---- static facts ------------------------------------------------------------------------
    @property
    def float_type(self) -> int:
        """The ONNX element type of the float dtype (for ``Cast(…, to=…)``)."""
        return helper.np_dtype_to_tensor_dtype(np.dtype(self.dtype))

    def shape(self, name: str) -> tuple[int | None, ...] | None:
        """The static shape of a forward tensor (dims None where symbolic), or None if unknown."""
        return self.shapes.get(name)

    def know_shape(self, name: str, shape: tuple[int | None, ...] | None) -> None:
        """Record the static shape of the emitted tensor ``name`` (a rule that runs another op's
        rule on dequantized copies of the forward tensors)."""
        if shape is not None:
            self.shapes = {**self.shapes, name: tuple(shape)}  # never the caller's dict

    def rank(self, name: str) -> int:
        """The rank of a forward tensor, or a ValueError naming it where shape inference gave
        none (:meth:`known_rank` also knows emitted element-wise results, and says None)."""
        shape = self.shapes.get(name)
        if shape is None:
            raise ValueError(f"rank of tensor {name!r} is unknown (shape inference gave none)")
        return len(shape)

    # ---- opset-aware helpers -----------------------------------------------------------------
    def reduce(self, op_type: str, x: Operand, axes: Sequence[int], keepdims: int = 1) -> Value:
        """``ReduceSum``/``ReduceMean``/… over ``axes``; axes as input or attribute by opset."""
        axes = [int(a) for a in axes]
        input_axes_since = 13 if op_type == "ReduceSum" else 18
        if self.opset >= input_axes_since:
            return self.emit(op_type, x, self.const(axes), keepdims=keepdims)
        return self.emit(op_type, x, axes=axes, keepdims=keepdims)

    def dims(self, x: Operand, start: int, end: int) -> Value:
        """Shape(x)[start:end] as int64 (one node from opset 15 on); a constant where those
        dims are static, so the graph does not read ``x`` for them (a Shape is a consumer: of a
        DequantizeLinear that ONNX Runtime fuses into an integer kernel, it costs a float copy
        of the tensor per call)."""
        shape = self.shape(x) if isinstance(x, str) else None
        if shape is not None and all(d is not None for d in shape[start:end]):
            return self.const([int(d) for d in shape[start:end]])
        if self.opset >= 15:
            return self.emit("Shape", x, start=start, end=end)
        return self.emit("Slice", self.emit("Shape", x), self.const([start]), self.const([end]))

    def unsqueeze(self, x: Operand, axes: Sequence[int]) -> Value:
        if self.opset >= 13:
            return self.emit("Unsqueeze", x, self.const(list(axes)))
        return self.emit("Unsqueeze", x, axes=list(axes))

    def squeeze(self, x: Operand, axes: Sequence[int]) -> Value:
        if self.opset >= 13:
            return self.emit("Squeeze", x, self.const(list(axes)))
        return self.emit("Squeeze", x, axes=list(axes))

    def reshape_target(self, like: str) -> list[int] | None:
        """``like``'s shape as a constant Reshape target (a symbolic dim, at most one, as −1),
        or None where it is not known well enough."""
        shape = self.shape(like)
        if shape is None or sum(d is None for d in shape) > 1 or 0 in shape:
            return None
        return [-1 if d is None else int(d) for d in shape]

    def reshape_like(self, x: Operand, like: str) -> Value:
        """``x`` (as many values as ``like``) in ``like``'s shape: a constant target where the
        shape is static enough (no Shape node per run, and Reshape chains fold:
        :func:`onnx_gradcam.passes.fold_reshapes`), else Shape(like)."""
        target = self.reshape_target(like)
        if target is not None:
            out = self.emit("Reshape", x, self.const(target))
        else:
            out = self.emit("Reshape", x, self.emit("Shape", like))
        return self._keep_one_hot(x, out, like)

    def transpose_like(self, x: Operand, perm: Sequence[int], like: str) -> Value:
        """``Transpose(x, perm)``, whose result has ``like``'s shape. Where the axes it moves
        have size 1 (the order of the values stays: (N, 1, 1, C) ↔ (N, C, 1, 1)), a Reshape,
        which costs nothing and folds into neighbouring Reshapes."""
        target = self.reshape_target(like)  # a symbolic dim is −1: never a unit axis
        out = None
        if target is not None and len(target) == len(perm):
            moved = [p for p, d in zip(perm, target) if d != 1]
            if moved == sorted(moved):
                out = self.emit("Reshape", x, self.const(target))
        if out is None:
            out = self.emit("Transpose", x, perm=[int(p) for p in perm])
        return self._keep_one_hot(x, out, like) if perm[0] == 0 else out

    def rows(self, x: Value, columns: int | None) -> Value:
        """``x`` as 2-D (M, ``columns``) (None: whatever is left), its batch axis kept."""
        out = self.emit("Reshape", x, self.const([-1, columns] if columns else [0, -1]))
        if x in self.one_hot and self.one_hot[x].kept:
            self.one_hot[out] = self.one_hot[x]._replace(kept=bool(columns))
        return out

    # ---- one-hot rows ------------------------------------------------------------------------
    def mark_one_hot(self, name: Value, classes: Value, like: str,
                     factor: Value | None = None) -> None:
        """Record that ``name``, shaped like the forward tensor ``like``, holds one-hot rows
        with the int64 class indices ``classes``, each row times ``factor`` (M, 1) if given."""
        self.one_hot[name] = OneHot(classes, self._one_axis(like), factor)

    def is_one_hot(self, name: Value) -> bool:
        return name in self.one_hot

    def _one_axis(self, name: str) -> bool:
        """Whether ``name``'s shape is static with at most one non-unit axis besides the batch
        ((N, C), (N, C, 1, 1), (N, 1, 1, C)): reshapes between such shapes keep every row."""
        shape = self.shape(name)
        return (shape is not None and None not in shape[1:]
                and sum(d != 1 for d in shape[1:]) <= 1)

    def _keep_one_hot(self, src: Operand, dst: Value, like: str) -> Value:
        """``dst``, the values of ``src`` laid out like the forward tensor ``like``: one-hot
        rows too where ``src`` is and both shapes keep every row's order."""
        if isinstance(src, str) and src in self.one_hot:
            entry = self.one_hot[src]
            if entry.kept and self._one_axis(like):
                self.one_hot[dst] = entry
        return dst

    def masked(self, mask: Value, x: Value, like: str) -> Value:
        """``x`` where the boolean ``mask`` holds, 0 elsewhere (``mask`` and ``x`` shaped like
        the forward tensor ``like``), as the product ``x · mask``: ONNX Runtime's CPU Where runs
        several times slower than a Mul (a cotangent is finite, so the product is exact; a
        non-finite one stays non-finite where masked out, which the explainer reports). Where
        ``x`` is one-hot rows, so is the result, each row times its mask value at its class: a
        product with it stays a gather of rows."""
        factor = self.emit("Cast", mask, to=self.float_type)
        out = self.emit("Mul", x, factor)
        entry = self.one_hot.get(x)
        if entry is not None:
            hit = self.emit("GatherElements", self.rows(factor, None),
                            self.unsqueeze(entry.classes, [1]), axis=1)
            if entry.factor is not None:
                hit = self.emit("Mul", entry.factor, hit)
            self.mark_one_hot(out, entry.classes, like, hit)
        return out

    def rows_product(self, dy: Value, matrix: Value) -> Value:
        """``dy · matrix`` for a 2-D ``dy`` (M, C) and ``matrix`` (C, K); where ``dy`` is known
        one-hot (:attr:`one_hot`) that product is exactly the selected rows, so it is emitted
        as a ``Gather`` that reads M rows instead of the whole matrix (a classifier's last
        weight, read whole per image otherwise; :func:`~onnx_gradcam.autodiff.folding.scale`
        folds a scaling into the matrix); rows with a factor are scaled after the gather."""
        if dy not in self.one_hot:
            return self.emit("MatMul", dy, matrix)
        entry = self.one_hot[dy]
        rows = self.emit("Gather", matrix, entry.classes, axis=0)
        return rows if entry.factor is None else self.emit("Mul", rows, entry.factor)

    def broadcast(self, x: Value, like: str, axes: Sequence[int]) -> Value:
        """``Expand(x, Shape(like))`` for an ``x`` of ``like``'s rank that has size 1 along
        ``axes``, remembered so that a consumer that only needs a reduction of the result can
        reduce ``x`` instead. Where ``like``'s sizes along ``axes`` are static, the target is a
        constant with 1 for its other dims (Expand broadcasts both ways: x keeps them)."""
        shape = self.shape(like)
        if shape is not None and all(shape[a] is not None for a in axes):
            target = [int(d) if a in axes else 1 for a, d in enumerate(shape)]
            out = self.emit("Expand", x, self.const(target))
        else:
            out = self.emit("Expand", x, self.emit("Shape", like))
        self.broadcasts[out] = (x, tuple(axes))
        return out

    def zeros_like(self, like: str) -> Value:
        return self.emit("Expand", self.const(0.0), self.emit("Shape", like))

