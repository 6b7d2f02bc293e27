"""ONNX from the wild, TensorFlow side: graphs tf2onnx makes when a user converts a model
themselves (no onnx_gradcam metadata). The detected layer must be the last conv activation with
the layout the graph shows, and its Grad-CAM must equal TensorFlow's own (GradientTape)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tests.converters.conftest import assert_cams_close, reference_gradcam

tf = pytest.importorskip("tensorflow")
tf2onnx = pytest.importorskip("tf2onnx")
keras = pytest.importorskip("keras")

import onnx_gradcam as og  # noqa: E402
from onnx_gradcam.model import load_model  # noqa: E402

SIZE, CLASSES = 32, 5


class LearningPhaseNet:
    """A Keras-2-era graph: NHWC convs, each BatchNorm behind ``tf.cond`` on a
    ``keras_learning_phase`` PlaceholderWithDefault(False), head ReduceMean(axes=[1, 2]) →
    MatMul → Add → Softmax. The same weights run eagerly for the GradientTape reference."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.convs = [rng.normal(0, 0.3, (3, 3, 3, 8)), rng.normal(0, 0.2, (3, 3, 8, 16))]
        self.bns = [[rng.uniform(0.5, 1.5, c), rng.uniform(0.1, 0.5, c), rng.normal(0, 0.1, c),
                     rng.uniform(0.5, 1.5, c)] for c in (8, 16)]
        self.fc, self.bias = rng.normal(0, 0.3, (16, CLASSES)), rng.normal(0, 0.1, CLASSES)

    def features(self, x, phase):
        h = x
        for index, (kernel, bn) in enumerate(zip(self.convs, self.bns)):
            h = tf.nn.conv2d(h, kernel.astype("f4"), 2 - index, "SAME", name=f"conv{index}")
            gamma, beta, mean, var = (tf.constant(v.astype("f4")) for v in bn)

            def train(h=h, gamma=gamma, beta=beta):
                return tf.compat.v1.nn.fused_batch_norm(h, gamma, beta, epsilon=1e-3)[0]

            def infer(h=h, gamma=gamma, beta=beta, mean=mean, var=var):
                return tf.compat.v1.nn.fused_batch_norm(h, gamma, beta, mean, var, 1e-3,
                                                        is_training=False)[0]

            h = tf.nn.relu(tf.cond(phase, train, infer, name=f"bn{index}"), name=f"relu{index}")
        return h

    def head(self, acts):
        pooled = tf.reduce_mean(acts, axis=[1, 2], name="pool")
        return tf.add(tf.matmul(pooled, self.fc.astype("f4")), self.bias.astype("f4"),
                      name="logits")

    def onnx(self) -> onnx.ModelProto:
        graph = tf.Graph()
        with graph.as_default():
            x = tf.compat.v1.placeholder(tf.float32, (None, SIZE, SIZE, 3), name="input_1")
            # named as Keras named it in a second graph of a session: tf2onnx's heuristic drops
            # a placeholder called exactly keras_learning_phase (and with it the If nodes)
            phase = tf.compat.v1.placeholder_with_default(False, (), "keras_learning_phase_1")
            tf.nn.softmax(self.head(self.features(x, phase)), name="probs")
        proto, _ = tf2onnx.convert.from_graph_def(
            graph.as_graph_def(), input_names=["input_1:0"], output_names=["probs:0"], opset=13)
        return proto

    def tape_gradcam(self, x: np.ndarray, targets: np.ndarray) -> np.ndarray:
        with tf.GradientTape() as tape:
            acts = self.features(tf.constant(x), tf.constant(False))
            tape.watch(acts)
            score = tf.reduce_sum(tf.gather(self.head(acts), targets, axis=1, batch_dims=1))
        return reference_gradcam(acts.numpy(), tape.gradient(score, acts).numpy(), x.shape[1:3])


def test_learning_phase_if_graph(tmp_path) -> None:
    """The layer after the last learning-phase If is NHWC (its ReduceMean head and the
    Transposes inside the If's branches say so); its Grad-CAM equals the tape's."""
    net = LearningPhaseNet()
    proto = net.onnx()
    path = tmp_path / "learning_phase.onnx"
    onnx.save(proto, path)
    loaded = load_model(path)
    ex = og.Explainer(path)
    layer = ex.layers[0]
    assert (layer.name, layer.layout, layer.shape) == ("relu1:0", "NHWC", (None, 16, 16, 16))
    info = loaded.info
    on_path = [info.nodes[i].op_type for i in info.ancestors(layer.name)]
    assert on_path.count("If") == 2, "tf2onnx folded the learning-phase conds away"
    assert [n.op_type for n in proto.graph.node][-4:] == ["ReduceMean", "MatMul", "Add",
                                                          "Softmax"]
    evidence = " ".join(layer.verdict.lines())
    assert "ReduceMean axes [1, 2]" in evidence and "BatchNormalization" in evidence
    x = np.random.default_rng(1).uniform(-1, 1, (3, SIZE, SIZE, 3)).astype(np.float32)
    res = ex.explain(x)
    assert_cams_close(res.cams, net.tape_gradcam(x, res.targets))


def keras3_conv() -> tuple[object, str]:
    """Conv-BN-ReLU, depthwise ReLU6, 1×1 conv: tf2onnx leaves it NCHW after its input."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, name="conv_a")(inp)
    x = keras.layers.BatchNormalization(name="bn_a")(x)
    x = keras.layers.ReLU(name="relu_a")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw_b")(x)
    x = keras.layers.ReLU(max_value=6.0, name="relu_b")(x)
    x = keras.layers.Conv2D(16, 1, activation="relu", name="conv_c")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(CLASSES, name="logits")(x)
    return keras.Model(inp, keras.layers.Softmax()(x)), "conv_c"


def keras3_pointwise() -> tuple[object, str]:
    """A ConvNeXt-style block: Dense on the 4-D tensor (a MatMul over channels-last data) and a
    LayerNormalization: the last activation stays NHWC in the ONNX graph."""
    keras.utils.set_random_seed(1)
    inp = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(8, 4, strides=4, name="stem")(inp)
    x = keras.layers.LayerNormalization(epsilon=1e-6, name="norm")(x)
    x = keras.layers.Dense(16, name="expand")(x)
    x = keras.layers.Activation("relu", name="act")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(CLASSES, name="logits")(x)
    return keras.Model(inp, keras.layers.Softmax()(x)), "act"


@pytest.mark.parametrize(("build", "layout"), [(keras3_conv, "NCHW"), (keras3_pointwise, "NHWC")],
                         ids=["conv", "pointwise"])
def test_keras3_raw_tf2onnx(tmp_path, build, layout) -> None:
    """A Keras 3 model converted by tf2onnx as a user would (tf.function → from_function, no
    metadata): the detected layer is the last activation, the map equals the tape's."""
    model, act_layer = build()
    spec = (tf.TensorSpec((None, SIZE, SIZE, 3), tf.float32, name="input"),)
    proto, _ = tf2onnx.convert.from_function(tf.function(lambda x: model(x, training=False)),
                                             input_signature=spec, opset=17)
    assert not [p for p in proto.metadata_props if p.key.startswith("onnx_gradcam")]
    path = tmp_path / "keras3.onnx"
    onnx.save(proto, path)
    ex = og.Explainer(path)
    x = np.random.default_rng(2).uniform(-1, 1, (3, SIZE, SIZE, 3)).astype(np.float32)
    assert ex.layers[0].layout == layout
    res = ex.explain(x)
    inner = keras.Model(model.inputs, [model.get_layer(act_layer).output, model.output])
    with tf.GradientTape() as tape:
        acts, _ = inner(x, training=False)
        tape.watch(acts)
        logits = model.get_layer("logits")(tf.reduce_mean(acts, axis=[1, 2]))
        score = tf.reduce_sum(tf.gather(logits, res.targets, axis=1, batch_dims=1))
    grads = tape.gradient(score, acts)
    # the layer a person would pick (activations are reported NCHW)
    np.testing.assert_allclose(res.activations[0], acts.numpy().transpose(0, 3, 1, 2),
                               rtol=1e-4, atol=1e-5)
    assert_cams_close(res.cams, reference_gradcam(acts.numpy(), grads.numpy(), (SIZE, SIZE)))
