"""Each CAM method against its formula written out with explicit loops (independent of the
vectorised implementation), on hand-made activations and gradients."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_gradcam.cams import METHODS, postprocess
from onnx_gradcam.cams.score import scorecam, upsample_align_corners

RNG = np.random.default_rng(42)
A = np.maximum(RNG.standard_normal((2, 4, 3, 5)), 0).astype(np.float32)
G = RNG.standard_normal((2, 4, 3, 5)).astype(np.float32)
G[0, 1, 1, 2] = 0.0  # exercise the α = 0 where G = 0 branch of Grad-CAM++


def loop_cam(acts, grads, per_pixel):
    n, k, h, w = acts.shape
    out = np.zeros((n, h, w))
    for b in range(n):
        for c in range(k):
            out[b] += per_pixel(acts[b, c], grads[b, c])
    return out


def expected(name, acts, grads):
    if name == "gradcam":
        return loop_cam(acts, grads, lambda a, g: g.mean() * a)
    if name == "hirescam":
        return loop_cam(acts, grads, lambda a, g: g * a)
    if name == "gradcam_elementwise":
        return loop_cam(acts, grads, lambda a, g: np.maximum(g * a, 0))
    if name == "layercam":
        return loop_cam(acts, grads, lambda a, g: np.maximum(g, 0) * a)
    if name == "xgradcam":
        return loop_cam(acts, grads, lambda a, g: (g * a / (a.sum() + 1e-7)).sum() * a)
    if name == "gradcam++":
        def per(a, g):
            weight = 0.0
            for i in range(g.shape[0]):
                for j in range(g.shape[1]):
                    gij = float(g[i, j])
                    if gij == 0:
                        continue
                    alpha = gij ** 2 / (2 * gij ** 2 + a.sum() * gij ** 3 + 1e-6)
                    weight += max(gij, 0.0) * alpha
            return weight * a
        return loop_cam(acts, grads, per)
    maps = acts if name == "eigencam" else acts * grads
    out = []
    for m in maps:
        x = m.reshape(m.shape[0], -1).T.astype(np.float64)
        x = x - x.mean(axis=0)
        _, _, vt = np.linalg.svd(x, full_matrices=True)
        out.append((x @ vt[0]).reshape(m.shape[1:]))
    return np.array(out)


GRADIENT_METHODS = [m for m in METHODS if m != "scorecam"]


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_method_matches_formula(name: str) -> None:
    got = METHODS[name].cam(A, G)
    np.testing.assert_allclose(got, expected(name, A, G), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list(METHODS))
def test_method_record_is_consistent(name: str) -> None:
    """A method either has a graph form or says why not; graph shortcuts (and a twin for
    nonnegative activations) only on methods with a graph form; the record's name is its key."""
    method = METHODS[name]
    assert method.name == name
    assert (method.graph is None) == bool(method.not_in_graph)
    shortcuts = [method.mean_weights, method.broadcast_safe, method.constant_weights,
                 method.constant_g, method.when_nonnegative]
    if method.graph is None:
        assert not any(shortcuts)
    twin = method.when_nonnegative
    assert twin is None or twin.graph is not None and twin.name in METHODS
    assert method.masked_scores == (method.weighted is None)


@pytest.mark.parametrize("name", [m for m in GRADIENT_METHODS if m != "eigencam"])
def test_zero_gradient_gives_zero_map_without_nan(name: str) -> None:
    zero = np.zeros_like(G)
    cams = postprocess([METHODS[name].cam(A, zero)], (6, 10))
    assert not np.isnan(cams).any()
    assert np.all(cams == 0)


def test_postprocess_order_normalise_then_upsample_then_renormalise() -> None:
    coarse = np.array([[[0.0, 1.0], [2.0, -1.0]]], dtype=np.float32)
    cam = postprocess([coarse], (4, 4))
    step = np.maximum(coarse[0], 0) / (1e-7 + 2.0)  # relu, min 0, / max
    import cv2

    up = cv2.resize(step, (4, 4))
    up = (up - up.min()) / (1e-7 + (up - up.min()).max())
    np.testing.assert_allclose(cam[0], up, atol=1e-6)
    assert cam.max() == pytest.approx(1.0, abs=1e-6)


def two_step_heatmap(coarse: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """CAM_CONVENTIONS.md steps 1-4 for one layer, as pytorch-grad-cam runs them: ReLU,
    min-max, cv2.resize, ReLU, min-max again (float32)."""
    import cv2

    out = []
    for m in np.maximum(coarse, 0).astype(np.float32):
        m = (m - m.min()) / (np.float32(1e-7) + (m - m.min()).max())
        up = np.maximum(cv2.resize(m, (size[1], size[0])), 0)
        out.append((up - up.min()) / (np.float32(1e-7) + (up - up.min()).max()))
    return np.float32(out)


def coarse_cases() -> list[np.ndarray]:
    """Maps that stress the one-min-max shortcut: random, a checkerboard (the upsampled range
    shrinks most), one hot pixel, negative only (zero after ReLU), constant, a tiny range."""
    rng = np.random.default_rng(7)
    board = np.indices((6, 6)).sum(axis=0) % 2
    return [rng.standard_normal((2, 6, 6)).astype(np.float32),
            np.float32([board, 1 - board]),
            np.float32([np.eye(6)[2:3].T @ np.eye(6)[4:5]]),
            -np.ones((1, 6, 6), np.float32), np.full((1, 6, 6), 3.0, np.float32),
            (1e-6 * rng.random((1, 6, 6))).astype(np.float32)]


@pytest.mark.parametrize("size", [(6, 6), (7, 9), (12, 12), (24, 30), (96, 96)])
def test_one_layer_shortcut_equals_the_two_min_max_steps(size: tuple[int, int]) -> None:
    """postprocess takes one min-max after upsampling one layer (U·1 = 1 makes the first one
    an affine map the second undoes); the result stays within 1e-6 of the two steps, and a
    map with nothing positive stays all zero."""
    for coarse in coarse_cases():
        got = postprocess([coarse], size)
        want = two_step_heatmap(coarse, size)
        assert np.abs(got - want).max() <= 1e-6, (coarse[0, :2, :2], size)
        assert not np.isnan(got).any()
        if coarse.max() <= 0:
            assert np.all(got == 0)


def test_align_corners_upsampling_matches_definition() -> None:
    maps = RNG.standard_normal((1, 2, 3, 4)).astype(np.float32)
    up = upsample_align_corners(maps, (5, 7))
    # corners are copied exactly; the centre of a 3→5 axis is the middle input row
    np.testing.assert_allclose(up[0, :, 0, 0], maps[0, :, 0, 0], atol=1e-6)
    np.testing.assert_allclose(up[0, :, -1, -1], maps[0, :, -1, -1], atol=1e-6)
    np.testing.assert_allclose(up[0, :, 2, 0], maps[0, :, 1, 0], atol=1e-6)
    # a point between samples: row 1 of 5 sits at 0.5 between rows 0 and 1; col 1 of 7 at 0.5
    want = 0.25 * (maps[0, :, 0, 0] + maps[0, :, 1, 0] + maps[0, :, 0, 1] + maps[0, :, 1, 1])
    np.testing.assert_allclose(up[0, :, 1, 1], want, atol=1e-6)


def test_scorecam_weights_are_softmax_of_masked_scores() -> None:
    acts = np.maximum(RNG.standard_normal((1, 3, 2, 2)), 0).astype(np.float32) + 0.1
    x = RNG.standard_normal((1, 3, 4, 4)).astype(np.float32)
    weights = np.array([[1.0, -2.0], [0.5, 3.0], [2.0, 1.0]])  # score_j = Σ x·w_j over channels

    def forward(batch):
        return np.stack([batch.sum(axis=(2, 3)) @ weights[:, j] for j in range(2)], axis=1)

    channel_weights = scorecam(acts, x, np.array([1]), forward, batch_size=2)
    cam = np.einsum("nk,nkhw->nhw", channel_weights, acts)
    scores = []
    for k in range(3):
        m = upsample_align_corners(acts[:, k:k + 1], (4, 4))[0, 0]
        m = (m - m.min()) / (m.max() - m.min() + 1e-8)
        scores.append(forward(x * m)[0, 1])
    w = np.exp(scores) / np.exp(scores).sum()
    np.testing.assert_allclose(cam[0], np.einsum("k,khw->hw", w, acts[0]), rtol=1e-5)


@pytest.mark.parametrize("shape", [(49, 2048), (25, 512), (9, 64), (196, 256),  # wide: X = L·Q
                                   (3136, 64), (784, 128), (300, 16),  # tall: X = Q·R
                                   (49, 64), (36, 49)])  # neither: plain SVD
def test_first_component_keeps_lapacks_sign(shape: tuple[int, int]) -> None:
    """The cheap first principal component equals X·V₀ from pytorch-grad-cam's own call,
    ``np.linalg.svd(X, full_matrices=True)`` in float32, sign included (a flipped sign would
    flip the whole Eigen-CAM map), on activation-like and gradient×activation-like data."""
    from onnx_gradcam.cams.eigen import first_component

    rng = np.random.default_rng(shape[0] * 7919 + shape[1])
    m, n = shape
    for trial in range(12):
        acts = np.maximum(rng.standard_normal((m, n)) * rng.random((1, n)) * 3
                          + rng.standard_normal((m, 1)), 0)
        x = (acts * rng.standard_normal((m, n)) if trial % 2 else acts).astype(np.float32)
        x = x - x.mean(axis=0)
        _, _, vt = np.linalg.svd(x, full_matrices=True)
        want = x @ vt[0]
        got = first_component(x)
        assert np.dot(got, want) > 0, f"sign flipped (trial {trial})"
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())


def test_projection_2d_batch_equals_each_image_alone() -> None:
    """One batched QR + SVD call per batch gives every image the map, sign included, that
    pytorch-grad-cam's per-image ``np.linalg.svd`` gives it (wide, tall and square maps)."""
    from onnx_gradcam.cams.eigen import projection_2d

    rng = np.random.default_rng(5)
    for shape in [(6, 512, 5, 5), (5, 16, 20, 20), (4, 49, 7, 7)]:
        maps = np.maximum(rng.standard_normal(shape) + rng.standard_normal(shape[:2] + (1, 1)),
                          0).astype(np.float32)
        got = projection_2d(maps)
        for image, cam in zip(maps, got):
            x = image.reshape(shape[1], -1).T
            x = x - x.mean(axis=0)
            want = (x @ np.linalg.svd(x, full_matrices=True)[2][0]).reshape(shape[2:])
            assert np.dot(cam.ravel(), want.ravel()) > 0, "sign flipped"
            np.testing.assert_allclose(cam, want, rtol=0, atol=1e-4 * np.abs(want).max())
