"""TensorFlow models → ONNX for onnx-gradcam (needs the ``tf`` extra; imported lazily).

Every source format (Keras, SavedModel, frozen GraphDef, TF-Slim checkpoint) is frozen to a
GraphDef, its last conv activation is found, tf2onnx converts it, the activation's internal NCHW
tensor becomes an extra output, ``onnx_gradcam.*`` metadata is written and TF and ONNX Runtime
are compared on one input.
"""

from onnx_gradcam.converters.api import ConvertResult, convert, detect_format
from onnx_gradcam.converters.options import ConvertOptions

__all__ = ["ConvertOptions", "ConvertResult", "convert", "detect_format"]
