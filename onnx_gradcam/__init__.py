"""onnx-gradcam: Grad-CAM-family heatmaps for any ONNX image classifier on plain ONNX Runtime."""

from onnx_gradcam.errors import OnnxGradCamError
from onnx_gradcam.metadata import ModelMetadata, Preprocessing, metadata_props, read_metadata

__all__ = [
    "ModelMetadata",
    "OnnxGradCamError",
    "Preprocessing",
    "metadata_props",
    "read_metadata",
]
__version__ = "0.1.0"
