"""Clean-ups of an assembled graph: drop what no output needs, elide renaming Identities and
fold chains of reshapes.

ONNX Runtime runs every node of a graph, and each node has a fixed cost however little it
computes, which on a small model is a visible share of the explainer graph's tail. Each pass
keeps the graph's outputs, their names and their values exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import onnx
from onnx import helper, numpy_helper

RESHAPES = {"Reshape", "Unsqueeze", "Squeeze", "Flatten"}


def simplify(g: onnx.GraphProto) -> None:
    """:func:`prune`, :func:`elide_identities`, :func:`fold_reshapes`, :func:`prune`."""
    prune(g)
    elide_identities(g)
    fold_reshapes(g)
    prune(g)


def names_used(node: onnx.NodeProto) -> set[str]:
    """The node's inputs and every name its subgraphs (If/Loop/Scan bodies) read."""
    names = {i for i in node.input if i}
    for attr in node.attribute:
        for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
            for inner in sub.node:
                names |= names_used(inner)
    return names


def live_nodes(nodes: Sequence[onnx.NodeProto], outputs: Iterable[str]
               ) -> list[onnx.NodeProto]:
    """The nodes ``outputs`` depend on, in their given order (which need not be topological)."""
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    live: set[int] = set()
    pending = [producer[o] for o in outputs if o in producer]
    while pending:
        index = pending.pop()
        if index not in live:
            live.add(index)
            pending += [producer[i] for i in names_used(nodes[index]) if i in producer]
    return [n for i, n in enumerate(nodes) if i in live]


def prune(g: onnx.GraphProto) -> None:
    """Drop nodes, initializers and value infos no graph output depends on (ONNX Runtime runs
    every node of a graph, needed or not)."""
    keep = live_nodes(g.node, [o.name for o in g.output])
    needed = {o.name for o in g.output} | {i for n in keep for i in names_used(n)}
    del g.node[:]
    g.node.extend(keep)
    inputs = {i.name for i in g.input}
    for items in (g.initializer, g.value_info):  # deleted in place: a rebuilt list would copy
        drop = [i for i, t in enumerate(items)   # every kept weight (a model's size, per call)
                if t.name not in needed and t.name not in inputs]
        for i in reversed(drop):
            del items[i]


def _has_subgraphs(node: onnx.NodeProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for a in node.attribute)


def elide_identities(g: onnx.GraphProto) -> None:
    """An Identity that only renames a node's output (``a`` → ``b``) goes: the node writes
    ``b`` and every reader of ``a`` reads ``b``. Kept where ``a`` is a graph input, an
    initializer or a graph output, or where a subgraph reads it."""
    fixed = {i.name for i in g.input} | {t.name for t in g.initializer} | {
        o.name for o in g.output}
    produced = {o for n in g.node for o in n.output}
    in_subgraphs = {name for n in g.node if _has_subgraphs(n) for name in names_used(n)}
    rename: dict[str, str] = {}
    kept = []
    for node in g.node:
        source = node.input[0] if node.op_type == "Identity" and node.input else ""
        if (source and source in produced and source not in fixed and source not in rename
                and source not in in_subgraphs):
            rename[source] = node.output[0]
        else:
            kept.append(node)
    if not rename:
        return

    def final(name: str) -> str:  # a chain a → b → c renames a and b to c
        while name in rename:
            name = rename[name]
        return name

    for node in kept:
        node.input[:] = [final(i) for i in node.input]
        node.output[:] = [final(o) for o in node.output]
    del g.node[:]
    g.node.extend(kept)


def _constant_ints(g: onnx.GraphProto, name: str) -> list[int] | None:
    for tensor in g.initializer:
        if tensor.name == name:
            return [int(v) for v in numpy_helper.to_array(tensor).reshape(-1)]
    return None


def _kept_leading_dims(g: onnx.GraphProto, node: onnx.NodeProto) -> int | None:
    """How many leading dims ``node`` (a reshape-like op) passes through unchanged, or None
    when that is unknown from constants."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Flatten":
        return 1 if attrs.get("axis", 1) == 1 else 0
    if node.op_type in ("Unsqueeze", "Squeeze"):
        axes = attrs.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = _constant_ints(g, node.input[1])
        if axes is None or any(a < 0 for a in axes):
            return None
        return min(axes)
    shape = _constant_ints(g, node.input[1]) if len(node.input) > 1 else None
    if shape is None or attrs.get("allowzero", 0):
        return None
    kept = 0
    while kept < len(shape) and shape[kept] == 0:
        kept += 1
    return kept


def fold_reshapes(g: onnx.GraphProto) -> None:
    """A Reshape (constant shape) of a reshape-like node's output that nothing else reads
    reshapes that node's input instead. A 0 in the shape copies a dim of the data, so the fold
    is made only where the earlier node kept that dim."""
    outputs = {o.name for o in g.output}
    while True:
        readers: dict[str, int] = {}
        for node in g.node:
            for name in names_used(node):
                readers[name] = readers.get(name, 0) + 1
        producer = {o: n for n in g.node for o in n.output}
        changed = False
        for node in g.node:
            if node.op_type != "Reshape" or len(node.input) < 2:
                continue
            before = producer.get(node.input[0])
            shape = _constant_ints(g, node.input[1])
            if (before is None or before.op_type not in RESHAPES or shape is None
                    or readers.get(node.input[0]) != 1 or node.input[0] in outputs
                    or any(a.name == "allowzero" and a.i for a in node.attribute)):
                continue
            zeros = [i for i, d in enumerate(shape) if d == 0]
            kept = _kept_leading_dims(g, before)
            if zeros and (kept is None or max(zeros) >= kept):
                continue
            node.input[0] = before.input[0]
            changed = True
        if not changed:
            return
        prune(g)  # the folded-over nodes, now read by nothing
