"""Small GraphDef helpers shared by the source formats: shapes, inputs, outputs, running."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from converters import _tf
from converters.layers import op_name

#: op types that never carry a model's result
NOT_OUTPUTS = frozenset(
    {"Const", "NoOp", "Assert", "SaveV2", "RestoreV2", "Placeholder", "PlaceholderWithDefault",
     "VarHandleOp", "VariableV2", "AssignVariableOp", "Assign", "Identity_n"}
)


def import_graph(graph_def: object) -> object:
    """A fresh ``tf.Graph`` holding ``graph_def`` without the ``import/`` prefix."""
    tf = _tf.tensorflow()
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    return graph


def static_shapes(graph: object) -> dict[str, tuple[int | None, ...] | None]:
    """Op name → static shape of its first output (None when the rank is unknown)."""
    shapes: dict[str, tuple[int | None, ...] | None] = {}
    for op in graph.get_operations():
        if not op.outputs:
            continue
        shape = op.outputs[0].shape
        shapes[op.name] = None if shape.rank is None else tuple(shape.as_list())
    return shapes


def detect_inputs(graph_def: object) -> list[str]:
    """Tensor names of the ``Placeholder`` ops (``PlaceholderWithDefault`` ones have values)."""
    return [f"{n.name}:0" for n in graph_def.node if n.op == "Placeholder"]


def detect_outputs(graph_def: object) -> list[str]:
    """Tensor names of the ops nobody consumes, excluding constants and bookkeeping."""
    used = {op_name(i) for n in graph_def.node for i in n.input}
    return [f"{n.name}:0" for n in graph_def.node if n.name not in used and n.op not in NOT_OUTPUTS]


def defaults_to_identity(graph_def: object, keep: Sequence[str]) -> object:
    """A copy where every ``PlaceholderWithDefault`` not in ``keep`` is an ``Identity`` of its
    default, so tf2onnx folds it instead of making it a graph input."""
    tf = _tf.tensorflow()
    out = tf.compat.v1.GraphDef()
    out.CopyFrom(graph_def)
    kept = {op_name(k) for k in keep}
    for node in out.node:
        if node.op == "PlaceholderWithDefault" and node.name not in kept:
            node.op = "Identity"
            for key in ("shape", "dtype"):
                if key in node.attr:
                    if key == "dtype":
                        node.attr["T"].CopyFrom(node.attr["dtype"])
                    del node.attr[key]
    return out


def run_graph(
    graph: object, inputs: Sequence[str], x: np.ndarray, fetches: Sequence[str]
) -> list[np.ndarray]:
    """Run ``fetches`` of ``graph`` on ``x`` fed to the first input."""
    tf = _tf.tensorflow()
    with tf.compat.v1.Session(graph=graph) as sess:
        return list(sess.run(list(fetches), {inputs[0]: x}))
