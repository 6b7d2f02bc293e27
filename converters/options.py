"""What a conversion is asked to do, and the preprocessing specs ``--preprocess`` accepts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from onnx_gradcam.errors import OnnxGradCamError
from onnx_gradcam.metadata import COLORS, PRESETS, Preprocessing

FORMATS = ("keras", "savedmodel", "frozen", "slim")
OPSETS = range(13, 19)  # what tf2onnx 1.17 converts to
DEFAULT_OPSET = 17

#: Keras ``preprocess_input`` modes mapped to our presets.
KERAS_MODES = {"tf": "inception", "torch": "imagenet", "caffe": "caffe", "none": "raw"}


@dataclass(frozen=True)
class ConvertOptions:
    """Arguments of :func:`converters.convert` beyond the source and output paths."""

    format: str | None = None
    slim_net: str | None = None
    checkpoint: Path | None = None
    num_classes: int | None = None
    label_offset: int | None = None
    labels: Path | None = None
    layer: str | None = None
    opset: int = DEFAULT_OPSET
    nchw: bool = False
    verify: bool = True
    preprocess: str | None = None
    signature: str | None = None
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    input_size: tuple[int, int] | None = None
    on_stage: Callable[[str], None] = field(default=lambda stage: None, compare=False)


def check_opset(opset: int) -> int:
    """``opset`` if tf2onnx 1.17 can write it, else a clear error."""
    if opset not in OPSETS:
        raise OnnxGradCamError(
            f"--opset {opset} is not supported: tf2onnx converts to opsets "
            f"{OPSETS.start}-{OPSETS.stop - 1} (default {DEFAULT_OPSET})"
        )
    return opset


def parse_preprocess(spec: str) -> dict[str, object]:
    """Preprocessing fields from ``--preprocess``.

    Accepts a preset (``imagenet``, ``inception``, ``caffe``, ``raw``), a Keras
    ``preprocess_input`` mode (``tf``, ``torch``, ``caffe``) or explicit fields such as
    ``scale=0.0078125,mean=1,std=1,color=RGB`` (one number is used for all three channels).
    """
    name = spec.strip().lower()
    if name in KERAS_MODES:
        name = KERAS_MODES[name]
    if name in PRESETS:
        return dict(PRESETS[name])
    fields: dict[str, object] = {}
    for part in spec.replace(" ", "").split(";" if ";" in spec else ","):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep:
            # "mean=1,2,3" split on commas: continuation of the previous list
            if fields and key.replace(".", "").replace("-", "").isdigit():
                last = list(fields)[-1]
                prev = fields[last]
                fields[last] = (*prev, float(key)) if isinstance(prev, tuple) else prev
                continue
            raise OnnxGradCamError(
                f"--preprocess {spec!r}: use a preset ({', '.join([*PRESETS, *KERAS_MODES])}) "
                "or fields like scale=0.0078125,mean=1,std=1,color=RGB (or BGR, GRAY)"
            )
        key = key.lower()
        try:
            if key == "color":
                if value.upper() not in COLORS:
                    raise ValueError
                fields["color"] = value.upper()
            elif key == "scale":
                fields["scale"] = _number(value)
            elif key in ("mean", "std"):
                fields[key] = (_number(value),)
            else:
                raise KeyError(key)
        except (ValueError, ZeroDivisionError):
            raise OnnxGradCamError(f"--preprocess {spec!r}: bad value for {key}") from None
        except KeyError:
            raise OnnxGradCamError(
                f"--preprocess {spec!r}: unknown field {key!r} (use scale, mean, std, color)"
            ) from None
    for key in ("mean", "std"):
        if key in fields:
            values = fields[key]
            assert isinstance(values, tuple)
            if len(values) == 1:
                fields[key] = values * 3
            elif len(values) != 3:
                raise OnnxGradCamError(f"--preprocess {spec!r}: {key} needs 1 or 3 numbers")
    return fields


def _number(text: str) -> float:
    if "/" in text:
        num, den = text.split("/", 1)
        return float(num) / float(den)
    return float(text)


def preprocessing_from(spec: str | None, default: dict[str, object] | None) -> dict | None:
    """The preprocessing fields to record: ``--preprocess`` wins over the source's own default."""
    if spec is not None:
        return parse_preprocess(spec)
    return default


def with_fields(base: Preprocessing, fields: dict[str, object]) -> Preprocessing:
    """``base`` with the given preprocessing fields set."""
    return base.with_(**fields)
