"""Build gradient graphs with onnxruntime-training, in a process and virtualenv of their own.

Run by ``onnx_gradcam.autodiff.ort_training`` with the Python of the isolated venv that holds
``onnxruntime-training-cpu==1.19.2`` (never the project's own venv: it installs into the same
``onnxruntime/`` folder as ``onnxruntime`` and breaks it). A crash here (the builder segfaults on
some heads) ends only this process; the parent turns it into one clear error.

    python tools/ort_training_worker.py JOBS.json

JOBS.json is a list of jobs ``{"model", "out", "loss", "wrt"[, "feeds", "result"]}``. For each,
it reads the head model ``model`` (scalar output ``loss``), calls
``GradientGraphBuilder(model, {loss}, {wrt}, loss)`` and writes the model it returns (forward +
backward nodes, with output ``<wrt>_grad``) to ``out``, or one line saying why not to
``out + ".err"``. With ``feeds`` (.npz) it also runs that model with onnxruntime-training's own
kernels and saves ``<wrt>_grad`` to ``result`` (.npz, key ``grad``): tests use it as the oracle
for our lowering of its contrib ops. Exit codes: 0 every job done (or failed cleanly); 3
onnxruntime-training is not importable. It needs only onnxruntime-training and its numpy.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def _clean(message: str) -> str:
    """The builder's message without the C++ source location and signature it starts with."""
    message = " ".join(message.split())
    if "FAIL : " in message:
        return message.rsplit("FAIL : ", 1)[1]
    if " : " in message and "[ONNXRuntimeError]" in message:
        return message.rsplit(" : ", 1)[1]
    if " was false." in message:
        check, rest = message.split(" was false.", 1)
        if rest.strip():
            return rest.strip()
        if "OutputDefs().size()" in check:
            return "its gradient needs a forward output the node does not have"
        return f"internal check failed: {check.rsplit(') ', 1)[-1]}"
    return message


def _run(model: bytes, output: str, feeds_path: str, result_path: str) -> None:
    """Run ``model`` (contrib ops and all) on the CPU and save ``output``."""
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    with np.load(feeds_path) as data:
        feeds = {k: data[k] for k in data.files}
    session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    (grad,) = session.run([output], feeds)
    np.savez(result_path, grad=grad)


def _job(builder_class: Any, job: dict[str, str]) -> None:
    with open(job["model"], "rb") as f:
        model = f.read()
    try:
        builder = builder_class(model, {job["loss"]}, {job["wrt"]}, job["loss"])
        builder.build()
        result = builder.get_model()
        if job.get("feeds"):
            _run(result, job["wrt"] + "_grad", job["feeds"], job["result"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises bare RuntimeErrors
        with open(job["out"] + ".err", "w") as f:
            f.write(_clean(str(exc)))
        return
    with open(job["out"], "wb") as f:
        f.write(result)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        from onnxruntime.capi import _pybind_state as C  # noqa: N812 (onnxruntime's own name)

        builder_class = C.GradientGraphBuilder
    except (ImportError, AttributeError) as exc:
        print(f"onnxruntime-training is not importable by {sys.executable}: {exc}",
              file=sys.stderr)
        return 3
    C.set_default_logger_severity(3)  # errors only
    with open(args[0]) as f:
        jobs = json.load(f)
    for job in jobs:
        _job(builder_class, job)
    return 0


if __name__ == "__main__":
    sys.exit(main())
