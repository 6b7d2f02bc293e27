"""`export` of models as they are deployed: int8 copies (QDQ, QOperator, dynamic) and fp16
copies of a wild-corpus export give one ONNX file that runs in plain ONNX Runtime and whose maps
equal the Explainer's on the same copy."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnx_gradcam as og
from tests.test_export import run
from tests.test_fp16 import ARITHMETIC
from tests.test_quantized import EXPECTED, FILES, MANIFEST, WILD, _int8_names, _quantize

float16 = pytest.importorskip("onnxconverter_common.float16")

MODEL = "mobilenet_v3"
#: the exported graph is the explainer graph plus the post-processing nodes: the same kernels
#: on the same inputs, so the maps agree to the explainer's own rounding of the last steps
#: (test_export's bounds); an fp16 model's exported coarse map is min-maxed in fp16, which
#: rounds each of its steps (test_fp16's bound)
COARSE_TOL, CAM_TOL = 1e-5, 1e-4


def _copy(kind: str, folder) -> onnx.ModelProto | str:
    source = WILD / FILES[MODEL]
    if kind.startswith("fp16"):
        return float16.convert_float_to_float16(onnx.load(source),
                                                keep_io_types=kind == "fp16_float32_io")
    path = folder / f"{kind}.onnx"
    _quantize(source, path, kind, per_channel=True)
    return str(path)


@pytest.mark.parametrize("depth", ["last", "mid"])
@pytest.mark.parametrize("kind", ["QDQ", "QOperator", "dynamic", "fp16_float32_io",
                                  "fp16_end_to_end"])
def test_exported_deployed_model_equals_explainer(tmp_path, kind: str, depth: str) -> None:
    model = _copy(kind, tmp_path)
    layer = None
    if depth == "mid":
        float_layer = MANIFEST[MODEL]["files"][FILES[MODEL]]["layers"]["mid"]["onnx_tensor"]
        proto = model if isinstance(model, onnx.ModelProto) else onnx.load(model)
        produced = {o for n in proto.graph.node for o in n.output}
        layer = next(n for n in _int8_names(MODEL, float_layer, kind)
                     if n.removesuffix("/dequantized") in produced).removesuffix("/dequantized")
    ex = og.Explainer(model, layer=layer, providers="cpu")
    exported = ex.export()
    onnx.checker.check_model(exported, full_check=False)  # contrib ops: no full schema check
    x = EXPECTED[f"{MODEL}__input"]
    if kind == "fp16_end_to_end":
        x = x.astype(np.float16)
    targets = EXPECTED[f"{MODEL}__targets"][1]
    for given in (None, targets):
        feeds = {ex.model.input_name: x} | ({} if given is None else {"target": given})
        got, want = run(exported, feeds), ex.explain(x, given)
        np.testing.assert_array_equal(got["cam_target"], want.targets)
        coarse = og.cams.min_max(np.maximum(want.coarse.astype(np.float32), 0))
        assert float(coarse.std()) > 0.01, "degenerate maps would prove nothing"
        half = got["cam_coarse"].dtype == np.float16
        assert np.abs(got["cam_coarse"] - coarse).max() <= (ARITHMETIC if half else COARSE_TOL)
        assert np.abs(got["cam"] - want.cams).max() <= (ARITHMETIC if half else CAM_TOL)
