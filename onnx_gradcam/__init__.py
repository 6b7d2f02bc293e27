"""onnx-gradcam: Grad-CAM-family heatmaps for any ONNX image classifier on plain ONNX Runtime."""

from onnx_gradcam import targets
from onnx_gradcam.cams import METHODS
from onnx_gradcam.errors import OnnxGradCamError
from onnx_gradcam.explainer import Explainer, Explanation
from onnx_gradcam.metadata import ModelMetadata, Preprocessing, metadata_props, read_metadata
from onnx_gradcam.model import load_model

__all__ = [
    "METHODS",
    "Explainer",
    "Explanation",
    "ModelMetadata",
    "OnnxGradCamError",
    "Preprocessing",
    "load_model",
    "metadata_props",
    "read_metadata",
    "targets",
]
__version__ = "0.1.0"
