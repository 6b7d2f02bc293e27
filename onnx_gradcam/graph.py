"""Static facts about an ONNX graph: producers, consumers, shapes, dtypes, constants."""

from __future__ import annotations

from functools import cached_property

import numpy as np
import onnx
from onnx import helper, numpy_helper

Shape = tuple[int | None, ...]


def _dims(type_proto: onnx.TypeProto) -> Shape | None:
    tensor = type_proto.tensor_type
    if not tensor.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)


class GraphInfo:
    """A shape-inferred view of ``model``'s main graph (the model itself is not modified)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        try:
            inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
        except Exception:  # noqa: BLE001 - shape inference is best-effort on exotic models
            inferred = model
        graph = inferred.graph
        self.nodes: list[onnx.NodeProto] = list(model.graph.node)
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                          1)
        self.shapes: dict[str, Shape] = {}
        self.elem_types: dict[str, int] = {}
        for value in [*graph.input, *graph.value_info, *graph.output]:
            shape = _dims(value.type)
            if shape is not None:
                self.shapes[value.name] = shape
            self.elem_types[value.name] = value.type.tensor_type.elem_type
        self.constants: dict[str, np.ndarray] = {}
        for tensor in model.graph.initializer:
            array = numpy_helper.to_array(tensor)
            self.constants[tensor.name] = array
            self.shapes[tensor.name] = tuple(array.shape)
            self.elem_types[tensor.name] = tensor.data_type
        for node in self.nodes:
            if node.op_type == "Constant" and node.output:
                attr = next((a for a in node.attribute if a.name == "value"), None)
                if attr is not None:
                    array = numpy_helper.to_array(attr.t)
                    self.constants[node.output[0]] = array
                    self.shapes[node.output[0]] = tuple(array.shape)
                    self.elem_types[node.output[0]] = attr.t.data_type
        self.graph_inputs = [i.name for i in model.graph.input if i.name not in self.constants]
        #: initializers a caller may override by feeding them (listed among the graph inputs)
        self.overridable = frozenset(i.name for i in model.graph.input if i.name in self.constants)
        self.graph_outputs = [o.name for o in model.graph.output]

    @cached_property
    def producer(self) -> dict[str, int]:
        return {o: i for i, n in enumerate(self.nodes) for o in n.output if o}

    @cached_property
    def consumers(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for i, node in enumerate(self.nodes):
            for name in set(node.input):
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
            stack.extend(i for i in self.nodes[index].input if i)
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
