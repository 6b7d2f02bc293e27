"""Half-precision models as deployed: fp16 copies of the wild corpus's float32 exports, made here
by onnxconverter-common (float32 inputs/outputs, and fp16 end to end).

An fp16 copy is a different function from its float32 source (its weights are rounded), so its
map is compared with the float32 model's by the triangle inequality: |cam16 − cam32| ≤
|cam16 − camW| + |camW − cam32|, where camW is the map of the fp16 copy's own weights in float32
arithmetic. The second term is the conversion's (measured here, reported); the first is ours
(computing in fp16) and is held to :data:`ARITHMETIC`. The fp16 gradient is checked against its
own float64 truth (the fp16 copy's weights, evaluated in float64 by onnx.reference), at the
auto-detected and an early layer: the backward of an fp16 head runs in float32 from the fp16
forward's values (autodiff/builder.py), as in fp16 the products of MobileNetV3's SE blocks
cancel digits away.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnx_gradcam as og
from tests.zoo.float64 import gradients64

float16 = pytest.importorskip("onnxconverter_common.float16")

WILD = Path(__file__).parent / "fixtures" / "wild"
EXPECTED = np.load(WILD / "torch_expected.npz")
MANIFEST = json.loads((WILD / "torch_manifest.json").read_text())["models"]
FILES = {"resnet": "resnet_legacy_opset9.onnx", "mobilenet_v3": "mobilenet_v3_legacy_opset13.onnx",
         "efficientnet": "efficientnet_legacy_opset17.onnx"}
#: fp16's unit roundoff. A map value (in [0, 1] after min-max) goes through about four fp16
#: roundings relative to its maximum — the activation, the gradient (or its channel mean), the
#: weighted sum, the normalisation — so ours may move it by up to 4u; so may a gradient, relative
#: to its largest entry (the seed's class row, the head's products and its sums).
U = 2.0 ** -11
ARITHMETIC = 4 * U


def _weights_in_float32(fp16: onnx.ModelProto, source: onnx.ModelProto) -> onnx.ModelProto:
    """``source`` with the fp16 copy's (rounded) weights: its function in float32 arithmetic."""
    rounded = {t.name: numpy_helper.to_array(t) for t in fp16.graph.initializer}
    out = onnx.ModelProto()
    out.CopyFrom(source)
    for tensor in out.graph.initializer:
        if tensor.data_type == onnx.TensorProto.FLOAT and tensor.name in rounded:
            tensor.CopyFrom(numpy_helper.from_array(
                rounded[tensor.name].astype(np.float32), tensor.name))
    return out


def _cases():
    for model in FILES:
        for depth in ("last", "mid"):
            yield pytest.param(model, depth, id=f"{model}-{depth}")


@pytest.mark.parametrize("keep_io_types", [True, False], ids=["float32_io", "fp16_end_to_end"])
@pytest.mark.parametrize(("model", "depth"), list(_cases()))
def test_fp16_maps_and_gradients(model: str, keep_io_types: bool, depth: str) -> None:
    """At the auto-detected layer (the float32 model's) and at an early one."""
    source = onnx.load(WILD / FILES[model])
    fp16 = float16.convert_float_to_float16(source, keep_io_types=keep_io_types)
    layer = None if depth == "last" else MANIFEST[model]["files"][FILES[model]]["layers"][
        depth]["onnx_tensor"]
    float32 = og.Explainer(source, layer=layer, providers="cpu")
    own = og.Explainer(_weights_in_float32(fp16, source), layer=layer, providers="cpu")
    half = og.Explainer(fp16, layer=layer, providers="cpu")
    assert half.layer_names == float32.layer_names
    x = EXPECTED[f"{model}__input"]
    if not keep_io_types:  # what the fp16 model receives, also given to the references
        x = x.astype(np.float16).astype(np.float32)
    for target in EXPECTED[f"{model}__targets"][:2]:
        res16 = half.explain(x if keep_io_types else x.astype(np.float16), target)
        cam32, cam_w = float32.explain(x, target).cams, own.explain(x, target).cams
        ours, conversion = np.abs(res16.cams - cam_w).max(), np.abs(cam_w - cam32).max()
        _, (truth,) = gradients64(fp16, half.layer_names, x, target)
        errors = np.abs(res16.gradients[0] - truth) / np.abs(truth).max()
        print(f"{model} {depth} {'float32 I/O' if keep_io_types else 'fp16 I/O'} targets {target}: "
              f"|cam16 − cam32| {np.abs(res16.cams - cam32).max():.2e} (fp16 arithmetic "
              f"{ours:.2e}, weight rounding {conversion:.2e}); gradient vs own float64 "
              f"{errors.max():.2e} relative")
        assert res16.gradients[0].dtype == np.float16
        assert ours <= ARITHMETIC
        assert np.abs(res16.cams - cam32).max() <= ARITHMETIC + conversion
        assert errors.max() <= ARITHMETIC
