"""Bad input: one clear line and a non-zero exit each."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from tests.converters.conftest import run_cli

tf = pytest.importorskip("tensorflow")

from onnx_gradcam.converters import ConvertOptions, convert  # noqa: E402

from onnx_gradcam.errors import OnnxGradCamError  # noqa: E402


def _error(src, tmp_path, **options) -> str:
    with pytest.raises(OnnxGradCamError) as info:
        convert(src, tmp_path / "out.onnx", ConvertOptions(**options))
    message = str(info.value)
    assert "\n" not in message
    assert not (tmp_path / "out.onnx").exists()
    return message


@pytest.fixture(scope="module")
def slim_ckpt(tmp_path_factory):
    """A tiny real TF-Slim checkpoint: vgg_a with 7 classes at 64x64 is too big; alexnet_v2
    at its native size is 200 MB, so checkpoint the smallest fully-convolutional net we can:
    resnet_v1_50 would do, but for errors only the variable shapes matter, so any net will."""
    from tests.converters.test_slim import make_checkpoint

    folder = tmp_path_factory.mktemp("ckpt")
    make_checkpoint("inception_v1", 11, str(folder / "model.ckpt"))
    return folder / "model.ckpt"


def test_unknown_format(tmp_path):
    src = tmp_path / "model.tflite"
    src.write_bytes(b"x")
    assert "cannot tell the format" in _error(src, tmp_path)
    assert "unknown --format" in _error(src, tmp_path, format="onnx")


def test_unsupported_opset(tmp_path):
    assert "--opset 21 is not supported" in _error(tmp_path / "m.keras", tmp_path, opset=21)


def test_unknown_slim_net(tmp_path):
    message = _error(None, tmp_path, slim_net="mobilenet_v9", checkpoint=tmp_path / "x",
                     num_classes=3)
    assert "unknown --slim-net 'mobilenet_v9'" in message and "resnet_v1_50" in message


def test_missing_checkpoint_shard(slim_ckpt, tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "model.ckpt.index").write_bytes(slim_ckpt.with_name("model.ckpt.index").read_bytes())
    (folder / "model.ckpt.data-00001-of-00002").write_bytes(b"")
    message = _error(None, tmp_path, slim_net="inception_v1", checkpoint=folder / "model.ckpt",
                     num_classes=11)
    assert "missing shard(s) model.ckpt.data-00000-of-00002" in message
    assert "no nothing.index" in _error(None, tmp_path, slim_net="inception_v1",
                                           checkpoint=tmp_path / "nothing", num_classes=11)


def test_num_classes_mismatch(slim_ckpt, tmp_path):
    message = _error(None, tmp_path, slim_net="inception_v1", checkpoint=slim_ckpt,
                     num_classes=1001)
    assert "--num-classes 1001 does not match" in message and "pass --num-classes 11" in message


def test_wrong_net_for_checkpoint(slim_ckpt, tmp_path):
    message = _error(None, tmp_path, slim_net="vgg_16", checkpoint=slim_ckpt, num_classes=11)
    assert "is it a vgg_16 checkpoint?" in message


def test_incompatible_keras_file(tmp_path):
    src = tmp_path / "future.keras"
    with zipfile.ZipFile(src, "w") as z:
        z.writestr("metadata.json", '{"keras_version": "9.0.0"}')
        z.writestr("config.json", '{"module": "keras.future", "class_name": "HyperModel", '
                                  '"config": {}, "registered_name": "HyperModel"}')
    assert "incompatible Keras" in _error(src, tmp_path)


def test_graph_without_conv(tmp_path):
    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3], name="image")
        flat = tf.reshape(x, [-1, 192])
        tf.nn.softmax(tf.matmul(flat, tf.ones([192, 4])), name="probs")
    src = tmp_path / "dense.pb"
    src.write_bytes(g.as_graph_def().SerializeToString())
    assert "no conv layer found" in _error(src, tmp_path)


def test_cli_error_is_one_line_and_nonzero(tmp_path):
    proc = run_cli("convert", str(tmp_path / "m.keras"), "-o", str(tmp_path / "o.onnx"),
                   "--opset", "12")
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--opset 12 is not supported" in lines[0], proc.stderr


def test_tensorflow_not_installed(tmp_path):
    """Hide tensorflow from a fresh interpreter: convert says how to install it."""
    hide = (
        "import sys, importlib.abc\n"
        "class Hide(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('tensorflow', 'tf2onnx', 'tf_keras', 'tf_slim',"
        " 'keras'):\n"
        "            raise ImportError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Hide())\n"
        "sys.argv = ['onnx-gradcam', 'convert', sys.argv[1], '-o', sys.argv[2]]\n"
        "from onnx_gradcam.cli import main\n"
        "main()\n"
    )
    src = tmp_path / "m.h5"
    src.write_bytes(b"")
    proc = subprocess.run([sys.executable, "-c", hide, str(src), str(tmp_path / "o.onnx")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "pip install 'onnx-gradcam[tf]'" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_ops_tf2onnx_cannot_convert_are_named(tmp_path):
    """tf2onnx leaves ops it has no handler for (here Lgamma) in the graph; convert names them
    in one line instead of failing in the ONNX checker."""
    import numpy as np

    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 16, 16, 3], name="input")
        kernel = tf.constant(np.random.default_rng(0).standard_normal((3, 3, 3, 4)), tf.float32)
        act = tf.nn.relu(tf.nn.conv2d(x, kernel, 1, "SAME"), name="act")
        pooled = tf.reduce_mean(tf.math.lgamma(act + 1.0), [1, 2])
        tf.matmul(pooled, tf.ones((4, 3)), name="logits")
    src = tmp_path / "lgamma.pb"
    src.write_bytes(graph.as_graph_def().SerializeToString())
    message = _error(src, tmp_path, verify=False)
    assert "could not convert these TensorFlow ops: Lgamma ×1" in message
