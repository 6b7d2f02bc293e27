"""Keras-application zoo fixtures: converted models and TF references, cached per architecture.

The zoo needs TensorFlow, Keras and tf2onnx. Without them its tests fail with an install hint;
set ``ONNX_GRADCAM_SKIP_TF=1`` to skip them instead.
"""

from __future__ import annotations

import os

import pytest

from tests.zoo import zoo

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture(scope="session")
def tf_available() -> None:
    problem = zoo.tf_status()
    if problem is None:
        return
    if os.environ.get(zoo.SKIP_ENV) == "1":
        pytest.skip(f"{problem} ({zoo.SKIP_ENV}=1)")
    pytest.fail(f"{problem}; or set {zoo.SKIP_ENV}=1 to skip the Keras zoo tests", pytrace=False)
