"""The ``onnx_gradcam.*`` metadata schema: how a model wants its images, and what it outputs.

Converters write these keys into ``ModelProto.metadata_props``; ``run`` reads them so a converted
model needs no preprocessing flags. Every key is optional.

- ``layout``: ``NCHW`` or ``NHWC``
- ``input_size``: ``H,W`` in pixels, e.g. ``224,224``
- ``color``: the channel order the model expects, ``RGB`` or ``BGR``, or ``GRAY`` (one
  channel, the luma of the RGB image; the first ``mean``/``std`` value applies)
- ``scale``: multiplier applied to 0..255 pixels first, e.g. ``0.00392156862745098``
- ``mean``: per-channel mean subtracted after scaling, e.g. ``0.485,0.456,0.406``
- ``std``: per-channel std divided last, e.g. ``0.229,0.224,0.225``
- ``labels``: JSON array of class names, e.g. ``["cat", "dog"]``
- ``label_offset``: score index of the first label (``1`` for 1001-class Slim models)
- ``activation``: the target layer, a tensor inside the graph, e.g. ``conv5/Relu:0``
- ``score_output``: the graph output holding the class scores, e.g. ``logits``

So a model input is ``x = (pixels * scale - mean) / std`` in ``color`` order and ``layout``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import onnx

from onnx_gradcam.errors import OnnxGradCamError

PREFIX = "onnx_gradcam."
COLORS = ("RGB", "BGR", "GRAY")


@dataclass(frozen=True)
class Preprocessing:
    """How pixels become the model's input: ``x = (pixels * scale - mean) / std``."""

    size: tuple[int, int] | None = None  # (H, W); None = take it from the model's input shape
    layout: str = "NCHW"
    color: str = "RGB"
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def with_(self, **changes: object) -> Preprocessing:
        """A copy with the given fields changed (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


#: Presets named by ``--preset``; each sets colour order, scale, mean and std.
PRESETS: dict[str, dict[str, object]] = {
    "imagenet": dict(color="RGB", scale=1 / 255, mean=(0.485, 0.456, 0.406),
                     std=(0.229, 0.224, 0.225)),
    "inception": dict(color="RGB", scale=1 / 127.5, mean=(1.0, 1.0, 1.0), std=(1.0, 1.0, 1.0)),
    "caffe": dict(color="BGR", scale=1.0, mean=(103.939, 116.779, 123.68), std=(1.0, 1.0, 1.0)),
    "raw": dict(color="RGB", scale=1.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)),
}


@dataclass(frozen=True)
class ModelMetadata:
    """Everything the ``onnx_gradcam.*`` keys say about a model (fields None when absent)."""

    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    has_preprocessing: bool = False
    labels: tuple[str, ...] | None = None
    label_offset: int = 0
    activation: str | None = None
    score_output: str | None = None


def _floats(text: str, key: str, n: int | None = None) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise OnnxGradCamError(
            f"metadata {PREFIX}{key}={text!r} is not a list of numbers") from None
    if n is not None and len(values) == 1:
        values = values * n
    if n is not None and len(values) != n:
        raise OnnxGradCamError(f"metadata {PREFIX}{key}={text!r} needs {n} numbers")
    return values


def read_metadata(model: onnx.ModelProto) -> ModelMetadata:
    """Parse the ``onnx_gradcam.*`` metadata_props of ``model``."""
    props = {p.key[len(PREFIX):]: p.value for p in model.metadata_props if p.key.startswith(PREFIX)}
    pre: dict[str, object] = {}
    if "layout" in props:
        layout = props["layout"].upper()
        if layout not in ("NCHW", "NHWC"):
            raise OnnxGradCamError(f"metadata {PREFIX}layout={props['layout']!r}: use NCHW or NHWC")
        pre["layout"] = layout
    if "input_size" in props:
        h, w = _floats(props["input_size"], "input_size", 2)
        pre["size"] = (int(h), int(w))
    if "color" in props:
        color = props["color"].upper()
        if color not in COLORS:
            raise OnnxGradCamError(f"metadata {PREFIX}color={props['color']!r}: use RGB, BGR "
                                   "or GRAY")
        pre["color"] = color
    if "scale" in props:
        pre["scale"] = _floats(props["scale"], "scale", 1)[0]
    if "mean" in props:
        pre["mean"] = _floats(props["mean"], "mean", 3)
    if "std" in props:
        pre["std"] = _floats(props["std"], "std", 3)
    labels = None
    if "labels" in props:
        try:
            labels = tuple(str(v) for v in json.loads(props["labels"]))
        except (ValueError, TypeError):
            raise OnnxGradCamError(
                f"metadata {PREFIX}labels is not a JSON array of names") from None
    return ModelMetadata(
        preprocessing=Preprocessing(**pre),  # type: ignore[arg-type]
        has_preprocessing=bool(pre.keys() - {"layout", "size"}),
        labels=labels,
        label_offset=int(props.get("label_offset", 0)),
        activation=props.get("activation"),
        score_output=props.get("score_output"),
    )


def metadata_props(
    *,
    preprocessing: Preprocessing | None = None,
    labels: Sequence[str] | None = None,
    label_offset: int | None = None,
    activation: str | None = None,
    score_output: str | None = None,
) -> dict[str, str]:
    """The ``onnx_gradcam.*`` key/value strings for the given facts (for converters and exports)."""
    out: dict[str, str] = {}
    if preprocessing is not None:
        p = preprocessing
        out["layout"] = p.layout
        if p.size is not None:
            out["input_size"] = f"{p.size[0]},{p.size[1]}"
        out["color"] = p.color
        out["scale"] = repr(float(p.scale))
        out["mean"] = ",".join(repr(float(v)) for v in p.mean)
        out["std"] = ",".join(repr(float(v)) for v in p.std)
    if labels is not None:
        out["labels"] = json.dumps(list(labels))
    if label_offset is not None:
        out["label_offset"] = str(int(label_offset))
    if activation is not None:
        out["activation"] = activation
    if score_output is not None:
        out["score_output"] = score_output
    return {PREFIX + k: v for k, v in out.items()}


def write_metadata(model: onnx.ModelProto, props: dict[str, str]) -> None:
    """Set (replace) the given metadata_props on ``model`` in place."""
    keep = [p for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
