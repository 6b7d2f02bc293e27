"""Token tensors of vision transformers, read as images: the grid a (N, T, C) tensor folds into.

A ViT cuts the image into patches with a strided Conv (the patch embedding, output
(N, C, h, w)), flattens them row-major into h·w tokens and puts its class (and distillation)
tokens in front; every block keeps that order. So a (N, T, C) tensor downstream of that Conv,
with the same C and T − h·w = k ≥ 0 leading tokens, is an (h, w) image of C channels once its
first k tokens are dropped (pytorch-grad-cam's hand-written ``reshape_transform``). The head
reading those k tokens (a Gather or Slice on the token axis) is the evidence that they are class
tokens; ``inspect`` prints it.

The default layer of a transformer is the input of the last attention (pytorch-grad-cam's
recommended ``blocks[-1].norm1``): the last layer norm output whose way to the score passes an
attention's Softmax (one a MatMul reads). The last block's output would be a poor choice: when
the head reads only the class token, the patch tokens' gradient there is zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnx_gradcam.autodiff.emitter import Emitter, Value
from onnx_gradcam.graph import GraphInfo, Shape

#: the most leading (class, distillation, register) tokens a grid allows
MAX_EXTRA_TOKENS = 8


@dataclass(frozen=True)
class Grid:
    """How a (N, T, C) token tensor reads as an (N, h, w, C) image: drop the ``skip`` leading
    tokens, fold the rest row-major into h × w (from the patch embedding ``patches``)."""

    skip: int
    h: int
    w: int
    patches: str  # the patch-embedding Conv's output (N, C, h, w)
    readers: str = ""  # the nodes that read the leading tokens (the evidence they are class tokens)

    def describe(self) -> str:
        """One line for ``inspect``."""
        extra = ""
        if self.skip:
            by = f", read by {self.readers}" if self.readers else ""
            extra = f" after {self.skip} leading token{'s' if self.skip > 1 else ''}{by}"
        return f"grid {self.h} × {self.w}{extra} (patch embedding {self.patches!r})"

    def image(self, op: Emitter, tokens: Value) -> Value:
        """The token tensor as (N, h, w, C) graph nodes."""
        shape = op.shape(tokens)
        patches = tokens
        if self.skip:
            patches = op.Slice(tokens, op.const([self.skip]), op.const([2**62]), op.const([1]))
        out = op.Reshape(patches, op.const([0, self.h, self.w, -1]))
        op.shapes[out] = (shape[0] if shape else None, self.h, self.w,
                          shape[2] if shape else None)
        return out

    def nchw(self, array: np.ndarray) -> np.ndarray:
        """A fetched (N, T, C) tensor as (N, C, h, w)."""
        n, _, c = array.shape
        return array[:, self.skip:].reshape(n, self.h, self.w, c).transpose(0, 3, 1, 2)


PatchConv = tuple[int, str, Shape, set[int]]  # node index, output, its shape, descendants


def patch_convs(info: GraphInfo) -> list[PatchConv]:
    """The Convs that could be patch embeddings (static (N, C, h, w) outputs), with the nodes
    downstream of each (computed once for all the token tensors of a graph)."""
    out = []
    for index, node in enumerate(info.nodes):
        shape = info.shapes.get(node.output[0]) if node.op_type == "Conv" else None
        if shape is not None and len(shape) == 4 and None not in shape[1:]:
            out.append((index, node.output[0], shape, info.descendants(node.output[0])))
    return out


def token_grid(info: GraphInfo, name: str, convs: list[PatchConv] | None = None) -> Grid | None:
    """The grid of the (N, T, C) tensor ``name``, from the last Conv before it with C output
    channels (the patch embedding) and static shapes; None where the graph shows none."""
    shape = info.shapes.get(name)
    index = info.producer.get(name)
    if shape is None or len(shape) != 3 or shape[1] is None or index is None:
        return None
    tokens, channels = shape[1], shape[2]
    before = [c for c in (patch_convs(info) if convs is None else convs)
              if c[2][1] == channels and index in c[3]]
    if not before:
        return None
    _, patches, (_, _, h, w), _ = before[-1]
    skip = tokens - int(h) * int(w)
    if not 0 <= skip <= MAX_EXTRA_TOKENS:
        return None
    return Grid(skip, int(h), int(w), patches, _readers(info, name, skip) if skip else "")


def _readers(info: GraphInfo, name: str, skip: int) -> str:
    """The nodes downstream of ``name`` that read only its first ``skip`` tokens: a Gather or
    Slice on axis 1 with constant indices below ``skip`` (the head reading the class token)."""
    found = []
    for index in sorted(info.descendants(name)):
        node = info.nodes[index]
        shape = info.shapes.get(node.input[0]) if node.input else None
        if shape is None or len(shape) != 3 or shape[1] != info.shapes[name][1]:
            continue
        if node.op_type == "Gather" and _axis(node) == 1:
            taken = info.constants.get(node.input[1]) if node.input[1] in info.constants else None
            if taken is not None and (np.asarray(taken) < skip).all():
                found.append(node.name or node.output[0])
        elif node.op_type == "Slice" and len(node.input) > 3 and all(
                i in info.constants for i in node.input[1:4]):
            start, end, axes = (np.asarray(info.constants[i]).tolist() for i in node.input[1:4])
            if axes == [1] and end[0] <= skip:
                found.append(node.name or node.output[0])
    return ", ".join(repr(f) for f in found[:2])


def _axis(node) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 0)


def attention_input(info: GraphInfo, names: list[str], score: str) -> str | None:
    """The last of ``names`` (in forward order) that a LayerNormalization outputs and whose way
    to ``score`` passes an attention's Softmax (:func:`_attention`), or None (no transformer
    block)."""
    upstream = info.ancestors(score)
    for name in reversed(names):
        if not layer_norm(info, name):
            continue
        between = info.descendants(name) & upstream
        if any(_attention(info, i) for i in between):
            return name
    return None


def _attention(info: GraphInfo, index: int) -> bool:
    """Whether node ``index`` is an attention's Softmax: one whose weights a MatMul or Einsum
    reads (not a classifier's final Softmax)."""
    node = info.nodes[index]
    if node.op_type != "Softmax":
        return False
    names = [node.output[0]]
    while names:
        for consumer in info.consumers.get(names.pop(), []):
            op = info.nodes[consumer].op_type
            if op in ("MatMul", "Einsum"):
                return True
            if op in ("Cast", "Dropout", "Identity"):
                names.append(info.nodes[consumer].output[0])
    return False


def layer_norm(info: GraphInfo, name: str) -> bool:
    """Whether ``name`` is a layer norm's output: a LayerNormalization, or the form exporters
    write below opset 17, (x − mean(x)) / sqrt(var + eps), then · weight + bias."""
    if info.op_of(name) == "LayerNormalization":
        return True
    node = _producer(info, name)
    while node is not None and node.op_type in ("Add", "Mul") and any(
            i in info.constants for i in node.input):  # the affine part
        node = _producer(info, next(i for i in node.input if i not in info.constants))
    if node is None or node.op_type != "Div":
        return False
    centred = _producer(info, node.input[0])
    return (centred is not None and centred.op_type == "Sub"
            and info.op_of(centred.input[1]) == "ReduceMean")


def _producer(info: GraphInfo, name: str):
    index = info.producer.get(name)
    return None if index is None else info.nodes[index]
