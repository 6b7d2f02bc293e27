"""Static facts about an ONNX graph: producers, consumers, shapes, dtypes, constants."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import cached_property

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnx_gradcam.autodiff.registry import MOVES_VALUES

Shape = tuple[int | None, ...]


class Constants(Mapping[str, np.ndarray]):
    """Tensor protos by name, read as numpy arrays on first access (cached): a model's weights
    are converted only where something needs their values, not all copied up front."""

    def __init__(self, tensors: dict[str, onnx.TensorProto]) -> None:
        self._tensors = tensors
        self._values: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._values:
            self._values[name] = numpy_helper.to_array(self._tensors[name])
        return self._values[name]

    def __contains__(self, name: object) -> bool:
        return name in self._tensors

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)


#: initializers up to this many values stay in the model shape inference sees (shape-like
#: constants feed its data propagation); larger ones are replaced by their type and shape
_SMALL = 4096


def _without_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` for shape inference: the same graph, its large initializers declared as
    inputs of their type and shape instead of carried (shape inference copies the whole model:
    a ResNet-50's 100 MB of weights, for shapes it reads from the dims alone)."""
    light = onnx.ModelProto()
    for field in ("ir_version", "producer_name", "domain"):
        setattr(light, field, getattr(model, field))
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    graph, source = light.graph, model.graph
    graph.name = source.name
    graph.node.extend(source.node)
    graph.input.extend(source.input)
    graph.output.extend(source.output)
    graph.value_info.extend(source.value_info)
    declared = {i.name for i in source.input}
    for tensor in source.initializer:
        if np.prod(tensor.dims, dtype=np.int64) <= _SMALL:
            graph.initializer.append(tensor)
        elif tensor.name not in declared:
            graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type,
                                                             list(tensor.dims)))
    return light


def readable(shape: Shape | None) -> list | None:
    """``shape`` as users read it: unknown dimensions as ``?``."""
    return None if shape is None else [d if d is not None else "?" for d in shape]


def _subgraph_values(graph: onnx.GraphProto) -> Iterator[onnx.ValueInfoProto]:
    """The typed values declared inside ``graph``'s subgraphs (recursively)."""
    for node in graph.node:
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.type == onnx.AttributeProto.GRAPH
                        else attribute.graphs):
                yield from (*sub.input, *sub.value_info, *sub.output)
                yield from _subgraph_values(sub)


def _captured(node: onnx.NodeProto) -> list[str]:
    """The names ``node``'s subgraphs read from outside themselves (recursively)."""
    out: list[str] = []
    for attribute in node.attribute:
        for sub in ([attribute.g] if attribute.type == onnx.AttributeProto.GRAPH
                    else attribute.graphs):
            local = {i.name for i in sub.input} | {t.name for t in sub.initializer}
            for inner in sub.node:
                for name in [*inner.input, *_captured(inner)]:
                    if name and name not in local and name not in out:
                        out.append(name)
                local.update(inner.output)
    return out


def _dims(type_proto: onnx.TypeProto) -> Shape | None:
    tensor = type_proto.tensor_type
    if not tensor.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)


def attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    """``node``'s attribute ``name`` as a Python value, or ``default``."""
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name),
                default)


class GraphInfo:
    """A shape-inferred view of ``model``'s main graph (the model itself is not modified)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        inferred = _infer_shapes(model)
        graph = inferred.graph
        self.nodes: list[onnx.NodeProto] = list(model.graph.node)
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                          1)
        self.shapes: dict[str, Shape] = {}
        self.elem_types: dict[str, int] = {}
        #: the inferred type of each tensor, its unknown sizes as shape inference names them
        self.values: dict[str, onnx.ValueInfoProto] = {}
        for value in [*graph.input, *graph.value_info, *graph.output]:
            self.values[value.name] = value
            shape = _dims(value.type)
            if shape is not None:
                self.shapes[value.name] = shape
            self.elem_types[value.name] = value.type.tensor_type.elem_type
        for value in _subgraph_values(graph):  # If branches, Loop bodies: shapes only
            shape = _dims(value.type)
            if shape is not None and value.name not in self.shapes:
                self.shapes[value.name] = shape
                self.elem_types[value.name] = value.type.tensor_type.elem_type
        tensors = {t.name: t for t in model.graph.initializer}
        for node in self.nodes:
            if node.op_type == "Constant" and node.output:
                value = next((a for a in node.attribute if a.name == "value"), None)
                if value is not None:
                    tensors[node.output[0]] = value.t
        for name, tensor in tensors.items():
            self.shapes[name] = tuple(int(d) for d in tensor.dims)
            self.elem_types[name] = tensor.data_type
        #: initializer and Constant values by name, made numpy arrays on first access
        self.constants: Constants = Constants(tensors)
        self.graph_inputs = [i.name for i in model.graph.input if i.name not in self.constants]
        #: initializers a caller may override by feeding them (listed among the graph inputs)
        self.overridable = frozenset(i.name for i in model.graph.input if i.name in self.constants)
        self.graph_outputs = [o.name for o in model.graph.output]

    @cached_property
    def producer(self) -> dict[str, int]:
        return {o: i for i, n in enumerate(self.nodes) for o in n.output if o}

    @cached_property
    def node_inputs(self) -> list[list[str]]:
        """Each node's inputs, with the outer tensors its subgraphs read (an ``If`` branch's
        BatchNormalization reads the Conv output it normalises without naming it as an input)."""
        return [[*node.input, *_captured(node)] for node in self.nodes]

    @cached_property
    def consumers(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for i, inputs in enumerate(self.node_inputs):
            for name in set(inputs):
                if name:
                    out.setdefault(name, []).append(i)
        return out

    def ancestors(self, tensor: str) -> set[int]:
        """Indices of the nodes ``tensor`` depends on (transitively)."""
        seen: set[int] = set()
        stack = [tensor]
        while stack:
            index = self.producer.get(stack.pop())
            if index is None or index in seen:
                continue
            seen.add(index)
            stack.extend(i for i in self.node_inputs[index] if i)
        return seen

    def descendants(self, tensor: str) -> set[int]:
        """Indices of the nodes that depend on ``tensor`` (transitively)."""
        seen: set[int] = set()
        stack = [tensor]
        while stack:
            for index in self.consumers.get(stack.pop(), []):
                if index not in seen:
                    seen.add(index)
                    stack.extend(o for o in self.nodes[index].output if o)
        return seen

    def tensor_names(self) -> list[str]:
        """Every tensor a node produces, in forward order."""
        return [o for n in self.nodes for o in n.output if o]

    def dtype(self, name: str) -> np.dtype:
        elem = self.elem_types.get(name)
        if not elem:
            raise ValueError(f"element type of tensor {name!r} is unknown")
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem))

    def class_count(self, score: str) -> int | None:
        """C of a score tensor shaped (N, C), (N, 1, 1, C) or (N, C, 1, 1), if static."""
        dims = [d for d in (self.shapes.get(score) or ())[1:] if d != 1]
        return dims[0] if len(dims) == 1 and dims[0] is not None else None

    def op_of(self, name: str) -> str:
        index = self.producer.get(name)
        return "input" if index is None else self.nodes[index].op_type

    def nonnegative(self, name: str) -> bool:
        """Whether every value of tensor ``name`` is ≥ 0 by construction: the output of an op
        whose outputs are (ReLU, Sigmoid, Softplus, Abs, Exp, a Clip with a lower bound ≥ 0),
        seen through ops that only move or select values."""
        while True:
            index = self.producer.get(name)
            if index is None:
                return False
            node = self.nodes[index]
            if node.op_type in _NONNEGATIVE:
                return True
            if node.op_type == "Clip":
                low = (self.constants.get(node.input[1]) if len(node.input) > 1 and node.input[1]
                       else attr(node, "min"))
                return low is not None and float(np.min(low)) >= 0
            if node.op_type not in MOVES_VALUES:
                return False
            name = node.input[0]

    def constant(self, name: str | None) -> np.ndarray | None:
        """The value of the initializer or Constant ``name``; None for any other tensor, and
        for an initializer a caller may override (its value is only a default)."""
        if not name or name in self.overridable:
            return None
        return self.constants.get(name)

    def axes(self, node: onnx.NodeProto) -> list[int] | None:
        """A reduction's (or Squeeze's, Unsqueeze's) ``axes``: its attribute (older opsets) or
        its constant second input; None where neither gives them."""
        axes = attr(node, "axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            value = self.constants.get(node.input[1])
            axes = None if value is None else value.reshape(-1).tolist()
        return None if axes is None else list(axes)

    def spatial_mean(self, name: str, layout: str) -> str | None:
        """A forward tensor that is the 4-D tensor ``name`` averaged over its positions (a
        pooling head's GlobalAveragePool, or ReduceMean over the spatial axes of ``layout``,
        any keepdims), or None."""
        spatial = [2, 3] if layout == "NCHW" else [1, 2]
        for index in self.consumers.get(name, []):
            node = self.nodes[index]
            if node.input[0] != name:
                continue
            if node.op_type == "GlobalAveragePool" and layout == "NCHW":
                return node.output[0]
            if node.op_type != "ReduceMean":
                continue
            axes = self.axes(node)
            if axes is not None and sorted(int(a) % 4 for a in axes) == spatial:
                return node.output[0]
        return None


_NONNEGATIVE = frozenset({"Relu", "Sigmoid", "Softplus", "Abs", "Exp"})


def shapes_at(model: onnx.ModelProto, sizes: dict[str, Shape]) -> dict[str, Shape]:
    """The shapes shape inference gives ``model``'s tensors when its inputs have the static
    ``sizes`` (None keeps a dimension symbolic): how symbolic sizes flow through the graph."""
    light = _without_weights(model)
    del light.graph.value_info[:]  # symbolic facts recorded by the exporter
    for value in light.graph.input:
        for dim, size in zip(value.type.tensor_type.shape.dim, sizes.get(value.name, ())):
            if size is not None:
                dim.Clear()
                dim.dim_value = size
    graph = _infer_shapes(light).graph
    return {v.name: shape for v in [*graph.input, *graph.value_info, *graph.output]
            if (shape := _dims(v.type)) is not None}


def _infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with inferred shapes (best effort). ONNX's inference does not know ONNX
    Runtime's contrib QOperator ops (QLinearAdd, …): it reads their float meaning instead."""
    if any(node.domain == "com.microsoft" for node in model.graph.node):
        from onnx_gradcam.autodiff.rules.qoperator import float_meaning

        model = float_meaning(model)
    try:
        return onnx.shape_inference.infer_shapes(_without_weights(model), data_prop=True)
    except Exception:  # noqa: BLE001 - shape inference is best-effort on exotic models
        return model
