"""The rows of a ``run``: one per (image, method, target), or one error row per bad image.

They are the run's ledger: each chunk's rows land in ``OUT/results/part-NNNNNN.parquet``,
written atomically after every file those rows name has been written. So a part that exists
is complete, ``--resume`` skips the images the parts list, ``--overwrite`` removes exactly the
files they name, and report.json is built from them. The folder reads as one table with
``pandas.read_parquet``, ``pyarrow.parquet.read_table`` or ``ray.data.read_parquet``
(temporary files start with a dot, which all three skip). The schema is documented in the
README ("Parquet output").
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from onnx_gradcam.images import atomic_write

RESULTS = "results"
PENDING = ".pending.json"  # the files being written for the next part (a dot: readers skip it)
_PART = re.compile(r"part-(\d{6})\.parquet")

_TOP = [("class", "int32"), ("label", "string"), ("score", "float64"),
        ("probability", "float64")]
#: (column, Arrow type name); ``top`` is a list of structs with the fields of ``_TOP``.
COLUMNS = [
    ("path", "string"), ("stem", "string"), ("width", "int32"), ("height", "int32"),
    ("method", "string"), ("layer", "string"), ("rank", "int16"), ("target", "int32"),
    ("label", "string"), ("target_kind", "string"), ("score", "float64"),
    ("probability", "float64"),
    ("cam", "binary"), ("cam_height", "int32"), ("cam_width", "int32"),
    ("overlay", "string"), ("npy", "string"), ("grid", "string"), ("top", "top"),
    ("decode_ms", "float64"), ("explain_ms", "float64"), ("knife_count", "int32"),
    ("knife_shift", "float64"), ("knife_ops", "string"), ("error", "string"),
]


def schema():
    import pyarrow as pa

    top = pa.list_(pa.struct([(n, getattr(pa, t)()) for n, t in _TOP]))
    return pa.schema([(n, top if t == "top" else getattr(pa, t)()) for n, t in COLUMNS])


def cam_bytes(cam: np.ndarray) -> bytes:
    """A map as the ``cam`` column stores it: float16, little-endian, row-major."""
    return np.ascontiguousarray(cam, dtype="<f2").tobytes()


def cam_array(row: dict) -> np.ndarray:
    """The (cam_height, cam_width) float32 map of a row written with cams."""
    flat = np.frombuffer(row["cam"], dtype="<f2")
    return flat.reshape(row["cam_height"], row["cam_width"]).astype(np.float32)


def _parts(outdir: Path) -> list[Path]:
    folder = outdir / RESULTS
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _PART.fullmatch(p.name))


def has_rows(outdir: Path) -> bool:
    return bool(_parts(outdir))


def read_rows(outdir: Path, columns: Iterable[str] | None = None) -> list[dict]:
    """Every row the run's parts hold, in the order they were written."""
    import pyarrow.parquet as pq

    rows: list[dict] = []
    for part in _parts(outdir):
        wanted = list(columns) if columns else None
        if wanted:  # a part written before a column was added reads as nulls there
            have = set(pq.read_schema(part).names)
            wanted = [c for c in wanted if c in have]
        rows += pq.read_table(part, columns=wanted).to_pylist()
    return rows


class Ledger:
    """Appends parts to ``OUT/results``: each call to :meth:`write` is one atomic file."""

    def __init__(self, outdir: Path) -> None:
        self.folder = outdir / RESULTS
        parts = _parts(outdir)
        self.next = int(_PART.fullmatch(parts[-1].name).group(1)) + 1 if parts else 0

    def write(self, rows: list[dict]) -> None:
        if not rows:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        names = [n for n, _ in COLUMNS]
        table = pa.Table.from_pylist([{n: r.get(n) for n in names} for r in rows],
                                     schema=schema())
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        atomic_write(self.upcoming(), buffer.getvalue())
        self.next += 1

    def pending(self, names: list[str]) -> None:
        """Record the file names the next part will list, before they are written."""
        atomic_write(self.folder / PENDING, json.dumps(names).encode())

    def pending_names(self) -> list[str]:
        try:
            names = json.loads((self.folder / PENDING).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []
        return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []

    def upcoming(self) -> Path:
        """The path the next :meth:`write` lands at."""
        return self.folder / f"part-{self.next:06d}.parquet"

    def remove(self) -> None:
        """Remove the parts (``--overwrite``), and the folder if nothing else is in it."""
        for part in _parts(self.folder.parent):
            part.unlink()
        if self.folder.is_dir():
            for leftover in self.folder.iterdir():  # the pending list, a killed write's temp
                if leftover.name == PENDING or leftover.name.startswith(".part-"):
                    leftover.unlink()
        if self.folder.is_dir() and not any(self.folder.iterdir()):
            self.folder.rmdir()


def report_entries(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """report.json's ``images`` and ``errors`` from rows (an image's rows in one entry)."""
    images: dict[str, dict] = {}
    errors = []
    for row in rows:
        if row.get("error") is not None:
            errors.append({"path": row["path"], "error": row["error"]})
            continue
        image = images.get(row["path"])
        if image is None:
            image = images[row["path"]] = {
                "path": row["path"], "width": row["width"], "height": row["height"],
                "top": row["top"], "explanations": [],
                **({"grid": row["grid"]} if row.get("grid") else {}),
                "timings_ms": {"decode": row["decode_ms"]}}
        entry = {"method": row["method"], "target": row["target"], "label": row["label"],
                 "target_kind": row.get("target_kind") or "class", "score": row["score"]}
        entry.update({k: row[k] for k in ("overlay", "npy") if row.get(k)})
        if row.get("knife_count") is not None:
            entry["knife_edges"] = {"count": row["knife_count"], "shift": row["knife_shift"],
                                    "ops": [o for o in row["knife_ops"].split(",") if o]}
        image["explanations"].append(entry)
        image["timings_ms"][f"explain_{row['method']}"] = row["explain_ms"]
    return list(images.values()), errors
