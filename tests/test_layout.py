"""Layouts from evidence (onnx_gradcam/layout.py): each kind of evidence on a small hand-built
graph, refusals where the graph disagrees or says nothing, and what is never a candidate."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_gradcam as og
from onnx_gradcam.graph import GraphInfo
from onnx_gradcam.layout import Layouts
from onnx_gradcam.model import candidate_layers, load_model
from tests.converters.conftest import run_cli
from tests.models import small_cnn

F = TensorProto.FLOAT


def _init(name: str, shape: tuple[int, ...], seed: int = 0) -> onnx.TensorProto:
    array = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return numpy_helper.from_array(array, name)


#: an op of a custom domain, runnable as a model-local function (its body is a ReLU)
BLUR = helper.make_function("custom.ops", "Blur", ["a"], ["b"],
                            [helper.make_node("Relu", ["a"], ["b"])],
                            [helper.make_opsetid("", 18)])


def _model(nodes, input_shape, output, output_shape, inits=(), values=(),
           opset=18) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", F, list(input_shape))],
        [helper.make_tensor_value_info(output, F, list(output_shape))], list(inits),
        value_info=[helper.make_tensor_value_info(n, F, list(s)) for n, s in values])
    imports = [helper.make_opsetid("", opset), helper.make_opsetid("custom.ops", 1)]
    model = helper.make_model(graph, opset_imports=imports, functions=[BLUR])
    model.ir_version = 9
    return model


def _axes(name: str, axes: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(axes, np.int64), name)


# The tensor "t" (1, 6, 8, 8) or (1, 8, 8, 6): a custom op hides its producer, so only the
# listed evidence (after it, or around it) can tell its layout.
def _custom(src: str = "x") -> onnx.NodeProto:
    return helper.make_node("Blur", [src], ["t"], domain="custom.ops", name="blur")


CASES = {
    "ReduceMean axes [1, 2] ⇒ NHWC": (
        [_custom(), helper.make_node("ReduceMean", ["t", "ax"], ["m"], keepdims=0, name="mean")],
        (1, 8, 8, 6), "m", (1, 6), [_axes("ax", [1, 2])], "NHWC", "ReduceMean axes [1, 2]"),
    "ReduceSum axes [2, 3] ⇒ NCHW": (
        [_custom(), helper.make_node("ReduceSum", ["t", "ax"], ["m"], keepdims=0, name="sum")],
        (1, 6, 8, 8), "m", (1, 6), [_axes("ax", [-2, -1])], "NCHW", "ReduceSum axes [2, 3]"),
    "GlobalAveragePool ⇒ NCHW": (
        [_custom(), helper.make_node("GlobalAveragePool", ["t"], ["m"], name="gap")],
        (1, 6, 8, 8), "m", (1, 6, 1, 1), [], "NCHW", "input of GlobalAveragePool"),
    "Transpose [0, 3, 1, 2] into a Conv ⇒ NHWC": (
        [_custom(), helper.make_node("Transpose", ["t"], ["p"], perm=[0, 3, 1, 2], name="tr"),
         helper.make_node("Conv", ["p", "w"], ["m"], name="conv")],
        (1, 8, 8, 6), "m", (1, 4, 8, 8), [_init("w", (4, 6, 1, 1))], "NHWC",
        "input of Transpose perm [0, 3, 1, 2]"),
    "LayerNormalization over C ⇒ NHWC": (
        [_custom(), helper.make_node("LayerNormalization", ["t", "g", "b"], ["m"], axis=-1,
                                     name="ln")],
        (1, 8, 8, 6), "m", (1, 8, 8, 6), [_init("g", (6,)), _init("b", (6,))], "NHWC",
        "LayerNormalization over the last axis (weight of size 6)"),
    "MatMul with a (C, D) weight ⇒ NHWC": (
        [_custom(), helper.make_node("MatMul", ["t", "w"], ["m"], name="fc")],
        (1, 8, 8, 6), "m", (1, 8, 8, 4), [_init("w", (6, 4))], "NHWC",
        "MatMul over the last axis with a (6, 4) weight"),
    "Reshape to (N, H·W, C) ⇒ NHWC": (
        [_custom(), helper.make_node("Reshape", ["t", "s"], ["m"], name="tokens")],
        (1, 8, 8, 6), "m", (1, 64, 6), [_axes("s", [1, 64, 6])], "NHWC", "Reshape"),
    "the input's layout, forward ⇒ NHWC": (
        [_custom()], (1, 8, 8, 3), "t", (1, 8, 8, 3), [], "NHWC", "model input of shape"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_evidence_kinds(case: str) -> None:
    nodes, shape, out, out_shape, inits, want, reason = CASES[case]
    model = _model(nodes, shape, out, out_shape, inits, values=[("t", shape)])
    verdict = Layouts(GraphInfo(model)).of("t")
    assert verdict.layout == want, verdict
    assert any(reason in line for line in verdict.lines()), verdict.lines()


def test_if_branches_say_the_layout(tmp_path) -> None:
    """tf2onnx 1.8's learning-phase If: each branch normalises the NCHW Conv output it reads
    from the outer graph and transposes it to NHWC; the If's output (and what follows) is NHWC."""
    def branch(name: str) -> onnx.GraphProto:
        nodes = [helper.make_node("BatchNormalization", ["c", "s", "b", "mu", "var"],
                                  [f"{name}_bn"], name=f"{name}_bn"),
                 helper.make_node("Transpose", [f"{name}_bn"], [f"{name}_out"],
                                  perm=[0, 2, 3, 1], name=f"{name}_tr")]
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(
            f"{name}_out", F, [1, 8, 8, 6])])

    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["xt", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("If", ["phase"], ["bn"], then_branch=branch("then"),
                              else_branch=branch("else"), name="learning_phase"),
             helper.make_node("Relu", ["bn"], ["t"], name="relu"),
             helper.make_node("Flatten", ["t"], ["f"]),
             helper.make_node("MatMul", ["f", "fc"], ["logits"])]
    inits = [_init("w", (6, 3, 3, 3)), _init("s", (6,)), _init("b", (6,)), _init("mu", (6,)),
             numpy_helper.from_array(np.abs(_arr((6,))) + 0.5, "var"), _init("fc", (384, 5)),
             numpy_helper.from_array(np.array(False), "phase")]
    model = _model(nodes, (1, 8, 8, 3), "logits", (1, 5), inits)
    model.graph.input.append(helper.make_tensor_value_info("phase", TensorProto.BOOL, []))
    loaded = load_model(model)
    assert loaded.info.graph_inputs == ["x"]  # the learning phase is an overridable initializer
    verdict = loaded.layouts.of("t")
    assert verdict.layout == "NHWC", verdict
    assert any("Transpose perm [0, 2, 3, 1] at node 'then_tr'" in s for s in verdict.lines())
    layers = candidate_layers(loaded)
    assert [la.name for la in layers][-2:] == ["bn", "t"]  # the If keeps the Conv on the path
    assert og.Explainer(model).layers[0].name == "t"
    path = tmp_path / "if.onnx"
    onnx.save(model, path)
    shown = run_cli("inspect", str(path), "--json")
    assert shown.returncode == 0, shown.stderr
    layer = json.loads(shown.stdout)["layer"]
    assert layer["name"] == "t" and layer["layout"] == "NHWC"
    assert any("perm [0, 2, 3, 1] at node 'then_tr'" in e for e in layer["layout_evidence"])


def _arr(shape):
    return np.random.default_rng(1).standard_normal(shape).astype(np.float32)


def test_loop_carries_the_layout() -> None:
    """A Loop's carried value keeps the layout it enters with (a Conv's NCHW)."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Relu", ["v_in"], ["v_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", F, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", F, None)])
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Loop", ["n", "", "c"], ["t"], body=body, name="loop"),
             helper.make_node("Flatten", ["t"], ["logits"])]
    inits = [_init("w", (6, 6, 1, 1)), numpy_helper.from_array(np.array(2, np.int64), "n")]
    model = _model(nodes, (1, 6, 8, 8), "logits", (1, 384), inits, values=[("t", (1, 6, 8, 8))])
    verdict = load_model(model).layouts.of("t")
    assert verdict.layout == "NCHW" and "output of Conv at node 'conv'" in verdict.lines()[0]


def _unknown_layout_model(extra: list[onnx.NodeProto] = (), inits=()) -> onnx.ModelProto:
    """x (1, 6, 8, 8) → custom op → t → Flatten → MatMul: nothing says what t's axes are."""
    nodes = [_custom(), *extra, helper.make_node("Flatten", ["t"], ["f"]),
             helper.make_node("MatMul", ["f", "fc"], ["logits"], name="fc")]
    return _model(nodes, (1, 6, 8, 8), "logits", (1, 5), [_init("fc", (384, 5)), *inits],
                  values=[("t", (1, 6, 8, 8))])


def test_no_evidence_is_refused_and_a_stated_layout_is_used(tmp_path) -> None:
    model = _unknown_layout_model()
    with pytest.raises(og.OnnxGradCamError) as caught:
        og.Explainer(model)
    message = str(caught.value)
    assert "\n" not in message
    assert "layer 't' [1, 6, 8, 8]" in message and "nothing in the graph tells" in message
    assert "--layer t:NCHW or --layer t:NHWC" in message
    with pytest.raises(og.OnnxGradCamError, match="cannot tell whether layer 't'"):
        og.Explainer(model, layer="t")
    x = _arr((1, 6, 8, 8))
    nchw = og.Explainer(model, layer="t:NCHW").explain(x)
    nhwc = og.Explainer(model, layer="t:nhwc").explain(x)
    # activations come back NCHW: K = 6 channels of 8 × 8, or K = 8 channels of 6 × 8
    assert nchw.activations[0].shape == (1, 6, 8, 8)
    assert nhwc.activations[0].shape == (1, 8, 6, 8)
    path = tmp_path / "unknown.onnx"
    onnx.save(model, path)
    refused = run_cli("inspect", str(path))
    assert refused.returncode != 0 and "cannot tell whether layer 't'" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    stated = run_cli("inspect", str(path), "--layer", "t:NHWC", "--json")
    assert stated.returncode == 0, stated.stderr
    assert '"layout": "NHWC"' in stated.stdout and "the user (t:NHWC)" in stated.stdout


def test_disagreeing_evidence_is_refused() -> None:
    """t pooled both as NCHW (GlobalAveragePool) and as NHWC (ReduceMean axes [1, 2])."""
    nodes = [_custom(), helper.make_node("GlobalAveragePool", ["t"], ["g"], name="gap"),
             helper.make_node("ReduceMean", ["t", "ax"], ["r"], keepdims=1, name="mean"),
             helper.make_node("Add", ["g", "r"], ["s"]),
             helper.make_node("Flatten", ["s"], ["logits"])]
    model = _model(nodes, (1, 6, 8, 6), "logits", (1, 36), [_axes("ax", [1, 2])],
                   values=[("t", (1, 6, 8, 6))])
    verdict = load_model(model).layouts.of("t")
    assert verdict.layout is None and {e[0] for e in verdict.evidence} == {"NCHW", "NHWC"}
    with pytest.raises(og.OnnxGradCamError, match=r"the graph disagrees \(NCHW by input of "
                       r"GlobalAveragePool at node 'gap'.*NHWC by ReduceMean axes \[1, 2\]"):
        og.Explainer(model)


def test_pooled_tensors_are_never_candidates() -> None:
    """torch dynamo's ConvNeXt head: GlobalAveragePool (N, C, 1, 1) → Transpose → LayerNorm
    (1, 1, 1, C) → Transpose back. Neither 1 × 1 tensor is a layer, whatever its layout; the
    last stage's output is."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["stage"], name="conv"),
             helper.make_node("GlobalAveragePool", ["stage"], ["gap"]),
             helper.make_node("Transpose", ["gap"], ["gap_t"], perm=[0, 2, 3, 1]),
             helper.make_node("LayerNormalization", ["gap_t", "g", "b"], ["layer_norm_22"],
                              axis=-1),
             helper.make_node("Transpose", ["layer_norm_22"], ["ln_t"], perm=[0, 3, 1, 2]),
             helper.make_node("Flatten", ["ln_t"], ["f"]),
             helper.make_node("Gemm", ["f", "fc"], ["logits"])]
    inits = [_init("w", (768, 3, 1, 1)), _init("g", (768,)), _init("b", (768,)),
             _init("fc", (768, 5))]
    loaded = load_model(_model(nodes, (1, 3, 7, 7), "logits", (1, 5), inits))
    assert [la.name for la in candidate_layers(loaded)] == ["stage"]


def test_weights_are_never_candidates() -> None:
    """paddle2onnx keeps weights as Constant nodes (conv4_depthwise_weights [32, 1, 3, 3])."""
    weights = helper.make_node("Constant", [], ["conv4_depthwise_weights"],
                               value=_init("v", (6, 1, 3, 3)))
    nodes = [weights, helper.make_node("Conv", ["x", "conv4_depthwise_weights"], ["c"],
                                       group=6, pads=[1, 1, 1, 1], name="dw"),
             helper.make_node("GlobalAveragePool", ["c"], ["g"]),
             helper.make_node("Flatten", ["g"], ["logits"])]
    loaded = load_model(_model(nodes, (1, 6, 8, 8), "logits", (1, 6)))
    assert [la.name for la in candidate_layers(loaded)] == ["c"]


@pytest.mark.parametrize("fmt", ["QOperator", "QDQ"])
def test_quantized_models_explain(tmp_path, fmt: str) -> None:
    """quantize_static's graphs explain in both formats, a QOperator copy through QLinearConv
    and its QGemm head (their fidelity: tests/test_quantized.py)."""
    quantization = pytest.importorskip("onnxruntime.quantization")
    source = tmp_path / "float.onnx"
    onnx.save(small_cnn(size=16, batch=1), source)

    class Calibration(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": _arr((1, 3, 16, 16))} for _ in range(4)])

        def get_next(self):
            return next(self.batches, None)

    quantized = tmp_path / "int8.onnx"
    quantization.quantize_static(str(source), str(quantized), Calibration(),
                                 quant_format=getattr(quantization.QuantFormat, fmt))
    ops = {n.op_type for n in onnx.load(quantized).graph.node}
    assert ("QLinearConv" in ops) == (fmt == "QOperator")
    assert og.Explainer(quantized).explain(_arr((1, 3, 16, 16))).cams.shape == (1, 16, 16)


def test_quantized_ops_without_a_rule_are_named() -> None:
    """ONNX Runtime's fused DynamicQuantizeMatMul (its optimizer's, not the quantizer's) has no
    rule: refused in one line naming it."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("GlobalAveragePool", ["c"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("DynamicQuantizeMatMul", ["f", "m", "ms"], ["logits"],
                              domain="com.microsoft")]
    inits = [_init("w", (4, 3, 3, 3)), numpy_helper.from_array(
        np.ones((4, 5), np.int8), "m"), numpy_helper.from_array(np.array(0.1, np.float32), "ms")]
    model = _model(nodes, (1, 3, 8, 8), "logits", (1, 5), inits)
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    with pytest.raises(og.OnnxGradCamError, match=r"quantized QOperator ops "
                       r"\(DynamicQuantizeMatMul ×1\) between the input and the scores"):
        og.Explainer(model)
    with pytest.raises(og.OnnxGradCamError, match="op DynamicQuantizeMatMul .* has no gradient"):
        og.Explainer(model, layer="c")
