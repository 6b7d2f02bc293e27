"""``python -m onnx_gradcam`` = the ``onnx-gradcam`` command."""

from onnx_gradcam.cli import main

main()
