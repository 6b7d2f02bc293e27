"""onnx-gradcam: Grad-CAM-family heatmaps for any ONNX image classifier on plain ONNX Runtime."""

from pathlib import Path as _Path

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

# A wheel installs converters/ as onnx_gradcam/converters (pyproject's package-dir); in a source
# checkout it sits beside this folder, so the checkout's root is searched for it too.
_beside = _Path(__file__).resolve().parent.parent
if (not (_Path(__file__).parent / "converters").is_dir()
        and (_beside / "converters" / "__init__.py").is_file()):
    __path__.append(str(_beside))  # noqa: F821 (a package's own __path__)
