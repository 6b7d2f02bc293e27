"""TF-Slim checkpoints: ONNX Grad-CAM equals Grad-CAM from ``tf.gradients`` in graph mode."""

from __future__ import annotations

import numpy as np
import pytest

from tests.converters.conftest import assert_cams_close, reference_gradcam

tf = pytest.importorskip("tensorflow")
pytest.importorskip("tf_slim")

from onnx_gradcam.converters import ConvertOptions, convert, slim  # noqa: E402

import onnx_gradcam as og  # noqa: E402
from onnx_gradcam.metadata import read_metadata  # noqa: E402

#: net, classes, expected target layer (TF name), expected preprocessing mean[0]
NETS = {
    "resnet_v1_50": (1000, "resnet_v1_50/block4/unit_3/bottleneck_v1/Relu:0", 123.68),
    "inception_v3": (1001, "InceptionV3/InceptionV3/Mixed_7c/concat:0", 1.0),
}


def make_checkpoint(net_name: str, classes: int, prefix: str, seed: int = 0) -> str:
    """A random-init checkpoint of ``net_name`` (moving statistics stay 0 and 1)."""
    net = slim.get_net(net_name)
    graph, _ = slim.build(net, classes, slim.default_size(net))
    with graph.as_default():
        tf.compat.v1.set_random_seed(seed)
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            return tf.compat.v1.train.Saver().save(sess, prefix, write_meta_graph=False)


def graph_gradcam(net_name: str, classes: int, prefix: str, act_name: str, x: np.ndarray,
                  targets: np.ndarray) -> np.ndarray:
    """Grad-CAM from tf.gradients of the logits w.r.t. the activation, in the rebuilt graph."""
    net = slim.get_net(net_name)
    graph, t = slim.build(net, classes, slim.default_size(net))
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as sess:
        tf.compat.v1.train.Saver().restore(sess, prefix)
        act = graph.get_tensor_by_name(act_name)
        target = tf.compat.v1.placeholder(tf.int32, [None])
        score = tf.reduce_sum(tf.gather(t["logits"], target, axis=1, batch_dims=1))
        (grad,) = tf.compat.v1.gradients(score, [act])
        acts, grads = sess.run([act, grad], {t["input"]: x, target: targets})
    return reference_gradcam(acts, grads, x.shape[1:3])


@pytest.fixture(scope="module", params=sorted(NETS))
def slim_case(request, tmp_path_factory):
    name = request.param
    classes = NETS[name][0]
    folder = tmp_path_factory.mktemp(name)
    prefix = make_checkpoint(name, classes, str(folder / "model.ckpt"))
    labels = folder / "labels.txt"
    labels.write_text("".join(f"{i}:class {i}\n" for i in range(classes)))
    result = convert(None, folder / f"{name}.onnx", ConvertOptions(
        slim_net=name, checkpoint=folder / "model.ckpt", num_classes=classes, labels=labels))
    return name, classes, prefix, result


def test_slim_gradcam_matches_tf_gradients(slim_case):
    name, classes, prefix, result = slim_case
    assert result.tf_activation == NETS[name][1]
    size = slim.default_size(slim.get_net(name))
    x = np.random.default_rng(0).uniform(-1, 1, (1, *size, 3)).astype(np.float32)
    res = og.Explainer(str(result.output)).explain(x)  # argmax: evidence for the top class
    want = graph_gradcam(name, classes, prefix, result.tf_activation, x, res.targets)
    assert_cams_close(res.cams, want)


def test_slim_metadata(slim_case):
    name, classes, _, result = slim_case
    meta = read_metadata(og.load_model(str(result.output)).proto)
    assert meta.activation == result.activation
    assert meta.score_output == "logits:0"
    assert meta.preprocessing.mean[0] == pytest.approx(NETS[name][2])
    assert meta.preprocessing.size == slim.default_size(slim.get_net(name))
    assert meta.labels is not None and len(meta.labels) == classes
    assert meta.label_offset == 0 and meta.labels[3] == "class 3"


def test_slim_end_point_as_layer(tmp_path):
    prefix = make_checkpoint("resnet_v1_50", 1000, str(tmp_path / "r50.ckpt"))
    result = convert(None, tmp_path / "r.onnx", ConvertOptions(
        slim_net="resnet_v1_50", checkpoint=tmp_path / "r50.ckpt", num_classes=1000,
        layer="block3", verify=False))
    assert result.tf_activation.startswith("resnet_v1_50/block3/")
    assert prefix
