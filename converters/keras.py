"""Keras ``.keras`` / ``.h5`` files (Keras 3, or tf_keras for files saved by tf.keras 2.x)."""

from __future__ import annotations

import re
from pathlib import Path

from onnx_gradcam.converters import _tf
from onnx_gradcam.converters.freeze import freeze_concrete
from onnx_gradcam.converters.options import ConvertOptions, parse_preprocess
from onnx_gradcam.converters.source import Source

from onnx_gradcam.errors import OnnxGradCamError

#: keras.applications model names → their ``preprocess_input`` mode (first match wins)
APPLICATION_MODES = [
    (r"^mobilenetv3", "raw"),  # include_preprocessing: takes 0..255
    (r"^(efficientnet|convnext|regnet)", "raw"),
    (r"^(mobilenet|inception_v3|xception|inception_resnet_v2|nasnet|resnet\d+v2)", "tf"),
    (r"^(resnet\d+|vgg\d+)$", "caffe"),
    (r"^densenet", "torch"),
]


def application_mode(model: object) -> str | None:
    """The ``preprocess_input`` mode of a keras.applications model, also when it is nested."""
    names = [model.name] + [layer.name for layer in getattr(model, "layers", [])
                            if hasattr(layer, "layers")]
    for name in names:
        for pattern, mode in APPLICATION_MODES:
            if re.match(pattern, name.lower()):
                return mode
    return None


def load_keras_model(src: Path) -> object:
    """Load with Keras 3; fall back to tf_keras (legacy tf.keras files); else one clear error."""
    _tf.tensorflow()
    keras = _tf.require("keras")
    try:
        return keras.saving.load_model(str(src), compile=False)
    except Exception as exc:  # noqa: BLE001 - every loader failure becomes one message below
        first = _first_line(exc)
    try:
        tf_keras = _tf.require("tf_keras")
        return tf_keras.models.load_model(str(src), compile=False)
    except Exception as exc:  # noqa: BLE001
        second = _first_line(exc)
    raise OnnxGradCamError(
        f"cannot load {src} with Keras {keras.__version__} ({first}) nor tf_keras ({second}): "
        "it was probably saved by an incompatible Keras; re-save it as .keras with Keras 3"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def freeze_model(model: object, spec: object, what: str) -> tuple[object, list[str], list[str]]:
    """GraphDef, input and output tensor names of ``model``'s inference call on ``spec``."""
    tf = _tf.tensorflow()
    concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    return freeze_concrete(concrete, what)


def load(src: Path, options: ConvertOptions) -> Source:
    """Freeze the model's inference call into a GraphDef."""
    tf = _tf.tensorflow()
    model = load_keras_model(src)
    inputs = getattr(model, "inputs", None)
    if not inputs or len(inputs) != 1:
        raise OnnxGradCamError(
            f"{src}: expected a model with one image input, found {len(inputs or [])} inputs"
        )
    shape = list(inputs[0].shape)
    if options.input_size is not None and len(shape) == 4:
        shape[1:3] = options.input_size
    spec = tf.TensorSpec([None, *shape[1:]], tf.float32, name="input")
    graph_def, tf_inputs, outputs = freeze_model(model, spec, str(src))
    if len(outputs) != 1:
        raise OnnxGradCamError(f"{src}: expected one class-score output, found {len(outputs)}")
    mode = application_mode(model)
    return Source(
        graph_def=graph_def,
        inputs=tf_inputs,
        score=outputs[0],
        preprocessing=parse_preprocess(mode) if mode else None,
    )
