"""Keras and SavedModel sources: ONNX Grad-CAM equals Grad-CAM from TF's own GradientTape."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tests.converters.conftest import assert_cams_close, reference_gradcam

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from onnx_gradcam.converters import ConvertOptions, convert  # noqa: E402

import onnx_gradcam as og  # noqa: E402
from onnx_gradcam.metadata import read_metadata  # noqa: E402


def small_cnn() -> object:
    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv_a")(inp)
    x = keras.layers.Conv2D(16, 3, activation="relu", name="conv_b")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    logits = keras.layers.Dense(5, name="logits")(x)
    out = keras.layers.Softmax(name="probs")(logits)
    return keras.Model(inp, out)


def mobilenet_v2() -> object:
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(input_shape=(96, 96, 3), weights=None, classes=10)
    rng = np.random.default_rng(0)
    for layer in model.layers:  # untrained BN (mean 0, var 1) would let activations vanish
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([gamma, beta + rng.uniform(0.1, 0.5, beta.shape).astype("float32"),
                               mean, rng.uniform(0.5, 1.5, var.shape).astype("float32")])
    return model


def tape_gradcam(model: object, act_layer: str, logits_fn, x: np.ndarray,
                 targets: np.ndarray) -> np.ndarray:
    """Grad-CAM with tf.GradientTape on the pre-softmax score of ``targets``."""
    inner = keras.Model(model.inputs, [model.get_layer(act_layer).output, model.output])
    with tf.GradientTape() as tape:
        acts, _ = inner(x, training=False)
        tape.watch(acts)
        logits = logits_fn(acts)
        score = tf.reduce_sum(tf.gather(logits, targets, axis=1, batch_dims=1))
    grads = tape.gradient(score, acts)
    return reference_gradcam(acts.numpy(), grads.numpy(), x.shape[1:3])


def head_small(model):
    dense = model.get_layer("logits")

    def fn(acts):
        return dense(tf.reduce_mean(acts, axis=[1, 2]))
    return fn


def head_mobilenet(model):
    dense = model.get_layer("predictions")
    kernel, bias = dense.kernel, dense.bias

    def fn(acts):
        return tf.matmul(tf.reduce_mean(acts, axis=[1, 2]), kernel) + bias
    return fn


CASES = {
    "small_cnn": (small_cnn, "conv_b", head_small, None),
    "mobilenet_v2": (mobilenet_v2, "out_relu", head_mobilenet, "inception"),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def keras_case(request, tmp_path_factory):
    build, act_layer, head, preset = CASES[request.param]
    model = build()
    path = tmp_path_factory.mktemp(request.param) / "model.keras"
    model.save(path)
    out = path.with_suffix(".onnx")
    result = convert(path, out, ConvertOptions())
    return request.param, model, act_layer, head, preset, result


def test_keras_gradcam_matches_tape(keras_case):
    name, model, act_layer, head, _, result = keras_case
    h, w = model.inputs[0].shape[1:3]
    x = np.random.default_rng(1).uniform(-1, 1, (3, h, w, 3)).astype(np.float32)
    res = og.Explainer(str(result.output)).explain(x)
    assert res.score_kind == "logits"  # the explainer stepped back through the Softmax
    want = tape_gradcam(model, act_layer, head(model), x, res.targets)
    np.testing.assert_array_equal(res.targets, np.argmax(model.predict(x, verbose=0), axis=1))
    assert_cams_close(res.cams, want)
    assert result.verification is not None
    assert result.verification.scores_diff <= result.verification.scores_tol


def test_keras_metadata(keras_case):
    name, model, act_layer, _, preset, result = keras_case
    meta = read_metadata(og.load_model(str(result.output)).proto)
    assert meta.activation == result.activation and meta.activation.endswith(":0")
    assert "raw_output" in meta.activation or "Relu" in meta.activation  # internal NCHW tensor
    assert meta.preprocessing.layout == "NHWC"
    assert meta.preprocessing.size == tuple(model.inputs[0].shape[1:3])
    assert meta.has_preprocessing == (preset is not None)
    if preset == "inception":  # keras.applications.mobilenet_v2.preprocess_input: mode "tf"
        px = np.array([0.0, 127.5, 255.0])
        pre = meta.preprocessing
        got = (px * pre.scale - pre.mean[0]) / pre.std[0]
        want = keras.applications.mobilenet_v2.preprocess_input(px.copy())
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_keras_layer_option(tmp_path):
    model = small_cnn()
    path = tmp_path / "m.h5"
    model.save(path)
    result = convert(path, tmp_path / "m.onnx", ConvertOptions(layer="conv_a"))
    assert "conv_a" in result.tf_activation
    x = np.random.default_rng(2).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    res = og.Explainer(str(result.output)).explain(x)
    assert res.activations[0].shape == (2, 8, 30, 30)  # NCHW, conv_a's channels
    assert_cams_close(res.cams, tape_gradcam(model, "conv_a", _conv_a_head(model), x,
                                             res.targets))


def test_grouped_conv_and_exact_gelu(tmp_path):
    """ConvNeXt's two obstacles in a small net: Keras 3 runs grouped convs on CPU as a
    ``_noinline`` XLA function (a StatefulPartitionedCall tf2onnx does not convert) and
    tf.nn.gelu's exact form uses Erfc (no tf2onnx handler). Both convert to standard ONNX and
    Grad-CAM through them matches the tape."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv_a")(inp)
    x = keras.layers.Conv2D(8, 3, groups=8, activation="gelu", name="conv_b")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(5, name="logits")(x))
    path = tmp_path / "m.keras"
    model.save(path)
    result = convert(path, tmp_path / "m.onnx", ConvertOptions(layer="conv_a"))
    nodes = og.load_model(str(result.output)).proto.graph.node
    ops = {(n.op_type, n.domain) for n in nodes}
    assert all(onnx.defs.has(op, domain) for op, domain in ops), ops
    assert [n.op_type for n in nodes].count("Conv") == 2 and ("Erf", "") in ops, ops
    x = np.random.default_rng(3).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    res = og.Explainer(str(result.output)).explain(x)
    assert_cams_close(res.cams, tape_gradcam(model, "conv_a", _conv_a_head(model), x,
                                             res.targets))


def _conv_a_head(model):
    conv_b, dense = model.get_layer("conv_b"), model.get_layer("logits")

    def fn(acts):
        return dense(tf.reduce_mean(conv_b(acts), axis=[1, 2]))
    return fn


def test_savedmodel_export_gradcam(tmp_path):
    model = small_cnn()
    folder = tmp_path / "saved"
    model.export(str(folder))
    result = convert(folder, tmp_path / "sm.onnx", ConvertOptions(preprocess="inception"))
    assert result.format == "savedmodel"
    x = np.random.default_rng(3).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    res = og.Explainer(str(result.output)).explain(x, targets=[1, 3])
    assert_cams_close(res.cams, tape_gradcam(model, "conv_b", head_small(model), x, res.targets))


def test_metadata_round_trip_equals_manual_flags(tmp_path):
    """`run` with metadata only gives the cams of passing the right preprocessing by hand."""
    from skimage import data

    model = mobilenet_v2()
    path = tmp_path / "mnv2.keras"
    model.save(path)
    result = convert(path, tmp_path / "mnv2.onnx", ConvertOptions(verify=False))
    images = [data.chelsea(), data.coffee()]
    auto = og.Explainer(str(result.output)).explain_images(images)
    manual = og.Preprocessing(size=(96, 96), layout="NHWC", color="RGB", scale=1 / 127.5,
                              mean=(1.0, 1.0, 1.0), std=(1.0, 1.0, 1.0))
    by_hand = og.Explainer(str(result.output)).explain_images(images, preprocessing=manual)
    np.testing.assert_array_equal(auto.targets, by_hand.targets)
    np.testing.assert_allclose(auto.cams, by_hand.cams, atol=1e-6)
    ex = og.Explainer(str(result.output))
    batch, _ = ex.prepare(images)  # what the metadata made of the pixels
    pixels, _ = ex.prepare(images, og.Preprocessing(size=(96, 96), layout="NHWC", scale=1.0))
    np.testing.assert_allclose(batch, pixels / 127.5 - 1.0, atol=1e-5)


def test_nchw_input(tmp_path):
    model = small_cnn()
    path = tmp_path / "m.keras"
    model.save(path)
    result = convert(path, tmp_path / "nchw.onnx", ConvertOptions(nchw=True))
    meta = read_metadata(og.load_model(str(result.output)).proto)
    assert meta.preprocessing.layout == "NCHW"
    x = np.random.default_rng(4).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    res = og.Explainer(str(result.output)).explain(x.transpose(0, 3, 1, 2))
    assert_cams_close(res.cams, tape_gradcam(model, "conv_b", head_small(model), x, res.targets))
