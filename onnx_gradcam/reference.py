"""Evaluate ONNX models in float64 with ``onnx.reference`` (ONNX Runtime has no double Conv).

:func:`to_double` casts a float32 model to double; :func:`evaluator` runs it with
``onnx.reference`` plus vectorised numpy :class:`Conv` and :class:`ConvTranspose` (one matmul
per kernel tap): the reference runtime's own ConvTranspose is a pure-Python loop. Used by
:mod:`onnx_gradcam.verify` to check a gradient graph on a user's model, and by the tests'
float64 oracles.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

F32, F64 = onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE
FLOATS = (F32, onnx.TensorProto.FLOAT16)


def to_double(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with every float32 or float16 tensor (initializers, constants, casts, value types)
    in float64: an fp16 model's own function, in exact-enough arithmetic."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    for tensor in graph.initializer:
        if tensor.data_type in FLOATS:
            tensor.CopyFrom(_double(tensor))
    for value in [*graph.input, *graph.output]:
        if value.type.tensor_type.elem_type in FLOATS:
            value.type.tensor_type.elem_type = F64
    del graph.value_info[:]
    for node in graph.node:
        for attr in node.attribute:
            if attr.name == "to" and attr.i in FLOATS:
                attr.i = F64
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type in FLOATS:
                attr.t.CopyFrom(_double(attr.t))
    return out


def _double(tensor: onnx.TensorProto) -> onnx.TensorProto:
    return numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float64), tensor.name)


def _pads_2d(auto_pad, pads, size, kernel, strides, dilations):
    """(top, left, bottom, right) for a forward conv, resolving SAME_* from the input size.
    Written apart from ``rules/_common.same_pads`` on purpose: this runtime is the oracle the
    gradient rules are checked against, so it shares none of their arithmetic."""
    if auto_pad in (None, "", "NOTSET"):
        return list(pads) if pads is not None else [0, 0, 0, 0]
    if auto_pad == "VALID":
        return [0, 0, 0, 0]
    begin, end = [], []
    for x, k, s, d in zip(size, kernel, strides, dilations):
        total = max((-(-x // s) - 1) * s + (k - 1) * d + 1 - x, 0)
        small = total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else total - small)
        end.append(total - begin[-1])
    return begin + end


class Conv(OpRun):
    """2-D grouped convolution in numpy (any dtype; float64 here)."""

    op_domain = ""

    def _run(self, X, W, B=None, auto_pad=None, dilations=None, group=None, kernel_shape=None,
             pads=None, strides=None):
        if X.ndim != 4:
            raise NotImplementedError("only 2-D convolutions")
        g = int(group or 1)
        sh, sw = strides or (1, 1)
        dh, dw = dilations or (1, 1)
        m, cg, kh, kw = W.shape
        top, left, bottom, right = _pads_2d(auto_pad, pads, X.shape[2:], (kh, kw), (sh, sw),
                                            (dh, dw))
        x = np.pad(X, ((0, 0), (0, 0), (top, bottom), (left, right)))
        n, _, hp, wp = x.shape
        ho, wo = (hp - (kh - 1) * dh - 1) // sh + 1, (wp - (kw - 1) * dw - 1) // sw + 1
        xg = x.reshape(n, g, cg, hp, wp)
        wg = W.reshape(g, m // g, cg, kh, kw)
        out = np.zeros((n, g, m // g, ho, wo), dtype=X.dtype)
        for i in range(kh):
            for j in range(kw):
                patch = xg[:, :, :, i * dh:i * dh + (ho - 1) * sh + 1:sh,
                           j * dw:j * dw + (wo - 1) * sw + 1:sw]
                if cg == 1:  # depthwise: a broadcast product beats a (1 x o) matmul
                    out += patch * wg[None, :, :, 0, i, j, None, None]
                else:
                    flat = patch.reshape(n, g, cg, ho * wo).transpose(0, 1, 3, 2)
                    prod = np.matmul(flat, wg[:, :, :, i, j].transpose(0, 2, 1))
                    out += prod.transpose(0, 1, 3, 2).reshape(n, g, m // g, ho, wo)
        out = out.reshape(n, m, ho, wo)
        if B is not None:
            out = out + B.reshape(1, -1, 1, 1)
        return (out.astype(X.dtype),)


class ConvTranspose(OpRun):
    """2-D grouped transposed convolution in numpy (explicit pads and output_padding only)."""

    op_domain = ""

    def _run(self, X, W, B=None, auto_pad=None, dilations=None, group=None, kernel_shape=None,
             output_padding=None, output_shape=None, pads=None, strides=None):
        if X.ndim != 4 or output_shape is not None or auto_pad not in (None, "", "NOTSET"):
            raise NotImplementedError("only 2-D, explicit pads, no output_shape")
        g = int(group or 1)
        sh, sw = strides or (1, 1)
        dh, dw = dilations or (1, 1)
        oph, opw = output_padding or (0, 0)
        top, left, bottom, right = pads or (0, 0, 0, 0)
        n, c, h, w = X.shape
        _, og, kh, kw = W.shape
        cg = c // g
        full_h = (h - 1) * sh + (kh - 1) * dh + 1 + oph
        full_w = (w - 1) * sw + (kw - 1) * dw + 1 + opw
        out = np.zeros((n, g, og, full_h, full_w), dtype=X.dtype)
        xg = X.reshape(n, g, cg, h, w)
        wg = W.reshape(g, cg, og, kh, kw)
        flat = xg.reshape(n, g, cg, h * w).transpose(0, 1, 3, 2)  # (n, g, hw, cg)
        for i in range(kh):
            for j in range(kw):
                if cg == 1:  # depthwise
                    contrib = xg * wg[:, 0, :, i, j][None, :, :, None, None]
                else:
                    contrib = np.matmul(flat, wg[:, :, :, i, j]).transpose(0, 1, 3, 2)
                    contrib = contrib.reshape(n, g, og, h, w)
                out[:, :, :, i * dh:i * dh + (h - 1) * sh + 1:sh,
                    j * dw:j * dw + (w - 1) * sw + 1:sw] += contrib
        out = out.reshape(n, g * og, full_h, full_w)[:, :, top:full_h - bottom,
                                                     left:full_w - right]
        if B is not None:
            out = out + B.reshape(1, -1, 1, 1)
        return (np.ascontiguousarray(out).astype(X.dtype),)


def _windows(X, fill, kernel_shape, strides, pads, dilations, ceil_mode):
    """(x padded with ``fill``, the output size, and a function giving the strided slice each
    kernel offset reads) for a 2-D pool."""
    kh, kw = kernel_shape
    sh, sw = strides or (1, 1)
    dh, dw = dilations or (1, 1)
    top, left, bottom, right = pads or (0, 0, 0, 0)
    h, w = X.shape[2] + top + bottom, X.shape[3] + left + right
    eh, ew = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    rnd = (lambda a, b: -(-a // b)) if ceil_mode else (lambda a, b: a // b)
    ho, wo = rnd(h - eh, sh) + 1, rnd(w - ew, sw) + 1
    extra_h = max((ho - 1) * sh + eh - h, 0)
    extra_w = max((wo - 1) * sw + ew - w, 0)
    x = np.pad(X, ((0, 0), (0, 0), (top, bottom + extra_h), (left, right + extra_w)),
               constant_values=fill)

    def window(i: int, j: int) -> tuple:
        return (slice(None), slice(None), slice(i * dh, i * dh + (ho - 1) * sh + 1, sh),
                slice(j * dw, j * dw + (wo - 1) * sw + 1, sw))

    return x, (h, w, top, left, extra_h, extra_w), window


class MaxPool(OpRun):
    """2-D MaxPool in numpy (explicit pads; ``onnx.reference``'s loops per output element)."""

    op_domain = ""

    def _run(self, X, auto_pad=None, ceil_mode=None, dilations=None, kernel_shape=None,
             pads=None, storage_order=None, strides=None):
        if X.ndim != 4 or auto_pad not in (None, "", "NOTSET"):
            raise NotImplementedError("only 2-D, explicit pads")
        x, _, window = _windows(X, -np.inf, kernel_shape, strides, pads, dilations, ceil_mode)
        out = None
        for i, j in np.ndindex(*kernel_shape):
            part = x[window(i, j)]
            out = part.copy() if out is None else np.maximum(out, part)
        return (out,)


class AveragePool(OpRun):
    """2-D AveragePool in numpy (explicit pads, count_include_pad 0 or 1)."""

    op_domain = ""

    def _run(self, X, auto_pad=None, ceil_mode=None, count_include_pad=None, dilations=None,
             kernel_shape=None, pads=None, strides=None):
        if X.ndim != 4 or auto_pad not in (None, "", "NOTSET"):
            raise NotImplementedError("only 2-D, explicit pads")
        x, (h, w, top, left, eh, ew), window = _windows(X, 0.0, kernel_shape, strides, pads,
                                                         dilations, ceil_mode)
        ones = np.zeros((1, 1) + x.shape[2:], X.dtype)
        if count_include_pad:  # the explicit pads count, the ceil_mode overhang does not
            ones[:, :, :h, :w] = 1
        else:
            ones[:, :, top:top + X.shape[2], left:left + X.shape[3]] = 1
        total, count = 0.0, 0.0
        for i, j in np.ndindex(*kernel_shape):
            total = total + x[window(i, j)]
            count = count + ones[window(i, j)]
        return ((total / count).astype(X.dtype),)


FAST_OPS = [Conv, ConvTranspose, MaxPool, AveragePool]


def evaluator(model: onnx.ModelProto) -> ReferenceEvaluator:
    return ReferenceEvaluator(model, new_ops=FAST_OPS)
