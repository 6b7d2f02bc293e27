"""ONNX Runtime sessions and execution providers (``auto`` uses CUDA when it really works)."""

from __future__ import annotations

from collections.abc import Sequence

import onnxruntime as ort

from onnx_gradcam.errors import OnnxGradCamError

PROVIDER_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
Provider = str | tuple[str, dict[str, object]]  # an ORT provider name, or (name, its options)


def _name(provider: Provider) -> str:
    return provider if isinstance(provider, str) else provider[0]


def _options(threads: int | None, quiet: bool, exact: bool = False) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    if exact:  # no layout transformations: NCHWc's blocked kernels sum in another order
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    if quiet:
        opts.log_severity_level = 3  # a missing CUDA library must not spam stderr under `auto`
    return opts


def make_session(model_bytes: bytes, provider: str | Sequence[Provider] | None = "auto",
                 threads: int | None = None, exact: bool = False) -> ort.InferenceSession:
    """A session on ``provider``: ``auto`` (CUDA if it initialises, else CPU), ``cpu``, ``cuda``,
    or an explicit list of ORT providers, each a name or ``(name, options)`` as ONNX Runtime
    takes them (e.g. ``[("CUDAExecutionProvider", {"use_tf32": 0})]`` for exact float32
    gradients on a GPU). ``session.get_providers()[0]`` says which ran. ``exact``: graph
    optimisation up to ``ORT_ENABLE_EXTENDED`` (see :class:`onnx_gradcam.Explainer`)."""
    if provider is None or provider == "auto":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            ort.set_default_logger_severity(4)  # a machine without CUDA libraries is no error
            try:
                return ort.InferenceSession(
                    model_bytes, _options(threads, True, exact),
                    providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
            except Exception:  # noqa: BLE001 - no usable GPU: fall back to the CPU below
                pass
            finally:
                ort.set_default_logger_severity(2)
        return ort.InferenceSession(model_bytes, _options(threads, False, exact),
                                    providers=["CPUExecutionProvider"])
    if isinstance(provider, str):
        if provider not in PROVIDER_NAMES:
            raise OnnxGradCamError(f"unknown provider {provider!r}; use auto, cpu or cuda")
        names = [PROVIDER_NAMES[provider]]
    else:
        names = list(provider)
    first = _name(names[0])
    if "CUDAExecutionProvider" in map(_name, names) and "CUDAExecutionProvider" not in (
            ort.get_available_providers()):
        raise OnnxGradCamError("provider cuda: this onnxruntime has no CUDA support; install "
                               "onnxruntime-gpu or use --provider cpu")
    try:
        session = ort.InferenceSession(model_bytes, _options(threads, False, exact),
                                       providers=names)
    except Exception as exc:  # noqa: BLE001
        raise OnnxGradCamError(f"cannot start ONNX Runtime on {first}: {exc}") from None
    if first != session.get_providers()[0]:
        raise OnnxGradCamError(f"{first} could not start (no usable GPU or CUDA libraries); "
                               "use --provider cpu")
    return session
