"""Small GraphDef helpers shared by the source formats: shapes, inputs, outputs, inlining, runs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from onnx_gradcam.converters import _tf
from onnx_gradcam.converters.layers import op_name

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


#: ops that call a function of the GraphDef's library (attribute ``f``)
CALL_OPS = frozenset({"PartitionedCall", "StatefulPartitionedCall"})
MAX_NESTING = 16


def inline_functions(graph_def: object) -> object:
    """A copy where every call of a library function is replaced by the function's body (nested
    calls too), and the library keeps only functions still referenced (by While/If bodies).

    tf2onnx converts only the top-level graph and leaves a call op as it is; grappler, which it
    runs first, does not inline functions marked ``_noinline``. Keras 3 compiles grouped
    convolutions on CPU as such a function (``_conv_xla``, ``jit_compile=True``): ConvNeXt's 7×7
    depthwise convs. Each body node is named ``<call>/<node>``; the arguments become
    ``Identity`` nodes of the call's inputs and the call itself an ``IdentityN`` of the results,
    so its consumers keep their input names."""
    tf = _tf.tensorflow()
    if not any(n.op in CALL_OPS for n in graph_def.node):
        return graph_def
    fdg = _tf.require("tensorflow.python.framework.function_def_to_graph")
    library = {f.signature.name: f for f in graph_def.library.function}
    out = tf.compat.v1.GraphDef()
    out.CopyFrom(graph_def)
    with import_graph(graph_def).as_default():  # function_def_to_graph_def looks up the library
        for _ in range(MAX_NESTING):
            calls = [n for n in out.node if n.op in CALL_OPS and n.attr["f"].func.name in library]
            if not calls:
                break
            nodes = []
            for node in out.node:
                if node.op in CALL_OPS and node.attr["f"].func.name in library:
                    fdef = library[node.attr["f"].func.name]
                    nodes.extend(_function_body(node, fdef, *fdg.function_def_to_graph_def(fdef)))
                else:
                    nodes.append(node)
            del out.node[:]
            out.node.extend(nodes)
    used = {a.func.name for n in out.node for a in n.attr.values() if a.HasField("func")}
    kept = [f for f in out.library.function if f.signature.name in used]
    del out.library.function[:]
    out.library.function.extend(kept)
    return out


def _function_body(call: object, fdef: object, body: object, flat: dict[str, str]) -> list:
    """The nodes that replace ``call``: ``body`` (``fdef`` as a GraphDef, ``flat`` its tensor
    names) under ``<call>/``, fed by the call's inputs, ending in an ``IdentityN`` named
    ``call``."""
    tf = _tf.tensorflow()
    prefix = call.name + "/"
    data = [i for i in call.input if not i.startswith("^")]
    control = [i for i in call.input if i.startswith("^")]
    args = {a.name: i for i, a in enumerate(fdef.signature.input_arg)}
    nodes = []
    for node in body.node:
        if node.name in args and node.op == "Placeholder":
            arg = tf.compat.v1.NodeDef(name=prefix + node.name, op="Identity",
                                       input=[data[args[node.name]], *control])
            arg.attr["T"].type = node.attr["dtype"].type
            nodes.append(arg)
            continue
        node.name = prefix + node.name
        node.input[:] = [f"^{prefix}{i[1:]}" if i.startswith("^") else prefix + i
                         for i in node.input]
        nodes.append(node)
    results = tf.compat.v1.NodeDef(name=call.name, op="IdentityN")
    results.input.extend(prefix + flat[fdef.ret[a.name]] for a in fdef.signature.output_arg)
    results.attr["T"].list.type.extend(a.type for a in fdef.signature.output_arg)
    return [*nodes, results]


def run_graph(
    graph: object, inputs: Sequence[str], x: np.ndarray, fetches: Sequence[str]
) -> list[np.ndarray]:
    """Run ``fetches`` of ``graph`` on ``x`` fed to the first input."""
    tf = _tf.tensorflow()
    with tf.compat.v1.Session(graph=graph) as sess:
        return list(sess.run(list(fetches), {inputs[0]: x}))
