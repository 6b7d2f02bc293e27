"""Frozen GraphDef ``.pb`` files (TF1 era), e.g. retrained MobileNets with a bottleneck input."""

from __future__ import annotations

from pathlib import Path

from onnx_gradcam.converters import _tf, tfgraph
from onnx_gradcam.converters.layers import op_name, tensor_name
from onnx_gradcam.converters.options import ConvertOptions
from onnx_gradcam.converters.source import Source

from onnx_gradcam.errors import OnnxGradCamError


def read_graph_def(src: Path) -> object:
    """Parse ``src`` as a binary GraphDef or raise one clear line."""
    tf = _tf.tensorflow()
    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(src.read_bytes())
    except Exception:  # noqa: BLE001 - protobuf's DecodeError
        raise OnnxGradCamError(f"{src} is not a frozen GraphDef (.pb) file") from None
    if not graph_def.node:
        raise OnnxGradCamError(f"{src} holds an empty GraphDef")
    if any(n.op in ("VariableV2", "VarHandleOp") for n in graph_def.node):
        raise OnnxGradCamError(
            f"{src} still has variables: it is not frozen (use the SavedModel or checkpoint)"
        )
    return graph_def


def load(src: Path, options: ConvertOptions) -> Source:
    """Inputs are the ``Placeholder`` ops unless ``--inputs``; the output is the one unconsumed
    op unless ``--outputs``. ``PlaceholderWithDefault`` ops fold to their defaults."""
    graph_def = read_graph_def(src)
    names = {n.name for n in graph_def.node}
    inputs = [tensor_name(i) for i in options.inputs] or tfgraph.detect_inputs(graph_def)
    outputs = [tensor_name(o) for o in options.outputs] or tfgraph.detect_outputs(graph_def)
    for tensor in [*inputs, *outputs]:
        if op_name(tensor) not in names:
            raise OnnxGradCamError(f"{src} has no tensor {tensor!r}")
    if len(inputs) != 1:
        raise OnnxGradCamError(
            f"{src}: found inputs {inputs}; pass --inputs with the image placeholder"
        )
    if len(outputs) != 1:
        raise OnnxGradCamError(
            f"{src}: found outputs {outputs[:8]}; pass --outputs with the class scores"
        )
    graph_def = tfgraph.defaults_to_identity(graph_def, keep=inputs)
    return Source(graph_def=graph_def, inputs=inputs, score=outputs[0])
