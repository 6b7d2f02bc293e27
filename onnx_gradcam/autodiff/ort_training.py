"""onnxruntime-training's ``GradientGraphBuilder`` as an optional gradient builder (and oracle 2).

The head (the nodes from the target layer ``A`` to the score) is cut into a model of its own whose
output is the scalar ``loss = Σ seed ⊙ score``; ``GradientGraphBuilder(head, {loss}, {A}, loss)``
adds the output ``A_grad`` = Σ seed · ∂score/∂A, the same quantity our VJP rules compute. Its
backward graph uses ``com.microsoft`` ops that plain onnxruntime lacks; :mod:`.lowering` rewrites
each into standard ONNX, and the result is merged into the explainer graph like ours.

onnxruntime-training installs into the same ``onnxruntime/`` folder as onnxruntime and breaks it,
and it segfaults on some heads, so it lives in its own virtualenv and runs in a subprocess
(``tools/ort_training_worker.py``): a crash there is one :class:`OnnxGradCamError`, not ours.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from onnx_gradcam.autodiff.builder import GradientGraph, head_nodes
from onnx_gradcam.autodiff.lowering import lower_nodes
from onnx_gradcam.errors import OnnxGradCamError
from onnx_gradcam.graph import GraphInfo

PYTHON_ENV = "ONNX_GRADCAM_ORT_TRAINING_PYTHON"
REPO = Path(__file__).resolve().parents[2]
DEFAULT_VENV = REPO / ".venv-ort-training"
WORKER = REPO / "tools" / "ort_training_worker.py"
SETUP = ("create it with `make .venv-ort-training`, i.e. `python3.11 -m venv .venv-ort-training && "
         ".venv-ort-training/bin/pip install onnxruntime-training-cpu==1.19.2` (Python ≤ 3.11), "
         f"or point {PYTHON_ENV} at such a venv's python")
FALLBACK = "use --gradient-builder onnx (the default)"
LOSS = "ogc_ort_loss"
SEED = "ogc_ort_seed"
NODE = "ogc_ort_n"


def training_python() -> Path:
    """The Python of the isolated onnxruntime-training venv (env override, else the repo's)."""
    override = os.environ.get(PYTHON_ENV)
    python = Path(override) if override else DEFAULT_VENV / "bin" / "python"
    if not python.exists():
        where = f"{PYTHON_ENV}={override}" if override else str(python)
        raise OnnxGradCamError(f"onnxruntime-training's Python {where} does not exist; {SETUP}")
    return python


#: Ops onnxruntime-training 1.19.2 has no gradient builder for (measured).
NO_GRADIENT = frozenset({"HardSwish", "HardSigmoid", "GlobalMaxPool", "Resize", "PRelu", "Elu",
                         "Softplus", "Sum", "ReduceMax", "ReduceMin", "InstanceNormalization",
                         "Einsum", "QuantizeLinear", "DequantizeLinear", "QGemm",
                         "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"})
#: Ops whose gradient needs a training-mode output (saved mean/variance, dropout mask).
NEEDS_TRAINING_OUTPUTS = frozenset({"BatchNormalization", "Dropout", "LayerNormalization"})


def known_gap(info: GraphInfo, head: list[int], activation: str, score: str) -> str | None:
    """Why GradientGraphBuilder 1.19.2 cannot differentiate the head correctly, or None.

    Measured: no gradient for :data:`NO_GRADIENT` ops, for the inference forms (one output) of
    :data:`NEEDS_TRAINING_OUTPUTS`, for Pad other than constant (or with axes: its gradient Pad
    ignores them, a run-time error), for Pow's exponent, nor for a node
    reading one tensor twice (``Add(x, x)``: duplicate ``x_grad``) nor for MatMul with a 1-D
    operand; a wrong gradient for Gelu
    with ``approximate="tanh"`` (it uses the exact Gelu's) and for Split with an output off the
    path (its gradient misses that slice); and a segfault on MaxPool with symbolic height/width.
    """
    on_path = {activation} | {o for i in head for o in info.nodes[i].output}
    used = {score} | {x for i in head for x in info.nodes[i].input}
    for index in head:
        node = info.nodes[index]
        what = f"op {node.op_type} (node {node.name or node.output[0]!r})"
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        path_inputs = [x for x in node.input if x in on_path]
        reason = None
        if node.op_type in NO_GRADIENT or node.op_type.startswith("QLinear"):
            reason = "has no onnxruntime-training gradient"
        elif node.op_type in NEEDS_TRAINING_OUTPUTS and len([o for o in node.output if o]) == 1:
            reason = "in inference form has no onnxruntime-training gradient"
        elif node.op_type == "Pad" and attrs.get("mode", b"constant") != b"constant":
            reason = "has an onnxruntime-training gradient only in constant mode"
        elif node.op_type == "Pad" and len(node.input) > 3 and node.input[3]:
            reason = "with an axes input gets a gradient Pad that ignores the axes"
        elif node.op_type == "Pow" and node.input[1] in on_path:
            reason = "has no onnxruntime-training gradient for its exponent"
        elif len(set(path_inputs)) < len(path_inputs):
            reason = "reads one tensor twice, which onnxruntime-training cannot differentiate"
        elif node.op_type == "MatMul" and any(len(info.shapes.get(x) or "ab") < 2
                                               for x in node.input):
            reason = "has a 1-D operand, which onnxruntime-training's gradient rejects"
        elif node.op_type == "Gelu" and attrs.get("approximate", b"none") == b"tanh":
            reason = "(tanh approximation) gets the exact Gelu's gradient from onnxruntime-training"
        elif node.op_type == "Split" and any(o not in used for o in node.output):
            reason = "has an output off the path, which onnxruntime-training's gradient drops"
        elif node.op_type == "MaxPool":
            shape = info.shapes.get(node.input[0])
            if shape is None or None in shape[2:]:
                reason = "with symbolic height/width crashes onnxruntime-training"
        if reason:
            return f"{what} {reason}"
    return None


def _value_info(info: GraphInfo, name: str, as_name: str | None = None) -> onnx.ValueInfoProto:
    shape = info.shapes.get(name)
    dims = None if shape is None else [d if d is not None else f"{as_name or name}_d{i}"
                                       for i, d in enumerate(shape)]
    return helper.make_tensor_value_info(as_name or name, info.elem_types.get(name, 0), dims)


def _named(node: onnx.NodeProto, index: int) -> onnx.NodeProto:
    """A copy named ``ogc_ort_n<index>``: the builder names its gradient nodes after it."""
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    copy.name = f"{NODE}{index}"
    return copy


def cut_head(info: GraphInfo, activation: str, score: str) -> onnx.ModelProto:
    """The head as a model: inputs ``activation``, ``ogc_ort_seed`` (shaped like ``score``) and any
    other tensor the head reads from outside it; output the float32 scalar ``ogc_ort_loss``
    (the builder seeds its gradient with a float 1; a Cast passes that 1 on exactly).

    Tensor names are the forward graph's own, so the gradient graph refers to forward tensors by
    the names they have in the explainer graph; node ``i`` is named ``ogc_ort_n<i>``.
    """
    head = head_nodes(info, activation, score)
    produced = {o for i in head for o in info.nodes[i].output}
    initializers = {t.name: t for t in info.model.graph.initializer}
    inits, constants, externals, seen = [], [], [], {activation, ""}
    for index in head:
        for name in info.nodes[index].input:
            if name in seen or name in produced:
                continue
            seen.add(name)
            producer = info.producer.get(name)
            if name in initializers:
                inits.append(initializers[name])
            elif producer is not None and info.nodes[producer].op_type == "Constant":
                constants.append(info.nodes[producer])
            else:
                externals.append(name)
    weighted = [helper.make_node("Mul", [SEED, score], ["ogc_ort_weighted"], name="ogc_ort_mul")]
    if info.elem_types[score] != onnx.TensorProto.FLOAT:  # the builder seeds d loss = 1.0f
        weighted.append(helper.make_node("Cast", ["ogc_ort_weighted"], ["ogc_ort_weighted_f"],
                                         to=onnx.TensorProto.FLOAT, name="ogc_ort_cast"))
    nodes = [*constants, *(_named(info.nodes[i], i) for i in head), *weighted,
             helper.make_node("ReduceSum", [weighted[-1].output[0]], [LOSS], keepdims=0,
                              name="ogc_ort_sum")]
    inputs = [_value_info(info, activation), _value_info(info, score, SEED),
              *(_value_info(info, e) for e in externals)]
    loss = helper.make_tensor_value_info(LOSS, onnx.TensorProto.FLOAT, [])
    graph = helper.make_graph(nodes, "ogc_head", inputs, [loss], inits)
    model = helper.make_model(graph, opset_imports=list(info.model.opset_import))
    model.ir_version = info.model.ir_version
    return model


@dataclass
class Built:
    """One head's result from the worker: the model the builder returned (or why not), and with
    feeds, the gradient from onnxruntime-training's own kernels."""

    model: onnx.ModelProto | None
    error: str | None = None
    native: np.ndarray | None = None


def run_builders(heads: list[tuple[onnx.ModelProto, str]], what: str = "the head",
                 timeout: float = 300.0, feeds: list[dict[str, np.ndarray]] | None = None
                 ) -> list[Built]:
    """Run ``tools/ort_training_worker.py`` once, in the isolated venv, on each (head model,
    activation). A crash or a timeout of the worker is one :class:`OnnxGradCamError` naming
    ``what``; the builder failing on one head is that head's ``Built.error``."""
    python = training_python()
    with tempfile.TemporaryDirectory(prefix="ogc-ort-") as tmp:
        jobs = []
        for i, (head, activation) in enumerate(heads):
            job = {"model": f"{tmp}/head{i}.onnx", "out": f"{tmp}/grad{i}.onnx", "loss": LOSS,
                   "wrt": activation}
            Path(job["model"]).write_bytes(head.SerializeToString())
            if feeds is not None:
                job |= {"feeds": f"{tmp}/feeds{i}.npz", "result": f"{tmp}/result{i}.npz"}
                np.savez(job["feeds"], **feeds[i])
            jobs.append(job)
        Path(tmp, "jobs.json").write_text(json.dumps(jobs))
        try:
            done = subprocess.run([str(python), str(WORKER), f"{tmp}/jobs.json"],
                                  capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise OnnxGradCamError(f"onnxruntime-training's gradient builder took over "
                                   f"{timeout:.0f} s on {what}; {FALLBACK}") from None
        _check_exit(done, what)
        return [_collect(job) for job in jobs]


def _check_exit(done: subprocess.CompletedProcess, what: str) -> None:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    if done.returncode < 0:
        sig = signal.Signals(-done.returncode).name
        raise OnnxGradCamError(f"onnxruntime-training's gradient builder crashed ({sig}) on "
                               f"{what}; {FALLBACK}")
    if done.returncode == 3:
        raise OnnxGradCamError(f"{lines[-1] if lines else 'onnxruntime-training is missing'}; "
                               f"{SETUP}")
    if done.returncode != 0:
        reason = lines[-1] if lines else f"exit code {done.returncode}"
        raise OnnxGradCamError(f"onnxruntime-training's gradient builder failed on {what}: "
                               f"{reason}; {FALLBACK}")


def _collect(job: dict[str, str]) -> Built:
    err = Path(job["out"] + ".err")
    if err.exists():
        return Built(None, err.read_text())
    model = onnx.load_model_from_string(Path(job["out"]).read_bytes())
    if "result" not in job:
        return Built(model)
    with np.load(job["result"]) as result:
        return Built(model, native=result["grad"])


def run_builder(head: onnx.ModelProto, activation: str, what: str = "the head",
                timeout: float = 300.0) -> onnx.ModelProto:
    """The builder's model for one head; any failure is one :class:`OnnxGradCamError`."""
    (built,) = run_builders([(head, activation)], what, timeout)
    if built.model is None:
        raise OnnxGradCamError(f"onnxruntime-training's gradient builder failed on {what}: "
                               f"{built.error}; {FALLBACK}")
    return built.model


def _describe(info: GraphInfo, head: list[int], activation: str) -> str:
    ops = [info.nodes[i].op_type for i in head]
    shown = ", ".join(ops[:6]) + (", …" if len(ops) > 6 else "")
    return f"the head after {activation!r} ({shown})"


def build_gradient_ort(info: GraphInfo, activation: str, score: str, seed: str,
                       prefix: str = "ogc_ort/", seed_classes: str | None = None
                       ) -> GradientGraph:
    """Like :func:`~onnx_gradcam.autodiff.builder.build_gradient`, with onnxruntime-training's
    builder and our lowering of its contrib ops; raises :class:`OnnxGradCamError` on known gaps
    (before starting the builder), crashes and contrib ops we cannot lower."""
    head = head_nodes(info, activation, score)
    if not head:
        raise OnnxGradCamError(f"tensor {activation!r} does not feed the score {score!r}")
    gap = known_gap(info, head, activation, score)
    if gap is not None:
        raise OnnxGradCamError(f"{gap}; {FALLBACK}")
    what = _describe(info, head, activation)
    result = run_builder(cut_head(info, activation, score), activation, what)
    forward = {(n.op_type, tuple(n.input), tuple(n.output)) for n in info.nodes}
    backward = [n for n in result.graph.node
                if (n.op_type, tuple(n.input), tuple(n.output)) not in forward]
    known = {t.name for t in info.model.graph.initializer}
    new_inits = [t for t in result.graph.initializer if t.name not in known]
    sources = {f"{NODE}{i}": info.nodes[i] for i in head}
    nodes, inits, gradient = lower_nodes(info, backward, new_inits, f"{activation}_grad",
                                         {SEED: seed}, prefix, info.dtype(activation), sources)
    return GradientGraph(nodes, inits, gradient, [info.nodes[i].op_type for i in head])
