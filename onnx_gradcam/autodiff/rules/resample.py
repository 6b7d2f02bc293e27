"""Resampling: ``Resize``, differentiated through its own interpolation matrices."""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from onnx_gradcam.autodiff.emitter import Emitter, Node, Value
from onnx_gradcam.autodiff.registry import vjp
from onnx_gradcam.autodiff.rules._common import Dys

#: the attributes that define the 1-D interpolation (``axes`` and the sizes policy do not)
INTERPOLATION = ("mode", "coordinate_transformation_mode", "cubic_coeff_a", "exclude_outside",
                 "nearest_mode", "antialias")


def _scales(op: Emitter, node: Node) -> str | None:
    """The node's ``scales`` input, or None where it resizes by ``sizes`` (scales absent or
    an empty tensor, as older exporters write it)."""
    name = node.input(2)
    if name is None or op.shape(name) == (0,):
        return None
    value = op.value_of(name)
    return None if value is not None and value.size == 0 else name


def _is_identity(op: Emitter, node: Node, axis: int, index: int) -> bool:
    """Whether the node provably leaves ``axis`` alone (scale 1, or size = the static dim)."""
    scales = _scales(op, node)
    if scales is not None:
        value = op.value_of(scales)
        return value is not None and bool(value[index] == 1.0)
    sizes, shape = op.value_of(node.input(3)), op.shape(node.inputs[0])
    return sizes is not None and shape is not None and shape[axis] == int(sizes[index])


def interpolation_matrix(op: Emitter, node: Node, axis: int, index: int) -> Value:
    """R (out, in) with y = R·x along ``axis``: the node's own interpolation applied to an
    identity matrix (as a (1, 1, in, in) image resized along its third axis only)."""
    x, y = node.inputs[0], node.outputs[0]
    size_in, size_out = op.dims(x, axis, axis + 1), op.dims(y, axis, axis + 1)
    zero = numpy_helper.from_array(np.zeros(1, dtype=op.dtype))
    eye = op.EyeLike(op.ConstantOfShape(op.Concat(size_in, size_in, axis=0), value=zero))
    probe = op.Reshape(eye, op.Concat(op.const([1, 1]), size_in, size_in, axis=0))
    attrs = {k: node.attr(k) for k in INTERPOLATION}
    by_scales = _scales(op, node)
    if by_scales is not None:
        scale = op.Slice(by_scales, op.const([index]), op.const([index + 1]))
        scales = op.Concat(op.const(np.ones(2, np.float32)), scale,
                           op.const(np.ones(1, np.float32)), axis=0)
        resized = op.Resize(probe, None, scales, **attrs)
    else:  # by sizes
        sizes = op.Concat(op.const([1, 1]), size_out, size_in, axis=0)
        resized = op.Resize(probe, None, None, sizes, **attrs)
    return op.Reshape(resized, op.Concat(size_out, size_in, axis=0))


def apply_transposed(op: Emitter, dy: Value, matrix: Value, axis: int, rank: int) -> Value:
    """dy (…, out along ``axis``, …) contracted with R (out, in): Rᵀ applied along ``axis``."""
    if axis == rank - 1:
        return op.MatMul(dy, matrix)
    if axis == rank - 2:
        return op.MatMul(op.Transpose(matrix, perm=[1, 0]), dy)
    perm = list(range(rank))
    perm[axis], perm[-1] = perm[-1], perm[axis]
    return op.Transpose(op.MatMul(op.Transpose(dy, perm=perm), matrix), perm=perm)


@vjp("Resize")
def resize_vjp(op: Emitter, node: Node, dys: Dys) -> list[Value | None]:
    """Resize (nearest, linear or cubic, any coordinate mode, with or without antialias) is
    linear in x and separable: y = x ×_a R_a over the resized axes a, with R_a (out_a, in_a)
    its 1-D interpolation matrix, so dx = dy ×_a R_aᵀ. Each R_a comes from the node's own
    interpolation run on an identity matrix (:func:`interpolation_matrix`), so the gradient
    follows ONNX Runtime's resampling exactly, whatever the mode's details."""
    if node.attr("coordinate_transformation_mode") == "tf_crop_and_resize":
        raise ValueError(f"Resize {node.name!r}: tf_crop_and_resize (extrapolated values) is not "
                         "supported")
    policy = node.attr("keep_aspect_ratio_policy", "stretch")
    if policy != "stretch":
        raise ValueError(f"Resize {node.name!r}: keep_aspect_ratio_policy {policy!r} is not "
                         "supported")
    rank = op.rank(node.inputs[0])
    axes = [int(a) % rank for a in node.attr("axes", list(range(rank)))]
    dx = dys[0]
    for index, axis in enumerate(axes):
        if not _is_identity(op, node, axis, index):
            dx = apply_transposed(op, dx, interpolation_matrix(op, node, axis, index), axis, rank)
    return [dx] + [None] * (len(node.inputs) - 1)
