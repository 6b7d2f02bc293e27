"""aug_smooth and eigen_smooth, against their definitions written out here."""

from __future__ import annotations

import numpy as np
import pytest

import onnx_gradcam as og
from tests.test_torch_parity import MODELS, X, tensor


def test_eigen_smooth_is_the_principal_component_of_weighted_activations() -> None:
    ex = og.Explainer(MODELS["gap"], layer=tensor("gap", "mid"), eigen_smooth=True)
    res = ex.explain(X)
    acts, grads = res.activations[0], res.gradients[0]
    weighted = grads.mean(axis=(2, 3))[:, :, None, None] * acts  # Grad-CAM's w_k·A_k
    for n in range(len(X)):
        k = weighted.shape[1]
        flat = weighted[n].reshape(k, -1).T
        flat = flat - flat.mean(axis=0)
        first = np.linalg.svd(flat, full_matrices=True)[2][0]
        expected = (flat @ first).reshape(weighted.shape[2:])
        np.testing.assert_allclose(res.coarse[n], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("targets", [None, [1, 2, 3]])
def test_aug_smooth_is_the_mean_over_flips_and_intensity_scales(targets) -> None:
    layer = tensor("gap", "last")
    smooth = og.Explainer(MODELS["gap"], layer=layer, aug_smooth=True).explain(X, targets)
    plain = og.Explainer(MODELS["gap"], layer=layer)
    maps = []
    for flip in (False, True):
        for factor in (0.9, 1.0, 1.1):
            x = X * np.float32(factor)
            x = x[:, :, :, ::-1] if flip else x
            cams = plain.explain(np.ascontiguousarray(x), targets).cams
            maps.append(cams[:, :, ::-1] if flip else cams)
    np.testing.assert_allclose(smooth.cams, np.mean(maps, axis=0), atol=1e-6)
    assert not np.allclose(smooth.cams, plain.explain(X, targets).cams, atol=1e-3)


def test_explain_many_orders_gradients_image_major_on_every_path() -> None:
    """explain_many's gradients are (N·k, …) with row i·k + r for image i, rank r — on the
    one-pass path and when stacked from one explain() per rank (aug_smooth's path)."""
    ex = og.Explainer(MODELS["gap"], layer=tensor("gap", "last"))
    one_pass = ex.explain_many(X, top_k=2)
    per_rank = ex._stack([ex.explain(X, -(r + 1)) for r in range(2)], 0.0)
    np.testing.assert_array_equal(one_pass.targets, per_rank.targets)
    np.testing.assert_allclose(per_rank.gradients[0], one_pass.gradients[0], atol=1e-6)
    for i in range(len(X)):
        for r in range(2):
            want = ex.explain(X[i:i + 1], [int(one_pass.targets[i, r])]).gradients[0][0]
            np.testing.assert_allclose(one_pass.gradients[0][i * 2 + r], want, atol=1e-6)
