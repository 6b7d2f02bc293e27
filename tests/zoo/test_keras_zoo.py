"""Oracle 3: our gradients on ten tf2onnx-converted Keras applications vs TF's GradientTape.

For each architecture, at an early, a middle and the last conv activation (``zoo.ARCHS``):

* ``test_gradient_float64``: our gradient graph, built from the real converted graph in float64
  and evaluated by ``onnx.reference``, against TF's float64 GradientTape: ≤ 1e-4 of the largest
  entry, no escape clause. The double graph is tf2onnx's conversion of the float64 Keras model
  for the architectures in ``zoo.NATIVE64`` and the float32 conversion cast to double for the
  others: tf2onnx folds BatchNormalization in the model's dtype, so the cast graph's weights are
  ~1e-7 off TF's and can flip a near-zero ReLU in a deep ReLU head. DenseNet121 did: 3 ReLU
  inputs of |x| ≤ 1.4e-6 change sign, the gradient at conv1_relu / conv4_block1_concat is 5.8e-3
  / 6.9e-3 off; on the native double graph it is 1.6e-15 / 1.0e-15 off. A wrong rule is O(1).
* ``test_gradient_float32``: the production path (``Explainer.explain`` on ONNX Runtime, float32)
  against TF. Where TF float32 itself agrees with TF float64 (≤ 1e-5: TF flips no ReLU/MaxPool
  decision in the head) we require ≤ 1e-4 of TF float32 — unless ONNX Runtime's float32 forward
  flips one: ORT_ENABLE_ALL's NCHWc blocked conv kernels sum in another order, and at Xception's
  block1_conv2_act that turns one ReLU input of 7.2e-7 (max 3.7) positive, 2.9e-3 off TF. Then
  the test asks for that evidence: ≥ 1 rounding-sized flip (|x| ≤ 1e-5 of its tensor's max) in
  the head at ORT_ENABLE_ALL, the very same explainer graph at ORT_ENABLE_EXTENDED (no NCHWc)
  within 1e-4 of TF float32, and the production result within 5e-2 (a plumbing error — layout,
  target, transpose — is O(1)). Where TF float32 is not flip-free (deep ReLU heads: up to ~10 %
  off its own float64 result), our float32 result must be as close to the float64 truth as TF
  float32 is (within 3×, floor 1e-4): no tolerance can make two float32 implementations flip the
  same ReLUs.
* scores (pre-softmax logits, also for models that end in Softmax), activations, layouts.

Inputs are N=2 batches through a symbolic batch dimension; ``test_symbolic_hw`` runs one model
converted with symbolic H and W at two sizes.
"""

from __future__ import annotations

import numpy as np
import pytest

import onnx_gradcam as og
from tests.zoo import float64, zoo

POSITIONS = ["early", "middle", "last"]
STRICT = 1e-4  # the brief's tolerance: max|ours − tf| ≤ STRICT · max|tf|
FLIP_FREE = 1e-5  # TF float32 this close to TF float64: no decision flips in the head


def rel(got: np.ndarray, want: np.ndarray) -> float:
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.abs(got.astype(np.float64) - want).max() / np.abs(want).max())


@pytest.fixture(scope="module", params=list(zoo.ARCHS))
def case(request, tf_available) -> zoo.Case:
    return zoo.load_case(zoo.ARCHS[request.param])


@pytest.fixture(scope="module")
def model(case):
    return case.model


def _tap(case: zoo.Case, position: str) -> str:
    key = case.taps[POSITIONS.index(position)]
    assert key in case.onnx_names, (
        f"{case.arch.name}: no ONNX tensor inside the converted graph holds Keras tensor {key!r} "
        f"(matched: {case.onnx_names})")
    return key


@pytest.fixture(scope="module")
def explanations(case, model):
    """One Explainer per tap (so one failing layer does not hide the others)."""
    out = {}
    for key in case.taps:
        if key not in case.onnx_names:
            continue
        try:
            explainer = og.Explainer(model, layer=case.onnx_names[key], providers="cpu")
            out[key] = (explainer, explainer.explain(case.x, case.targets))
        except Exception as exc:  # noqa: BLE001 - reported by the test of that tap
            out[key] = exc
    return out


@pytest.fixture(scope="module")
def gradients64(case, model):
    keys = [k for k in case.taps if k in case.onnx_names]
    native = case.model64
    model, names = native if native is not None else (model, case.onnx_names)
    try:
        scores, grads = float64.gradients64(model, [names[k] for k in keys], case.x, case.targets)
    except Exception as exc:  # noqa: BLE001
        return exc
    return scores, dict(zip(keys, grads))


def _explained(explanations, key):
    got = explanations[key]
    if isinstance(got, Exception):
        raise got
    return got


def _check_layout(explainer, case: zoo.Case, key: str) -> None:
    # MobileNetV3: tf2onnx's transpose optimizer crashes (a scalar Add) and leaves the graph
    # NHWC; model.activation_layout walks through the element-wise ops after its Transpose
    got, want = explainer.layers[0].layout, case.onnx_layouts[key]
    assert got == want, "layer layout misdetected"


@pytest.mark.parametrize("position", POSITIONS)
def test_gradient_float64(case, gradients64, position) -> None:
    key = _tap(case, position)
    if isinstance(gradients64, Exception):
        raise gradients64
    ours = gradients64[1][key]
    if case.onnx_layouts[key] == "NHWC":
        ours = ours.transpose(0, 3, 1, 2)
    tf64 = case.nchw(case.grads64[key])
    err = rel(ours, tf64)
    kind = "native float64" if case.model64 is not None else "float32 cast to double"
    print(f"ZOO64 {case.arch.name} {position} {key}: {err:.2e} ({kind})")
    assert err <= STRICT, f"{case.arch.name} {key}: {kind} graph's gradient off by {err:.2e}"


@pytest.mark.parametrize("position", POSITIONS)
def test_gradient_float32(case, explanations, position) -> None:
    key = _tap(case, position)
    explainer, res = _explained(explanations, key)
    _check_layout(explainer, case, key)
    ours = res.gradients[0]
    tf32, tf64 = case.nchw(case.grads[key]), case.nchw(case.grads64[key])
    noise = rel(tf32, tf64)  # how far float32 arithmetic alone takes TF from the truth
    print(f"ZOO32 {case.arch.name} {position} {key}: vs TF32 {rel(ours, tf32):.2e}, vs TF64 "
          f"{rel(ours, tf64):.2e}, TF32 vs TF64 {noise:.2e}")
    if noise <= FLIP_FREE:
        err = rel(ours, tf32)
        if err > STRICT:  # TF flipped nothing; did ONNX Runtime? (see the module docstring)
            layer = case.onnx_names[key]
            model = case.model
            flips = float64.head_relu_flips(model, layer, case.x)
            assert flips, f"{case.arch.name} {key}: off TF float32 by {err:.2e}, no ReLU flipped"
            assert max(f[2] for f in flips) <= 1e-5, (case.arch.name, key, flips)
            plain = float64.explainer_gradient32(model, layer, case.x, case.targets,
                                                 "ORT_ENABLE_EXTENDED")
            assert rel(plain, tf32) <= STRICT, (
                f"{case.arch.name} {key}: off TF float32 by {err:.2e} at ORT_ENABLE_ALL "
                f"({flips}), {rel(plain, tf32):.2e} at ORT_ENABLE_EXTENDED")
            assert err <= 5e-2, f"{case.arch.name} {key}: off TF float32 by {err:.2e}"
    else:
        err = rel(ours, tf64)
        assert err <= max(STRICT, 3 * noise), (
            f"{case.arch.name} {key}: float32 gradient {err:.2e} off the float64 truth, "
            f"TF float32 only {noise:.2e}")


@pytest.mark.parametrize("position", POSITIONS)
def test_activation(case, explanations, position) -> None:
    key = _tap(case, position)
    explainer, res = _explained(explanations, key)
    _check_layout(explainer, case, key)
    assert rel(res.activations[0], case.nchw(case.acts[key])) <= 1e-3


def test_scores_are_logits(case, model) -> None:
    """The default layer and score: TF's pre-softmax logits, argmax targets."""
    explainer = og.Explainer(model, providers="cpu")
    res = explainer.explain(case.x)
    assert rel(res.scores, case.logits) <= STRICT
    assert res.score_kind == ("logits" if case.arch.softmax else "output")
    top = np.sort(case.logits, axis=1)
    clear = (top[:, -1] - top[:, -2]) > 1e-3 * np.abs(case.logits).max()
    assert (res.targets == case.logits.argmax(axis=1))[clear].all()


def test_detected_layer_is_last_conv_activation(case, model) -> None:
    layer = og.Explainer(model, providers="cpu").layers[0]
    last = case.onnx_names.get(case.taps[-1])
    if case.arch.name == "VGG16":  # its last rank-4 tensor before Flatten is block5_pool
        assert "block5_pool" in layer.name
    else:
        assert layer.name == last


@pytest.fixture(scope="module")
def symbolic_cases(tf_available):
    arch = zoo.ARCHS["ResNet50"]
    return [zoo.load_case(arch, size, symbolic_hw=True) for size in (96, 128)]


def test_symbolic_hw(symbolic_cases) -> None:
    """One model converted with input (None, None, None, 3), explained at 96 and 128 px."""
    model = symbolic_cases[0].model
    shape = og.load_model(model).input_shape
    assert shape[1] is None and shape[2] is None, shape
    names = [symbolic_cases[0].onnx_names[k] for k in symbolic_cases[0].taps]
    explainers = [og.Explainer(model, layer=name, providers="cpu") for name in names]
    for case in symbolic_cases:
        assert [case.onnx_names[k] for k in case.taps] == names
        scores64, grads64 = float64.gradients64(model, names, case.x, case.targets)
        for key, explainer, g64 in zip(case.taps, explainers, grads64):
            res = explainer.explain(case.x, case.targets)
            assert rel(res.scores, case.logits) <= STRICT
            noise = rel(case.nchw(case.grads[key]), case.nchw(case.grads64[key]))
            assert rel(g64, case.nchw(case.grads64[key])) <= max(STRICT, noise), (case.size, key)
            err = rel(res.gradients[0], case.nchw(case.grads64[key]))
            assert err <= max(STRICT, 3 * noise), (case.size, key, err, noise)
            assert res.cams.shape == (2, case.size, case.size)
