"""Run TensorFlow and ONNX Runtime on the same input and compare scores and activation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from onnx_gradcam.converters import tfgraph

from onnx_gradcam.errors import OnnxGradCamError

RTOL = 1e-3  # of the reference's largest magnitude (at least 1)


@dataclass(frozen=True)
class Verification:
    """Max abs differences TF vs ORT, and the tolerances they were held to."""

    scores_diff: float
    activation_diff: float
    scores_tol: float
    activation_tol: float

    def __str__(self) -> str:
        return (
            f"TF vs ONNX Runtime max |diff|: scores {self.scores_diff:.2e} "
            f"(tol {self.scores_tol:.1e}), activation {self.activation_diff:.2e} "
            f"(tol {self.activation_tol:.1e})"
        )


def sample_input(shape: Sequence[int | None], fields: dict | None, seed: int = 0) -> np.ndarray:
    """A deterministic batch of random 0..255 pixels, preprocessed as the model expects
    (``[-1, 1]`` when the preprocessing is unknown)."""
    n = shape[0] or 2
    h, w, c = (d or 224 for d in shape[1:4])
    px = np.random.default_rng(seed).uniform(0, 255, size=(n, h, w, c)).astype(np.float32)
    fields = fields or {"scale": 1 / 127.5, "mean": (1.0,) * 3, "std": (1.0,) * 3}
    scale = float(fields.get("scale", 1 / 255))
    mean = np.asarray(fields.get("mean", (0.0,) * 3), np.float32)
    std = np.asarray(fields.get("std", (1.0,) * 3), np.float32)
    if fields.get("color") == "BGR":
        px = px[..., ::-1]
    if c != 3:
        mean, std = mean[:1], std[:1]
    return ((px * scale - mean) / std).astype(np.float32)


def verify(
    graph: object,
    tf_inputs: Sequence[str],
    tf_fetches: tuple[str, str],
    onnx_path: str,
    onnx_fetches: tuple[str, str],
    x_nhwc: np.ndarray,
    nchw_input: bool,
) -> Verification:
    """Compare TF's (scores, NHWC activation) with ORT's (scores, NCHW activation) on ``x``."""
    import onnxruntime as ort

    ref_scores, ref_act = tfgraph.run_graph(graph, tf_inputs, x_nhwc, tf_fetches)
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    x = np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)) if nchw_input else x_nhwc
    got_scores, got_act = sess.run(list(onnx_fetches), {sess.get_inputs()[0].name: x})
    ref_act = ref_act.transpose(0, 3, 1, 2)
    if got_scores.shape != ref_scores.shape or got_act.shape != ref_act.shape:
        raise OnnxGradCamError(
            f"verification failed: ONNX shapes {got_scores.shape}, {got_act.shape} differ from "
            f"TensorFlow's {ref_scores.shape}, {ref_act.shape}"
        )
    result = Verification(
        scores_diff=float(np.max(np.abs(got_scores - ref_scores))),
        activation_diff=float(np.max(np.abs(got_act - ref_act))),
        scores_tol=RTOL * max(1.0, float(np.max(np.abs(ref_scores)))),
        activation_tol=RTOL * max(1.0, float(np.max(np.abs(ref_act)))),
    )
    if not (result.scores_diff <= result.scores_tol
            and result.activation_diff <= result.activation_tol):
        raise OnnxGradCamError(
            f"verification failed: {result}; pass --no-verify to keep the model anyway"
        )
    return result
