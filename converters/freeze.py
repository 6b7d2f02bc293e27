"""Freeze a ``tf.function`` (Keras model call, SavedModel signature) to a constant GraphDef."""

from __future__ import annotations

from onnx_gradcam.converters import _tf

from onnx_gradcam.errors import OnnxGradCamError


def freeze_concrete(concrete: object, what: str) -> tuple[object, list[str], list[str]]:
    """GraphDef, input tensor names and output tensor names of ``concrete`` with its variables
    folded to constants. Only variables are folded: grappler's rewrites are left to tf2onnx."""
    _tf.tensorflow()
    cvc = _tf.require("tensorflow.python.framework.convert_to_constants")
    try:
        frozen = cvc.convert_variables_to_constants_v2(concrete)
    except Exception as exc:
        raise OnnxGradCamError(f"could not freeze {what}: {str(exc).splitlines()[0]}") from None
    graph_def = frozen.graph.as_graph_def()
    inputs = [t.name for t in frozen.inputs if t.dtype.name != "resource"]
    outputs = [t.name for t in frozen.outputs]
    return graph_def, inputs, outputs
