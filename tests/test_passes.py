"""Graph clean-ups: each keeps every output's name and value (checked by running both graphs)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnx_gradcam.passes import elide_identities, fold_reshapes, simplify


def _model(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray], x_shape: list,
           outputs: dict[str, list]) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, dims) for o, dims in outputs.items()],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})


def _simplified(model: onnx.ModelProto, apply=simplify) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    apply(out.graph)
    onnx.checker.check_model(out, full_check=True)
    return out


def test_unsqueeze_then_reshape_folds_into_one_reshape() -> None:
    model = _model([
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Unsqueeze", ["r", "axes"], ["u"]),
        helper.make_node("Reshape", ["u", "shape"], ["y"])],
        {"axes": np.array([2, 3]), "shape": np.array([0, 1, -1])}, ["n", 5], {"y": ["n", 1, 5]})
    folded = _simplified(model)
    assert [n.op_type for n in folded.graph.node] == ["Relu", "Reshape"]
    x = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    (want,), (got,) = _run(model, x), _run(folded, x)
    assert got.shape == want.shape == (3, 1, 5) and np.array_equal(got, want)


def test_a_zero_that_copies_a_dim_the_first_reshape_changed_blocks_the_fold() -> None:
    """Reshape's 0 copies the data's dim: after Unsqueeze(axes=[0]) dim 0 is 1, before it 2."""
    model = _model([
        helper.make_node("Unsqueeze", ["x", "axes"], ["u"]),
        helper.make_node("Reshape", ["u", "shape"], ["y"])],
        {"axes": np.array([0]), "shape": np.array([0, -1])}, [2, 3, 4], {"y": [1, 24]})
    kept = _simplified(model)
    assert [n.op_type for n in kept.graph.node] == ["Unsqueeze", "Reshape"]
    x = np.ones((2, 3, 4), np.float32)
    assert _run(kept, x)[0].shape == (1, 24)


def test_a_reshape_read_twice_is_not_folded_over() -> None:
    model = _model([
        helper.make_node("Flatten", ["x"], ["f"], axis=1),
        helper.make_node("Reshape", ["f", "shape"], ["y"]),
        helper.make_node("Relu", ["f"], ["z"])],
        {"shape": np.array([0, 2, -1])}, ["n", 2, 3], {"y": ["n", 2, 3], "z": ["n", 6]})
    kept = _simplified(model, fold_reshapes)
    assert [n.op_type for n in kept.graph.node] == ["Flatten", "Reshape", "Relu"]


def test_identities_that_rename_go_and_the_others_stay() -> None:
    model = _model([
        helper.make_node("Identity", ["x"], ["x_out"]),  # of a graph input: stays
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Identity", ["r"], ["y"]),  # a rename: goes
        helper.make_node("Neg", ["r"], ["z"])],  # reads the renamed tensor
        {}, [2, 3], {"x_out": [2, 3], "y": [2, 3], "z": [2, 3]})
    elided = _simplified(model, elide_identities)
    assert [(n.op_type, list(n.input), list(n.output)) for n in elided.graph.node] == [
        ("Identity", ["x"], ["x_out"]), ("Relu", ["x"], ["y"]), ("Neg", ["y"], ["z"])]
    x = np.random.default_rng(1).standard_normal((2, 3)).astype(np.float32)
    for want, got in zip(_run(model, x), _run(elided, x)):
        assert np.array_equal(want, got)


def test_a_chain_of_identities_renames_to_its_last_name() -> None:
    """paddle2onnx ends a graph in Identity(Add → fetch_name_0); our explainer graph adds
    Identity(fetch_name_0 → ogc_scores): the Add must write the last name."""
    model = _model([
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Identity", ["r"], ["fetch"]),
        helper.make_node("Identity", ["fetch"], ["y"]),
        helper.make_node("Neg", ["fetch"], ["z"])],
        {}, [2, 3], {"y": [2, 3], "z": [2, 3]})
    elided = _simplified(model, elide_identities)
    assert [(n.op_type, list(n.input), list(n.output)) for n in elided.graph.node] == [
        ("Relu", ["x"], ["y"]), ("Neg", ["y"], ["z"])]
    x = np.random.default_rng(1).standard_normal((2, 3)).astype(np.float32)
    for want, got in zip(_run(model, x), _run(elided, x)):
        assert np.array_equal(want, got)
