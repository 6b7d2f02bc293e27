"""The one compatibility shim TF-Slim needs on TF ≥ 2.16 with tf-keras.

``tensorflow/python/layers/normalization.py`` lazily imports ``tf_keras.legacy_tf_layers``,
which tf-keras 2.16+ ships as ``tf_keras.src.legacy_tf_layers``; ``tf_slim.layers.batch_norm``
(used by the Inception and ResNet nets) fails without this alias.
"""

from __future__ import annotations

import sys

from onnx_gradcam.converters import _tf

_ALIASES = {
    "tf_keras.legacy_tf_layers": "tf_keras.src.legacy_tf_layers",
    "tf_keras.legacy_tf_layers.normalization": "tf_keras.src.legacy_tf_layers.normalization",
}


def install() -> None:
    """Alias the legacy layer modules (idempotent; a no-op where the old path exists)."""
    for alias, real in _ALIASES.items():
        if alias in sys.modules:
            continue
        try:
            __import__(alias)
        except ImportError:
            sys.modules[alias] = _tf.require(real)


def tf_slim() -> object:
    """``tf_slim`` with the shim installed."""
    _tf.tensorflow()
    install()
    return _tf.require("tf_slim")
