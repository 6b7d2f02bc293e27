"""``--labels FILE``: one class name per line, or TF-Slim's ``idx:label`` lines."""

from __future__ import annotations

import re
from pathlib import Path

from onnx_gradcam.errors import OnnxGradCamError

_INDEXED = re.compile(r"^\s*(\d+)\s*:(.*)$")


def read_labels(path: Path) -> tuple[list[str], int | None]:
    """The class names and, for ``idx:label`` files, the index of the first one."""
    try:
        lines = [ln.rstrip("\r\n") for ln in path.read_text(encoding="utf-8").splitlines()]
    except OSError as exc:
        raise OnnxGradCamError(f"--labels {path}: {exc.strerror}") from None
    lines = [ln for ln in lines if ln.strip()]
    if not lines:
        raise OnnxGradCamError(f"--labels {path}: the file has no labels")
    matches = [_INDEXED.match(ln) for ln in lines]
    if not all(matches):
        return [ln.strip() for ln in lines], None
    by_index = {int(m.group(1)): m.group(2).strip() for m in matches if m}
    first, last = min(by_index), max(by_index)
    return [by_index.get(i, str(i)) for i in range(first, last + 1)], first


def label_offset(
    labels: list[str] | None, file_offset: int | None, given: int | None, num_classes: int | None
) -> int | None:
    """``--label-offset`` if given, else the file's first index, else 1 when the labels are one
    short of the scores (a background class at index 0), else 0."""
    if given is not None:
        return given
    if labels is None:
        return None
    if file_offset is not None:
        return file_offset
    if num_classes is not None and len(labels) == num_classes - 1:
        return 1
    return 0
