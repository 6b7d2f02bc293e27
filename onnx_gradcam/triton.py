"""A Triton Inference Server model repository entry for an exported model
(:mod:`onnx_gradcam.export`): ``config.pbtxt`` for the ONNX Runtime backend and the model."""

from __future__ import annotations

from pathlib import Path

import onnx

from onnx_gradcam.errors import OnnxGradCamError
from onnx_gradcam.images import atomic_write, check_output_file

_TRITON_TYPES = {
    onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.DOUBLE: "TYPE_FP64", onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.INT32: "TYPE_INT32", onnx.TensorProto.INT8: "TYPE_INT8",
    onnx.TensorProto.UINT8: "TYPE_UINT8", onnx.TensorProto.BOOL: "TYPE_BOOL",
    onnx.TensorProto.STRING: "TYPE_STRING",
}


def _triton_tensor(value: onnx.ValueInfoProto, optional: bool = False) -> str:
    tensor = value.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
    kind = _TRITON_TYPES.get(tensor.elem_type)
    if kind is None:
        raise OnnxGradCamError(f"Triton: tensor {value.name!r} has an element type Triton's "
                               "ONNX Runtime backend does not take")
    lines = [f'    name: "{value.name}"', f"    data_type: {kind}",
             f"    dims: [ {', '.join(map(str, dims))} ]"]
    if optional:
        lines.append("    optional: true")
    return "  {\n" + "\n".join(lines) + "\n  }"


def triton_config(model: onnx.ModelProto, name: str) -> str:
    """A Triton ``config.pbtxt`` for an exported model: ONNX Runtime backend, no server-side
    batching (``max_batch_size: 0``: the batch is the first dim of every tensor), ``target``
    declared ``optional`` when the model gives it a default."""
    g = model.graph
    defaults = {t.name for t in g.initializer}
    inputs = ",\n".join(_triton_tensor(i, optional=i.name in defaults) for i in g.input)
    outputs = ",\n".join(_triton_tensor(o) for o in g.output)
    return ("# Written by `onnx-gradcam export --triton`; see examples/triton/README.md.\n"
            f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: 0\n'
            f"input [\n{inputs}\n]\noutput [\n{outputs}\n]\n")


def write_triton(model: onnx.ModelProto, repository: str | Path, name: str,
                 reads: tuple[Path, ...] = ()) -> Path:
    """Write ``repository/name/config.pbtxt`` and ``repository/name/1/model.onnx``; return the
    model's folder. An existing ``name`` folder is overwritten file by file, but never a file
    in ``reads`` (the source model and its data)."""
    if not name or not all(c.isalnum() or c in "_-." for c in name) or name.startswith("."):
        raise OnnxGradCamError(f"Triton model name {name!r}: use letters, digits, _ - and .")
    folder = Path(repository) / name
    for path in (folder / "1" / "model.onnx", folder / "config.pbtxt"):
        check_output_file(path, reads)
    atomic_write(folder / "1" / "model.onnx", model.SerializeToString())
    atomic_write(folder / "config.pbtxt", triton_config(model, name).encode())
    return folder
