"""Peak memory (RSS) of ``onnx-gradcam run`` on very large images: bounded by the pixel budget
and the overlay size, not by the file.

    python bench/peak_rss.py [--out bench/results/peak_rss.txt] [--source DIR]

Generates (in a temporary folder) a complete 12000 × 12000 PNG (written row by row, so the
generator itself stays small) and a 60-megapixel JPEG, then runs the real command once per case
in a fresh process and reads that process's peak resident set size from ``wait4``. Cases:
a small image (the baseline: Python, NumPy, OpenCV, ONNX Runtime and the demo model), the PNG
under the default budget (refused from its header), the PNG with ``--max-pixels`` raised past
it (decoded), and the JPEG (within the default budget: decoded reduced). ``--source`` runs
another checkout's package (e.g. an older commit unpacked with ``git archive``) for comparison.
Not timing-sensitive; the seconds shown are wall time on whatever else the machine is doing.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "models" / "demo.onnx"


def write_big_png(path: Path, width: int, height: int) -> None:
    """A valid RGB PNG of smooth bands, compressed row by row."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ramp = (np.arange(width) * 255 // max(1, width - 1)).astype(np.uint8)
    squeeze = zlib.compressobj(6)
    with path.open("wb") as out:
        out.write(b"\x89PNG\r\n\x1a\n")
        out.write(chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)))
        for y in range(height):
            row = np.stack([ramp, np.full(width, y * 255 // height, np.uint8), ramp[::-1]], 1)
            data = squeeze.compress(b"\0" + row.tobytes())
            if data:
                out.write(chunk(b"IDAT", data))
        out.write(chunk(b"IDAT", squeeze.flush()))
        out.write(chunk(b"IEND", b""))


def write_big_jpeg(path: Path, width: int, height: int) -> None:
    """A JPEG of smooth random colour blobs (a photo-like file size)."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (height // 400 + 2, width // 400 + 2, 3), dtype=np.uint8)
    image = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    path.write_bytes(buffer.tobytes())


def peak_rss(args: list[str], source: Path) -> tuple[float, float, int, str]:
    """(peak RSS MiB, seconds, exit code, last stderr line) of one run in a fresh process."""
    env = dict(os.environ, PYTHONPATH=str(source))
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "onnx_gradcam", *args], env=env, cwd=source,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = proc.stderr.read() if proc.stderr else ""
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    last = (stderr.strip().splitlines() or [""])[-1]
    return usage.ru_maxrss / 1024, seconds, proc.returncode, last  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "peak_rss.txt")
    parser.add_argument("--source", type=Path, default=ROOT)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        png, jpeg = tmp_path / "12000x12000.png", tmp_path / "60mp.jpg"
        small = tmp_path / "small.png"
        write_big_png(png, 12000, 12000)
        write_big_jpeg(jpeg, 9486, 6325)  # 59,998,950 pixels
        cv2.imwrite(str(small), np.full((150, 200, 3), 128, np.uint8))
        cases = [
            ("baseline: 200 x 150 PNG", [small]),
            ("12000 x 12000 PNG, default budget", [png]),
            ("12000 x 12000 PNG, --max-pixels 200000000", [png, "--max-pixels", "200000000"]),
            ("60 MP JPEG (9486 x 6325), default budget", [jpeg]),
        ]
        lines = [f"# bench/peak_rss.py on {args.source} "
                 f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}); demo model, "
                 "gradcam; peak RSS of the whole `onnx-gradcam run` process",
                 f"# files: PNG {png.stat().st_size / 1e6:.2f} MB, "
                 f"JPEG {jpeg.stat().st_size / 1e6:.2f} MB"]
        for i, (name, extra) in enumerate(cases):
            out = tmp_path / f"out{i}"
            rss, seconds, code, last = peak_rss(["run", str(DEMO), *map(str, extra), "-o",
                                                 str(out), "-q"], args.source)
            overlay = ""
            report = out / "report.json"
            if report.exists():
                images = json.loads(report.read_text())["images"]
                if images:
                    shape = cv2.imread(images[0]["explanations"][0]["overlay"]).shape
                    overlay = f"; overlay {shape[1]} x {shape[0]}"
            said = last.replace(str(tmp_path) + os.sep, "")
            line = (f"{name:45s} peak RSS {rss:8.0f} MiB  {seconds:6.1f} s  exit {code}"
                    f"{overlay}{'; ' + said if code else ''}")
            print(line, flush=True)
            lines.append(line)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
