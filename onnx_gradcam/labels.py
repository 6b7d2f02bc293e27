"""Class labels: names for score indices, from a file or the model's metadata."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from onnx_gradcam.errors import OnnxGradCamError


class Labels:
    """Names for class indices; ``offset`` is the score index of the first name (Slim: 1)."""

    def __init__(self, names: Sequence[str] | None = None, offset: int = 0,
                 num_classes: int | None = None) -> None:
        self.names = list(names or [])
        self.offset = offset
        self.num_classes = num_classes

    @classmethod
    def from_file(cls, path: Path, offset: int = 0, num_classes: int | None = None) -> Labels:
        """One label per line, or Slim-style ``index:label`` lines (indices are score indices)."""
        if not path.is_file():
            raise OnnxGradCamError(f"{path}: no such labels file")
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        indexed = [re.match(r"^(\d+)\s*:\s*(.*)$", ln) for ln in lines]
        if lines and all(indexed):
            table = {int(m.group(1)): m.group(2) for m in indexed if m}
            first = min(table)
            names = [table.get(i, str(i)) for i in range(first, max(table) + 1)]
            return cls(names, first, num_classes)
        return cls(lines, offset, num_classes)

    def name(self, index: int) -> str:
        i = index - self.offset
        return self.names[i] if 0 <= i < len(self.names) else str(index)

    def slug(self, index: int) -> str:
        """``<index>`` or ``<index>_<label>`` with the label made safe for a file name."""
        name = self.name(index)
        if name == str(index):
            return name
        return f"{index}_{re.sub(r'[^A-Za-z0-9._-]+', '-', name).strip('-')[:40]}"

    def index(self, target: int | str) -> int:
        """A class index from an int, a numeric string or a label name."""
        if isinstance(target, int) or str(target).lstrip("-").isdigit():
            return int(target)
        if target in self.names:
            return self.names.index(str(target)) + self.offset
        lowered = [n.lower() for n in self.names]
        if str(target).lower() in lowered:
            return lowered.index(str(target).lower()) + self.offset
        known = ", ".join(self.names[:10]) + (" …" if len(self.names) > 10 else "")
        raise OnnxGradCamError(
            f"unknown label {target!r}; labels: {known or '(none: pass --labels)'}")
