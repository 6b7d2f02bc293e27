"""SavedModel folders (``tf.saved_model.save``, Keras ``model.export()``): one signature."""

from __future__ import annotations

from pathlib import Path

from onnx_gradcam.converters import _tf
from onnx_gradcam.converters.freeze import freeze_concrete
from onnx_gradcam.converters.options import ConvertOptions
from onnx_gradcam.converters.source import Source

from onnx_gradcam.errors import OnnxGradCamError

DEFAULT_SIGNATURES = ("serving_default", "serve")


def load(src: Path, options: ConvertOptions) -> Source:
    """Freeze the chosen signature (``--signature``, else ``serving_default``)."""
    tf = _tf.tensorflow()
    try:
        loaded = tf.saved_model.load(str(src))
    except Exception as exc:  # noqa: BLE001
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OnnxGradCamError(f"cannot load SavedModel {src}: {first}") from None
    signatures = dict(loaded.signatures)
    name = options.signature or next((s for s in DEFAULT_SIGNATURES if s in signatures), None)
    if name is None and len(signatures) == 1:
        name = next(iter(signatures))
    if name not in signatures:
        raise OnnxGradCamError(
            f"SavedModel {src} has no signature {name!r}; pass --signature with one of "
            f"{sorted(signatures) or 'none (it has no signatures)'}"
        )
    concrete = signatures[name]
    graph_def, inputs, outputs = freeze_concrete(concrete, f"signature {name!r} of {src}")
    keys = sorted(concrete.structured_outputs)  # frozen outputs follow the sorted keys
    if options.outputs:
        wanted = options.outputs[0]
        if wanted not in keys:
            raise OnnxGradCamError(f"signature {name!r} has no output {wanted!r}; it has {keys}")
        score = outputs[keys.index(wanted)]
    elif len(outputs) == 1:
        score = outputs[0]
    else:
        raise OnnxGradCamError(
            f"signature {name!r} has outputs {keys}: pass --outputs with the class scores"
        )
    if len(inputs) != 1:
        raise OnnxGradCamError(f"signature {name!r} has {len(inputs)} inputs: expected one image")
    return Source(graph_def=graph_def, inputs=inputs, score=score)
