"""Lazy TensorFlow imports: ``onnx_gradcam`` must work without TensorFlow installed."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from onnx_gradcam.errors import OnnxGradCamError

INSTALL_HINT = "pip install 'onnx-gradcam[tf]'"


def require(module: str) -> ModuleType:
    """Import ``module`` (tensorflow, tf2onnx, tf_slim, keras …) or raise an install hint."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise OnnxGradCamError(
            f"converting TensorFlow models needs {module.split('.')[0]} ({exc.msg}): "
            f"{INSTALL_HINT}"
        ) from None


def tensorflow() -> ModuleType:
    """The ``tensorflow`` module, quiet, or an install hint."""
    tf = require("tensorflow")
    tf.get_logger().setLevel("ERROR")
    return tf
