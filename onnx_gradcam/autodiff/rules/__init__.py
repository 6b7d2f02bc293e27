"""VJP rules, one module per op family; importing this package fills ``VJP_RULES``."""

from onnx_gradcam.autodiff.rules import (  # noqa: F401  (imported for registration)
    elementwise,
    integer,
    linalg,
    nn,
    qoperator,
    quant,
    reduce,
    resample,
    shape,
)
