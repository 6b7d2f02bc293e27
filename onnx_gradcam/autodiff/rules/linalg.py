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
