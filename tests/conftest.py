"""Test-wide settings.

``ONNX_GRADCAM_TEST_ORT_LEVEL`` (e.g. ``ORT_ENABLE_EXTENDED``; default ``ORT_ENABLE_ALL``, what
the library uses) sets the graph optimisation level of every session the library opens, so the
production-path tests can be run at another level: ONNX Runtime's level-3 NCHWc kernels round
differently, and the tests must hold at both (the oracle tests, tests/oracle.py, check both
levels in any run).
"""

from __future__ import annotations

import onnxruntime as ort
import pytest

from tests.oracle import LEVEL


@pytest.fixture(autouse=True, scope="session")
def _ort_level():
    if LEVEL == "ORT_ENABLE_ALL":
        yield
        return
    from onnx_gradcam import runtime

    level = getattr(ort.GraphOptimizationLevel, LEVEL)
    original = runtime._options

    def options(*args, **kwargs):
        opts = original(*args, **kwargs)
        opts.graph_optimization_level = level
        return opts

    runtime._options = options
    yield
    runtime._options = original
