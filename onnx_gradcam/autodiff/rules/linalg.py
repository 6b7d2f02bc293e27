"""Matrix products."""

from __future__ import annotations

from onnx_gradcam.autodiff.emitter import Emitter, Node, Value
from onnx_gradcam.autodiff.folding import scale
from onnx_gradcam.autodiff.registry import vjp
from onnx_gradcam.autodiff.rules._common import Dys, unbroadcast


@vjp("Gemm")
def gemm_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """Y = α·A'B' + β·C with A' = Aᵀ if transA, B' = Bᵀ if transB:
    dA = α·dY·B'ᵀ (transposed back if transA), dB = α·A'ᵀ·dY (likewise), dC = β·dY summed to C."""
    a, b = node.inputs[0], node.inputs[1]
    dy = dys[0]
    alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
    ta, tb = int(node.attr("transA", 0)), int(node.attr("transB", 0))
    out: list[Value | None] = [_gemm_da(op, dy, b, alpha, ta, tb),
                               _gemm_db(op, dy, a, alpha, ta, tb)]
    if node.input(2) is not None:
        dc = dy if beta == 1.0 else op.Mul(dy, beta)
        out.append(unbroadcast(op, dc, node.inputs[2], node.outputs[0]))
    return out


def _gemm_da(op: Emitter, dy: Value, b: str, alpha: float, ta: int, tb: int) -> Value:
    """dA = α·dY·B'ᵀ (transposed back if transA); for a one-hot dY, α·(rows of B'ᵀ)."""
    if ta:
        return op.Gemm(b, dy, alpha=alpha, transA=tb, transB=1)
    if op.is_one_hot(dy):
        da = op.rows_product(dy, b if tb else op.Transpose(b, perm=[1, 0]))
        return da if alpha == 1.0 else scale(op, da, "Mul", alpha)
    return op.Gemm(dy, b, alpha=alpha, transA=0, transB=1 - tb)


def _gemm_db(op: Emitter, dy: Value, a: str, alpha: float, ta: int, tb: int) -> Value:
    """dB = α·A'ᵀ·dY (transposed back if transB)."""
    if tb:
        return op.Gemm(dy, a, alpha=alpha, transA=1, transB=ta)
    return op.Gemm(a, dy, alpha=alpha, transA=1 - ta, transB=0)


def _swap_last(op: Emitter, x: Value, rank: int) -> Value:
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    return op.Transpose(x, perm=perm)


@vjp("MatMul")
def matmul_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """Y = A·B (batched, broadcasting): dA = dY·Bᵀ, dB = Aᵀ·dY, each summed to its input's
    shape. A 1-D B is a column: dA = dY ⊗ B, dB = Σ A·dY."""
    a, b = node.inputs
    y, dy = node.outputs[0], dys[0]
    rank_a, rank_b = op.rank(a), op.rank(b)
    if rank_a < 2:
        raise ValueError(f"MatMul {node.name!r}: a 1-D first operand is not supported")
    if rank_b == 1:
        return _matmul_column(op, a, b, dy, rank_a)
    rank_y = op.rank(y)
    if rank_y == 2 and rank_b == 2:
        da = op.rows_product(dy, _swap_last(op, b, rank_b))
    else:
        da = op.MatMul(dy, _swap_last(op, b, rank_b))
    db = op.MatMul(_swap_last(op, a, rank_a), dy)
    return [_unbroadcast_batch(op, da, a, rank_y), _unbroadcast_batch(op, db, b, rank_y)]


def _matmul_column(op: Emitter, a: str, b: str, dy: Value, rank_a: int) -> list[Value | None]:
    """Y = A·b for a 1-D b (a column, its axis dropped): dA = dY ⊗ b, db = Σ A·dY."""
    dy_col = op.unsqueeze(dy, [-1])
    da = op.Mul(dy_col, b)
    db = op.reduce("ReduceSum", op.Mul(a, dy_col), list(range(rank_a - 1)), keepdims=0)
    return [da, db]


def _unbroadcast_batch(op: Emitter, d: Value, x: str, rank_y: int) -> Value:
    """Sum a product-shaped gradient over the batch axes that ``x`` broadcast."""
    x_shape = op.shape(x)
    assert x_shape is not None
    lead = rank_y - len(x_shape)
    if lead > 0:
        d = op.reduce("ReduceSum", d, list(range(lead)), keepdims=0)
    axes = [i for i, dim in enumerate(x_shape[:-2]) if dim == 1]
    if axes:
        d = op.reduce("ReduceSum", d, axes, keepdims=1)
    return d


@vjp("Einsum")
def einsum_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """Y = einsum(terms → out): the cotangent of operand i is the einsum of dY with the other
    operands into operand i's term; a letter only operand i has (summed over there) is
    broadcast back. Refused: a letter repeated within one term (a diagonal), and an ellipsis
    that broadcasts (an operand's ``...`` smaller than the output's)."""
    terms, out = _einsum_terms(node)
    dy = dys[0]
    grads: list[Value | None] = []
    for i, (term, x) in enumerate(zip(terms, node.inputs)):
        others = [t for j, t in enumerate(terms) if j != i]
        if len(set(term.replace("...", ""))) != len(term.replace("...", "")):
            raise ValueError(f"Einsum {node.name!r}: a letter repeated in {term!r} (a diagonal)")
        if "..." in term:
            _check_ellipsis(op, node, x, term, out)
        seen = set(out) | {c for t in others for c in t}
        letters = term.replace("...", "")
        kept = "".join(c for c in letters if c in seen)
        lead = "..." if "..." in term else ""
        equation = ",".join([out, *others]) + "->" + lead + kept
        grad = op.Einsum(dy, *[v for j, v in enumerate(node.inputs) if j != i],
                         equation=equation)
        if kept != letters:  # letters summed inside this operand: broadcast the cotangent back
            offset = op.rank(x) - len(letters)
            missing = [offset + k for k, c in enumerate(letters) if c not in seen]
            grad = op.Expand(op.unsqueeze(grad, missing), op.Shape(x))
        grads.append(grad)
    return grads


def _einsum_terms(node: Node) -> tuple[list[str], str]:
    """The operand terms and the output term of an Einsum (implicit form made explicit)."""
    equation = node.attr("equation")
    equation = (equation.decode() if isinstance(equation, bytes) else equation).replace(" ", "")
    left, _, right = equation.partition("->")
    terms = left.split(",")
    if "->" not in equation:  # implicit: the letters used once, in alphabetical order
        letters = [c for t in terms for c in t.replace("...", "")]
        right = ("..." if "..." in left else "") + "".join(
            sorted(c for c in set(letters) if letters.count(c) == 1))
    return terms, right


def _check_ellipsis(op: Emitter, node: Node, x: str, term: str, out: str) -> None:
    """An operand's ``...`` must cover the output's broadcast axes exactly (static shapes)."""
    x_shape, y_shape = op.shape(x), op.shape(node.outputs[0])
    if "..." not in out or x_shape is None or y_shape is None:
        raise ValueError(f"Einsum {node.name!r}: an ellipsis needs static shapes and the "
                         "output's ellipsis")
    x_dims = x_shape[:len(x_shape) - len(term.replace("...", ""))]
    y_dims = y_shape[:len(y_shape) - len(out.replace("...", ""))]
    if tuple(x_dims) != tuple(y_dims):
        raise ValueError(f"Einsum {node.name!r}: the ellipsis of {term!r} broadcasts")
