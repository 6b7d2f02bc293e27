"""Models as they are deployed: int8 copies of the wild corpus's float32 exports, made here by
onnxruntime's ``quantize_static`` (QDQ and QOperator formats, uint8 activations, int8 weights,
per-tensor and per-channel, every op the quantizer takes: QGemm heads, integer MaxPool),
calibrated on photos other than the ones explained, and by ``quantize_dynamic``
(DynamicQuantizeLinear → ConvInteger/MatMulInteger).

The int8 model's map is compared with the float32 model's at the same target: quantization
moves the activations and the gradients a little, so the maps must agree in shape (correlation),
not to rounding. The rules themselves are checked against finite differences in test_rules.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnx_gradcam as og

quantization = pytest.importorskip("onnxruntime.quantization")
skimage_data = pytest.importorskip("skimage.data")
transform = pytest.importorskip("skimage.transform")

WILD = Path(__file__).parent / "fixtures" / "wild"
MANIFEST = json.loads((WILD / "torch_manifest.json").read_text())["models"]
EXPECTED = np.load(WILD / "torch_expected.npz")
FILES = {"resnet": "resnet_legacy_opset9.onnx", "mobilenet_v3": "mobilenet_v3_legacy_opset13.onnx",
         "efficientnet": "efficientnet_legacy_opset17.onnx"}
CALIBRATION = ("rocket", "hubble_deep_field", "immunohistochemistry", "retina")
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
MIN_CORRELATION = 0.9  # the bar
#: below this positive area a float map is the ReLU'd tail of a mostly negative sum: quantization
#: noise of a few per cent of the sum's range moves its zero crossing, so the final maps'
#: correlation measures where that boundary lies; the pre-ReLU maps are compared always
MIN_POSITIVE_AREA = 0.25


def _photo(name: str, size: tuple[int, int]) -> np.ndarray:
    rgb = transform.resize(getattr(skimage_data, name)(), size, anti_aliasing=True)
    return ((rgb - MEAN) / STD).astype(np.float32).transpose(2, 0, 1)[None]


class Calibration(quantization.CalibrationDataReader):
    def __init__(self, batches: list[dict[str, np.ndarray]]) -> None:
        self.batches = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


@pytest.fixture(scope="module", params=[(fmt, per_channel)
                                        for fmt in ("QDQ", "QOperator", "dynamic")
                                        for per_channel in (False, True)],
                ids=lambda p: f"{p[0]}-{'per_channel' if p[1] else 'per_tensor'}")
def quantized_copies(request, tmp_path_factory) -> tuple[str, dict[str, Path]]:
    """(format, {model: int8 copy})."""
    fmt, per_channel = request.param
    folder = tmp_path_factory.mktemp(fmt)
    copies = {}
    for model, file in FILES.items():
        copies[model] = folder / f"{model}.int8.onnx"
        _quantize(WILD / file, copies[model], fmt, per_channel)
    return fmt, copies


def _quantize(source: Path, path: Path, fmt: str, per_channel: bool,
              op_types: list[str] | None = None) -> None:
    """An int8 copy of ``source``: ``quantize_dynamic``, or ``quantize_static`` in ``fmt``
    calibrated on :data:`CALIBRATION` (resized to the model's input), of ``op_types`` (all
    that the quantizer takes where None)."""
    if fmt == "dynamic":
        quantization.quantize_dynamic(str(source), str(path), per_channel=per_channel,
                                      weight_type=quantization.QuantType.QInt8)
        return
    model = onnx.load(source, load_external_data=False)
    name, dims = model.graph.input[0].name, model.graph.input[0].type.tensor_type.shape.dim
    batches = [{name: _photo(p, (dims[2].dim_value, dims[3].dim_value))} for p in CALIBRATION]
    quantization.quantize_static(
        str(source), str(path), Calibration(batches),
        quant_format=getattr(quantization.QuantFormat, fmt), per_channel=per_channel,
        activation_type=quantization.QuantType.QUInt8, weight_type=quantization.QuantType.QInt8,
        op_types_to_quantize=op_types)


#: op types quantized for test_qoperator_gradients_follow_the_qdq_model: ReLU (and Gemm) stay
#: float, so few results sit at a range end (see there)
SAME_IN_BOTH = ["Conv", "Add", "Mul", "GlobalAveragePool", "AveragePool", "Sigmoid",
                "LeakyRelu", "Concat", "MatMul"]


def _correlations(float_result, int8_result) -> tuple[list[float], list[float]]:
    """Per image: the pre-ReLU maps' correlation, and the final maps' where the float map's
    positive area is at least :data:`MIN_POSITIVE_AREA`."""
    coarse, final = [], []
    for i, (a, b) in enumerate(zip(float_result.cams, int8_result.cams)):
        coarse.append(_corr(float_result.coarse[i], int8_result.coarse[i]))
        if (a > 0).mean() >= MIN_POSITIVE_AREA:
            final.append(_corr(a, b))
    return coarse, final


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def _int8_names(model: str, float_layer: str, fmt: str) -> list[str]:
    """What the int8 copies call the float model's layer: QDQ the dequantized copy of it;
    QOperator the float tensor itself where it stays float, else its integer tensor (which the
    explainer dequantizes: ``NAME/dequantized``) — where the quantizer folded the layer's ReLU
    into the op before it (its integer range starts at zero), that op's; dynamic copies keep
    the float tensor."""
    if fmt == "dynamic":
        return [float_layer]
    float_model = onnx.load(WILD / FILES[model], load_external_data=False)
    producer = next(n for n in float_model.graph.node if float_layer in n.output)
    names = [f"{float_layer}_DequantizeLinear_Output", f"{float_layer}_quantized/dequantized"]
    if producer.op_type == "Relu":
        names.append(f"{producer.input[0]}_quantized/dequantized")
    # last: a QDQ copy that folded the ReLU names the sum before its QuantizeLinear like the
    # float layer, so the float name is the float layer only where no quantized one exists
    return [*names, float_layer]


@pytest.mark.parametrize("model", list(FILES))
@pytest.mark.parametrize("depth", ["last", "mid"])
def test_int8_maps_follow_the_float_model(quantized_copies, model: str,
                                          depth: str) -> None:
    """Explain succeeds at the auto-detected layer (the int8 copy of the float model's layer)
    and at an early one named explicitly; its maps correlate ≥ 0.9 with float32's.

    Copies of only some op types (``op_types_to_quantize``) fall below on one photo: ResNet's
    early layer 0.85 in both formats (the two maps equal), MobileNetV3's last 0.84 QOperator /
    0.89 QDQ (their int8 forwards differ there: activations 0.994). Such a copy keeps the ReLU
    in float between a DequantizeLinear and a second QuantizeLinear: two roundings per block,
    a different int8 model from the one a full quantization deploys."""
    fmt, copies = quantized_copies
    float_layer = MANIFEST[model]["files"][FILES[model]]["layers"][depth]["onnx_tensor"]
    names = _int8_names(model, float_layer, fmt)
    if depth == "last":
        int8 = og.Explainer(copies[model], providers="cpu")
        assert int8.layer_names[0] in names
    else:
        graph = {o for n in onnx.load(copies[model]).graph.node for o in n.output}
        named = next(n for n in names if n.removesuffix("/dequantized") in graph)
        int8 = og.Explainer(copies[model], layer=named.removesuffix("/dequantized"),
                            providers="cpu")
    reference = og.Explainer(WILD / FILES[model], layer=float_layer, providers="cpu")
    x, targets = EXPECTED[f"{model}__input"], EXPECTED[f"{model}__targets"]
    for target in targets[:2]:
        coarse, final = _correlations(reference.explain(x, target), int8.explain(x, target))
        print(f"{fmt} {model} {depth} targets {target}: pre-ReLU {np.round(coarse, 3)}, "
              f"final {np.round(final, 3)}")
        assert min(coarse + final) >= MIN_CORRELATION, (coarse, final)


@pytest.mark.parametrize("model", list(FILES))
def test_qoperator_gradients_follow_the_qdq_model(tmp_path, model: str) -> None:
    """A QOperator copy (QLinearConv, QLinearAdd, QLinearMul, QLinearSigmoid, …) and a QDQ copy
    made from the same calibration mean the same real-valued function: the gradient of the
    scores w.r.t. the input pixels, through every quantized op, agrees (correlation ≥ 0.99;
    single entries differ where the two kernels round a value across a range end).

    Quantizing every op, the ResNet's agree less (0.96), for one traced reason: a result that
    rounds to the bottom of its range. QDQ's QuantizeLinear rule tests the float before
    rounding (a pooled 0 or 0.4·s is inside); a QLinear op's rule has only the integer, and
    counts its range ends as clipped (a fused ReLU's zeros are). At the last layer the
    activations are equal, and the gradients differ exactly in the channels whose pooled
    value is 0 after rounding (every all-zero channel, and a few small ones): those get 0 from
    the QOperator rules. Maps barely move (an all-zero channel adds nothing to them). So the
    copies here quantize :data:`SAME_IN_BOTH`, whose ReLUs stay float."""
    from onnx_gradcam.explainer_graph import GRADIENT, SEED, gradient_model
    from onnx_gradcam.model import load_model
    from tests.gradcheck import session

    x, targets = EXPECTED[f"{model}__input"], EXPECTED[f"{model}__targets"][0]
    gradients = {}
    for fmt in ("QDQ", "QOperator"):
        path = tmp_path / f"{fmt}.onnx"
        _quantize(WILD / FILES[model], path, fmt, per_channel=True, op_types=SAME_IN_BOTH)
        loaded = load_model(path)
        ops = {n.op_type for n in loaded.proto.graph.node}
        assert ("QLinearConv" in ops) == (fmt == "QOperator")
        seed = np.eye(EXPECTED[f"{model}__logits"].shape[1], dtype=np.float32)[targets]
        backward = session(gradient_model(loaded.info, loaded.input_name, loaded.logits))
        gradients[fmt] = backward.run([GRADIENT], {loaded.input_name: x, SEED: seed})[0]
    correlation = _corr(gradients["QDQ"], gradients["QOperator"])
    print(f"{model}: input-gradient correlation QOperator vs QDQ {correlation:.4f}")
    assert correlation >= 0.99


def _optimized_ops(model: onnx.ModelProto, folder: Path) -> tuple[dict[str, int], int]:
    """(count of each op type, DequantizeLinear nodes of initializers) in the graph ONNX
    Runtime runs for ``model`` after its QDQ fusions (ORT_ENABLE_EXTENDED)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(folder / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    graph = onnx.load(opts.optimized_model_filepath).graph
    weights = {t.name for t in graph.initializer}
    counts: dict[str, int] = {}
    for node in graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts, sum(n.op_type == "DequantizeLinear" and n.input[0] in weights
                       for n in graph.node)


@pytest.mark.parametrize("model", list(FILES))
@pytest.mark.parametrize("depth", ["last", "mid"])
def test_explainer_keeps_the_fused_integer_kernels(tmp_path, model: str, depth: str) -> None:
    """The explainer graph's forward runs the integer kernels the plain QDQ model runs: the
    backward reads no float result of a node unit ONNX Runtime fuses (QLinearConv, QGemm,
    QLinearGlobalAveragePool, …), and no weight's DequantizeLinear (which it would otherwise
    run per call). So its scores are the deployed model's, to the bit (a float Conv followed
    by QuantizeLinear rounds otherwise than QLinearConv)."""
    path = tmp_path / "int8.onnx"
    x = EXPECTED[f"{model}__input"]
    name = onnx.load(WILD / FILES[model], load_external_data=False).graph.input[0].name
    quantization.quantize_static(
        str(WILD / FILES[model]), str(path),
        Calibration([{name: _photo(p, x.shape[2:])} for p in CALIBRATION]),
        quant_format=quantization.QuantFormat.QDQ, per_channel=True,
        activation_type=quantization.QuantType.QUInt8, weight_type=quantization.QuantType.QInt8)
    float_layer = MANIFEST[model]["files"][FILES[model]]["layers"][depth]["onnx_tensor"]
    explainer = og.Explainer(path, layer=f"{float_layer}_DequantizeLinear_Output",
                             providers="cpu")
    plain, plain_weights = _optimized_ops(explainer.model.proto, tmp_path)
    explain, explain_weights = _optimized_ops(
        explainer.sessions.graph().maps_model(), tmp_path)
    fused = {op for op in plain if op.startswith(("QLinear", "QGemm"))}
    assert fused, "the plain model runs no fused integer kernel"
    assert {op: explain.get(op, 0) for op in fused} == {op: plain[op] for op in fused}
    assert explain_weights == plain_weights
    # the graph the explainer loaded (the quantizer writes opset 11 with opset-13 attributes
    # for an opset-9 source; loading upgrades it)
    deployed = ort.InferenceSession(explainer.model.proto.SerializeToString(),
                                    providers=["CPUExecutionProvider"])
    scores = deployed.run(None, {name: x})[0]
    np.testing.assert_array_equal(explainer.explain(x).scores, scores.reshape(len(x), -1))


def test_one_hot_seed_through_a_clipped_score() -> None:
    """A one-hot seed stays a gather of the classifier's rows through the straight-through
    step of a quantized score (its row times whether the score was clipped): the gradient equals
    the one of the same seed fed as a dense tensor, and is 0 for a sample whose target score
    sits at the end of its range."""
    from onnx import TensorProto, helper, numpy_helper

    from onnx_gradcam.explainer_graph import (
        GRADIENT,
        SEED,
        TARGET,
        GraphSpec,
        explainer_model,
        gradient_model,
    )
    from onnx_gradcam.graph import GraphInfo
    from tests.gradcheck import session

    rng = np.random.default_rng(5)
    weights = rng.integers(-100, 100, (6, 4)).astype(np.int8)
    inits = [numpy_helper.from_array(weights, "wq"),
             numpy_helper.from_array(np.array(0.01, np.float32), "ws"),
             numpy_helper.from_array(np.array(0, np.int8), "wz"),
             numpy_helper.from_array(np.array(0.02, np.float32), "s"),
             numpy_helper.from_array(np.array(128, np.uint8), "z")]
    nodes = [helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"]),
             helper.make_node("Gemm", ["x", "w"], ["logits"], transB=1),
             helper.make_node("QuantizeLinear", ["logits", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    graph = helper.make_graph(
        nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    info = GraphInfo(model)
    x = rng.standard_normal((3, 4)).astype(np.float32)
    x[2] *= 40.0  # sample 2's scores leave the range (±2.56)
    targets = np.array([1, 4, int(np.argmax(np.abs(x[2] @ (weights.T * 0.01))))])
    one_hot = explainer_model(info, GraphSpec(layers=("x",), score="y", seed="classes"))
    assert {"Gemm", "MatMul"}.isdisjoint(
        n.op_type for n in one_hot.model.graph.node if n.name.startswith("ogc_grad"))
    sparse = session(one_hot.model).run([GRADIENT], {"x": x, TARGET: targets})[0]
    seed = np.eye(6, dtype=np.float32)[targets]
    dense = session(gradient_model(info, "x", "y")).run([GRADIENT], {"x": x, SEED: seed})[0]
    np.testing.assert_array_equal(sparse, dense)
    scores = x @ (weights.T.astype(np.float32) * np.float32(0.01))
    clipped = np.abs(scores[np.arange(3), targets] / 0.02) >= 127
    assert list(clipped) == [False, False, True]
    assert not sparse[2].any() and sparse[:2].all()


def test_requantizing_values_on_the_grid_clips_nothing() -> None:
    """A QuantizeLinear of a DequantizeLinear's values with the same parameters (a quantizer's
    requantized Flatten; the pair a QOperator layer is explained through) is the identity on
    them, also where an integer sits at an end of its range: the gradient passes there."""
    from onnx import TensorProto, helper, numpy_helper

    from onnx_gradcam.explainer_graph import GRADIENT, SEED, gradient_model
    from onnx_gradcam.graph import GraphInfo
    from tests.gradcheck import session

    weights = np.arange(1, 7, dtype=np.float32).reshape(1, 6)
    inits = [numpy_helper.from_array(np.array(0.02, np.float32), "s"),
             numpy_helper.from_array(np.array(128, np.uint8), "z"),
             numpy_helper.from_array(weights, "w")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]),
             helper.make_node("Flatten", ["d"], ["f"]),
             helper.make_node("QuantizeLinear", ["f", "s", "z"], ["q2"]),
             helper.make_node("DequantizeLinear", ["q2", "s", "z"], ["d2"]),
             helper.make_node("Mul", ["d2", "w"], ["y"])]
    graph = helper.make_graph(
        nodes, "requantized", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    x = np.array([[-9.0, -1.0, 0.0, 0.5, 1.0, 9.0], [3.0, -3.0, 0.1, -0.1, 2.0, -2.0]],
                 np.float32)  # ±9 and ±3 quantize to the ends 0 and 255
    backward = session(gradient_model(GraphInfo(model), "d", "y"))
    gradient = backward.run([GRADIENT], {"x": x, SEED: np.ones((2, 6), np.float32)})[0]
    np.testing.assert_array_equal(gradient, np.broadcast_to(weights, (2, 6)))
