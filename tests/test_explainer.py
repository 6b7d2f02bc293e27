"""The Explainer end to end on small hand-built models, against closed forms and numpy."""

from __future__ import annotations

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_gradcam as og
from onnx_gradcam.cams import GRAPH_METHODS, postprocess
from onnx_gradcam.explainer_graph import GraphSpec, explainer_model
from onnx_gradcam.model import load_model
from tests.models import nhwc_cnn, small_cnn


def _weights(model: onnx.ModelProto, name: str) -> np.ndarray:
    return next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


def _batch(n: int, size: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


def numpy_gradcam(acts: np.ndarray, grads: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The formula and post-processing of CAM_CONVENTIONS.md, written out independently."""
    out = []
    for a, g in zip(acts, grads):
        cam = np.zeros(a.shape[1:])
        for k in range(a.shape[0]):
            cam += g[k].mean() * a[k]
        cam = np.maximum(cam, 0)
        cam = cam - cam.min()
        cam = cam / (1e-7 + cam.max())
        cam = cv2.resize(np.float32(cam), (size[1], size[0]))
        cam = np.maximum(cam, 0)  # the multi-layer aggregation step, with one layer
        cam = cam - cam.min()
        out.append(cam / (1e-7 + cam.max()))
    return np.float32(out)


@pytest.mark.parametrize("head", ["gap_gemm", "mean_matmul"])
def test_gradient_matches_closed_form_of_gap_head(head: str) -> None:
    """GAP + linear head: ∂y_c/∂A_k = W_kc / (h·w), whatever the input."""
    model = small_cnn(head=head)
    ex = og.Explainer(model)
    res = ex.explain(_batch(3))
    acts, grads = res.activations[0], res.gradients[0]
    h, w = acts.shape[2:]
    expected = _weights(model, "wfc")[:, res.targets].T[:, :, None, None] / (h * w)
    np.testing.assert_allclose(grads, np.broadcast_to(expected, grads.shape), atol=1e-7)
    # Grad-CAM from the closed-form gradient, numpy all the way, against res.coarse and res.cams
    weights = _weights(model, "wfc")[:, res.targets].T / (h * w)
    coarse = np.einsum("nk,nkhw->nhw", weights, acts)
    np.testing.assert_allclose(res.coarse, coarse, atol=1e-5)
    np.testing.assert_allclose(res.cams, numpy_gradcam(acts, np.broadcast_to(
        expected, grads.shape), (16, 16)), atol=1e-5)


def test_targets_default_to_argmax_and_scores_are_logits() -> None:
    model = small_cnn(softmax=True)
    ex = og.Explainer(model)
    assert ex.score == "logits" and ex.score_kind == "logits"
    res = ex.explain(_batch(4, seed=3))
    np.testing.assert_array_equal(res.targets, res.scores.argmax(axis=1))
    explicit = ex.explain(_batch(4, seed=3), targets=[1, 2, 3, 4])
    np.testing.assert_array_equal(explicit.targets, [1, 2, 3, 4])
    single = ex.explain(_batch(4, seed=3), targets=2)
    np.testing.assert_array_equal(single.targets, [2, 2, 2, 2])


def test_probabilities_score_differentiates_the_softmax() -> None:
    """∂p_c/∂A = Σ_j p_c(δ_cj − p_j) ∂z_j/∂A, with ∂z_j/∂A_k = W_kj/(h·w)."""
    model = small_cnn(softmax=True)
    res = og.Explainer(model, score="probabilities").explain(_batch(2, seed=4))
    logits = og.Explainer(model).explain(_batch(2, seed=4)).scores
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(res.scores, p, atol=1e-6)
    w = _weights(model, "wfc")
    h, ww = res.activations[0].shape[2:]
    for n, c in enumerate(res.targets):
        dp_dz = p[n, c] * ((np.arange(len(p[n])) == c) - p[n])
        expected = (w @ dp_dz) / (h * ww)
        np.testing.assert_allclose(res.gradients[0][n, :, 0, 0], expected, rtol=1e-4,
                                   atol=1e-8)


def test_symbolic_batch_and_chunking_give_the_same_answer() -> None:
    model = small_cnn()
    x = _batch(5, seed=7)
    whole = og.Explainer(model, batch_size=16).explain(x)
    chunked = og.Explainer(model, batch_size=2).explain(x)
    one = og.Explainer(model).explain(x[2:3])
    np.testing.assert_allclose(whole.cams, chunked.cams, atol=1e-6)
    np.testing.assert_allclose(whole.cams[2], one.cams[0], atol=1e-6)


def test_explainer_graph_is_standard_onnx() -> None:
    loaded = load_model(small_cnn(softmax=True))
    graph = explainer_model(loaded.info, GraphSpec(("act",), loaded.logits))
    onnx.checker.check_model(graph.model, full_check=True)
    domains = {n.domain for n in graph.model.graph.node}
    assert domains <= {"", "ai.onnx"}
    assert graph.head_ops == ["GlobalAveragePool", "Flatten", "Gemm"]


def test_layer_detection_and_override() -> None:
    model = small_cnn()
    assert og.Explainer(model).layers[0].name == "act"
    res = og.Explainer(model, layer="r1").explain(_batch(1))
    assert res.activations[0].shape[2:] == (16, 16) and res.layers == ["r1"]
    with pytest.raises(og.OnnxGradCamError, match="unknown layer 'actt'.*act"):
        og.Explainer(model, layer="actt")


@pytest.mark.parametrize("method", list(GRAPH_METHODS))
def test_zero_gradient_gives_all_zero_map_not_nan(method: str) -> None:
    model = small_cnn()
    for t in model.graph.initializer:
        if t.name == "wfc":
            t.CopyFrom(numpy_helper.from_array(np.zeros((8, 5), np.float32), "wfc"))
    res = og.Explainer(model, method=method).explain(_batch(2))
    assert np.all(res.gradients[0] == 0)
    assert not np.isnan(res.cams).any() and np.all(res.cams == 0)


def _symbolic_size(model: onnx.ModelProto) -> onnx.ModelProto:
    for dim in model.graph.input[0].type.tensor_type.shape.dim[2:]:
        dim.dim_param = "hw"
    return model


#: (model, layer, batch): average-pool heads in three spellings, one with a symbolic map size,
#: and an early layer whose gradient is not constant over the positions
COARSE_CASES = {
    "global_average_pool": (small_cnn(), None, _batch(3, seed=6)),
    "reduce_mean": (small_cnn(head="mean_matmul"), None, _batch(3, seed=7)),
    "symbolic_size": (_symbolic_size(small_cnn()), None, _batch(2, size=20, seed=8)),
    "nhwc": (nhwc_cnn(), "act_nhwc", _batch(3, seed=9).transpose(0, 2, 3, 1).copy()),
    "early_layer": (small_cnn(), "r1", _batch(2, seed=10)),
}


@pytest.mark.parametrize("case", sorted(COARSE_CASES))
@pytest.mark.parametrize("method", list(GRAPH_METHODS))
def test_graph_coarse_map_is_the_method_formula(method: str, case: str) -> None:
    """Each method's coarse map from the explainer graph (with its shortcuts for a pooling
    head: weights from the constant gradient, the head's own average pool of A) equals the
    method's formula written out with loops in tests/test_cams.py, applied to the fetched
    activations and gradients."""
    from tests.test_cams import expected

    model, layer, x = COARSE_CASES[case]
    res = og.Explainer(model, layer=layer, method=method).explain(x)
    want = expected(method, res.activations[0], res.gradients[0])
    assert float(np.abs(want).max()) > 1e-3, "a vanishing map would prove nothing"
    np.testing.assert_allclose(res.coarse, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("method", ["gradcam++", "xgradcam"])
def test_pooling_head_methods_reuse_the_forward_average_pool(method: str) -> None:
    """Grad-CAM++ and XGrad-CAM need mean_ij A; under an average-pooling head that is the
    forward pass's own pool, so the maps graph reads A in no other reduction."""
    for model in (small_cnn(), small_cnn(head="mean_matmul")):
        graph = og.Explainer(model, method=method).graph.maps_model().graph
        readers = [n.op_type for n in graph.node if "act" in n.input]
        assert readers.count("ReduceMean") + readers.count("GlobalAveragePool") == 1, readers
        assert "ReduceSum" not in readers, readers


def test_providers_take_ort_options_and_name_the_one_that_ran() -> None:
    x = _batch(2)
    plain = og.Explainer(small_cnn(), providers="cpu").explain(x)
    ex = og.Explainer(small_cnn(), providers=[("CPUExecutionProvider", {})])
    assert ex.provider == "CPUExecutionProvider"
    np.testing.assert_array_equal(ex.explain(x).cams, plain.cams)
    if "CUDAExecutionProvider" not in ort.get_available_providers():  # onnxruntime (not -gpu)
        with pytest.raises(og.OnnxGradCamError, match="no CUDA support"):
            og.Explainer(small_cnn(), providers=[("CUDAExecutionProvider", {"use_tf32": 0})])
    else:  # onnxruntime-gpu: on this CI machine without a GPU, a clear error, not a CPU fallback
        try:
            ex = og.Explainer(small_cnn(), providers=[("CUDAExecutionProvider", {"use_tf32": 0})])
        except og.OnnxGradCamError as exc:
            assert "CUDAExecutionProvider" in str(exc) and "\n" not in str(exc)
        else:
            assert ex.provider == "CUDAExecutionProvider"


def test_out_of_range_target_is_one_clear_error() -> None:
    ex = og.Explainer(small_cnn(classes=5))
    with pytest.raises(og.OnnxGradCamError, match="target 5 is out of range.*5 classes"):
        ex.explain(_batch(1), targets=5)


def test_multi_layer_map_is_the_renormalised_mean() -> None:
    model = small_cnn()
    x = _batch(2, seed=9)
    both = og.Explainer(model, layer=["act", "r1"]).explain(x)
    a = og.Explainer(model, layer="act").explain(x)
    b = og.Explainer(model, layer="r1").explain(x)

    def first_stage(res):  # per-layer map before aggregation, recomputed independently
        cams = []
        for coarse in [np.einsum("nk,nkhw->nhw", g.mean(axis=(2, 3)), act)
                       for act, g in zip(res.activations, res.gradients)]:
            m = np.maximum(coarse, 0)
            m = m - m.min(axis=(1, 2), keepdims=True)
            m = m / (1e-7 + m.max(axis=(1, 2), keepdims=True))
            cams.append(np.stack([cv2.resize(np.float32(i), (16, 16)) for i in m]))
        return cams

    mean = np.maximum((first_stage(a)[0] + first_stage(b)[0]) / 2, 0)
    mean = mean - mean.min(axis=(1, 2), keepdims=True)
    mean = mean / (1e-7 + mean.max(axis=(1, 2), keepdims=True))
    np.testing.assert_allclose(both.cams, mean, atol=1e-5)


def test_heatmaps_post_processed_in_the_graph_match_the_numpy_cv2_path() -> None:
    """The explainer graph post-processes (ReLU, min-max, upsampling by interpolation matrices,
    min-max) as :func:`postprocess` does with numpy and cv2.resize: ≤ 1e-6 apart, for static
    and for symbolic input sizes (the latter through ONNX Resize), NCHW and NHWC."""
    symbolic = small_cnn()
    for dim in symbolic.graph.input[0].type.tensor_type.shape.dim[2:]:
        dim.dim_param = "hw"
    for model, x in [(small_cnn(), _batch(4, seed=3)), (symbolic, _batch(2, seed=4)),
                     (nhwc_cnn(), _batch(3, seed=5).transpose(0, 2, 3, 1).copy())]:
        ex = og.Explainer(model)
        assert ex.graph.cams is not None
        res = ex.explain(x)
        want = postprocess([res.coarse], res.cams.shape[1:])
        assert np.abs(res.cams - want).max() <= 1e-6


def _model_with_head_op(op_type: str, **attrs) -> onnx.ModelProto:
    base = small_cnn()
    graph = base.graph
    nodes = list(graph.node)
    # insert op between the activation and the pooling
    nodes.insert(4, helper.make_node(op_type, ["act"], ["odd"], name="the_odd_one", **attrs))
    nodes[5].input[0] = "odd"
    del graph.node[:]
    graph.node.extend(nodes)
    return base


def test_head_op_without_rule_names_op_and_node() -> None:
    model = _model_with_head_op("LpNormalization", axis=1)
    with pytest.raises(og.OnnxGradCamError,
                       match="LpNormalization.*the_odd_one.*nearest layer that works: --layer odd"):
        og.Explainer(model, layer="act")
    # a layer after the unsupported op works
    assert og.Explainer(model, layer="odd").explain(_batch(1)).cams.shape == (1, 16, 16)


def test_model_without_rank4_activation_is_rejected() -> None:
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["f"]),
         helper.make_node("MatMul", ["f", "w"], ["logits"])], "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 1, 1])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(np.ones((3, 4), np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    with pytest.raises(og.OnnxGradCamError, match="no rank-4 activation"):
        og.Explainer(model)


def test_missing_and_non_onnx_files(tmp_path) -> None:
    with pytest.raises(og.OnnxGradCamError, match="no such model file"):
        og.Explainer(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not protobuf at all \xff\xfe")
    with pytest.raises(og.OnnxGradCamError, match="not an ONNX model"):
        og.Explainer(bad)


def test_nhwc_model_through_transpose() -> None:
    """An NHWC model (as tf2onnx emits): the layer is the internal NCHW tensor, inputs NHWC."""
    model = nhwc_cnn()
    ex = og.Explainer(model)
    assert ex.layers[0].name == "act" and ex.model.input_layout == "NHWC"
    x = _batch(2).transpose(0, 2, 3, 1)
    res = ex.explain(x)
    expected = _weights(model, "wfc")[:, res.targets].T / 64
    np.testing.assert_allclose(res.gradients[0][:, :, 3, 5], expected, atol=1e-7)
    # the same tensor seen through its NHWC Transpose gives the same map
    via = og.Explainer(model, layer="act_nhwc").explain(x)
    assert via.layers == ["act_nhwc"]
    np.testing.assert_allclose(via.cams, res.cams, atol=1e-6)


@pytest.mark.parametrize("layer_index", [-1, 3])
def test_many_targets_in_one_pass_equal_separate_explanations(layer_index: int) -> None:
    """explain_many runs the backbone once and a replicated head per (image, target) row; it must
    equal one explain() per rank — also at an early layer whose head has skip connections."""
    from bench.nets import resnet

    model = resnet(blocks=(1, 1, 1, 1), width=8, size=48, classes=7)
    layer = og.model.candidate_layers(load_model(model))[layer_index].name
    ex = og.Explainer(model, layer=layer)
    x = _batch(2, size=48, seed=11)
    many = ex.explain_many(x, top_k=3)
    ranked = np.argsort(-many.scores, axis=1)[:, :3]
    np.testing.assert_array_equal(many.targets, ranked)
    for rank in range(3):
        single = ex.explain(x, ranked[:, rank])
        np.testing.assert_allclose(many.cams[:, rank], single.cams, atol=1e-6)
        np.testing.assert_allclose(many.gradients[0][rank::3], single.gradients[0], atol=1e-6)
    onnx.checker.check_model(ex.rows_graph.model, full_check=True)
    chosen = ex.explain_many(x, targets=[[0, 6], [5, -1]])
    np.testing.assert_array_equal(chosen.targets, [[0, 6], [5, ranked[1, 0]]])
    # rank codes in explain() itself (the argmax-only default graph hands them to a ranked one)
    by_code = ex.explain(x, [-2, -3])
    np.testing.assert_array_equal(by_code.targets, [ranked[0, 1], ranked[1, 2]])
    np.testing.assert_allclose(by_code.cams[0], many.cams[0, 1], atol=1e-6)
    np.testing.assert_allclose(by_code.cams[1], many.cams[1, 2], atol=1e-6)


def test_layout_walks_through_multi_input_elementwise_ops() -> None:
    """tf2onnx sometimes leaves a graph NHWC (its transpose optimizer failed): x·relu6(x+3)/6
    after a channels-last Transpose is still NHWC."""
    from onnx_gradcam.model import activation_layout

    nodes = [helper.make_node("Conv", ["input", "w"], ["c"]),
             helper.make_node("Transpose", ["c"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("Add", ["t", "three"], ["a"]),
             helper.make_node("Clip", ["a", "zero", "six"], ["r"]),
             helper.make_node("Mul", ["t", "r"], ["m"]),
             helper.make_node("Div", ["m", "six"], ["hswish"])]
    graph = helper.make_graph(
        nodes, "nhwc", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("hswish", TensorProto.FLOAT, [1, 8, 8, 4])],
        [numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w"),
         numpy_helper.from_array(np.array(3.0, np.float32), "three"),
         numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
         numpy_helper.from_array(np.array(6.0, np.float32), "six")])
    info = og.model.GraphInfo(helper.make_model(graph))
    assert activation_layout(info, "hswish") == "NHWC"
    assert activation_layout(info, "c") == "NCHW"


def test_nhwc_global_mean_is_not_a_candidate_layer() -> None:
    """A keepdims ReduceMean over H, W of an NHWC tensor is (N, 1, 1, C): 1×1, not a layer."""
    from onnx_gradcam.model import activation_layout

    nodes = [helper.make_node("Conv", ["input", "w"], ["c"]),
             helper.make_node("Transpose", ["c"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("ReduceMean", ["t"], ["m"], axes=[1, 2], keepdims=1)]
    graph = helper.make_graph(
        nodes, "nhwc", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("m", TensorProto.FLOAT, [1, 1, 1, 576])],
        [numpy_helper.from_array(np.ones((576, 3, 1, 1), np.float32), "w")])
    info = og.model.GraphInfo(helper.make_model(graph, opset_imports=[
        helper.make_opsetid("", 17)]))
    assert activation_layout(info, "m") == "NHWC"


def test_nonnegative_tensors_are_recognised_through_value_moves() -> None:
    """Element-wise Grad-CAM takes Layer-CAM's formula on such a layer (relu(G ⊙ A) =
    relu(G) ⊙ A for A ≥ 0; its values are checked against pytorch-grad-cam's in
    tests/test_torch_parity.py, at ReLU and at BatchNormalization outputs)."""
    from onnx_gradcam.graph import GraphInfo

    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("Clip", ["c", "lo", ""], ["clip0"]),
             helper.make_node("Clip", ["c", "neg", ""], ["clip_neg"]),
             helper.make_node("Add", ["r", "r"], ["sum"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
         for o in ("t", "clip0", "clip_neg", "sum")],
        [numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "w"),
         numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
         numpy_helper.from_array(np.array(-1.0, np.float32), "neg")])
    info = GraphInfo(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert {n: info.nonnegative(n) for n in ("x", "c", "r", "t", "clip0", "clip_neg", "sum")} == {
        "x": False, "c": False, "r": True, "t": True, "clip0": True, "clip_neg": False,
        "sum": False}
