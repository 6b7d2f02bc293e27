"""Fuzzing ``run`` and ``evaluate`` over their options and over crafted image files.

Invariants, whatever the input: the exit code is 0, 1 or 2; no traceback (an exception that
escapes the CLI's error boundary fails the test with Hypothesis' reproduction); no input file
changes; every good image is explained; report.json is strict JSON listing every input exactly
once and describing every file in the output folder; a refused run leaves no file behind.

Bounded for ``make test`` (well under two minutes on two busy cores): small models, a few
tiny images, a fixed number of examples. The seed is printed with a failing example; set
``ONNX_GRADCAM_FUZZ_SEED`` to explore others.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, note, seed, settings
from hypothesis import strategies as st

from tests.test_hostile import (
    cli,
    digest,
    labelled_cnn,
    listed_files,
    png_header,
    save,
    strict_json,
    subprocess_cli,
)

SEED = int(os.environ.get("ONNX_GRADCAM_FUZZ_SEED", "1414"))
FUZZ = settings(max_examples=80, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return save(labelled_cnn(), tmp_path_factory.mktemp("fuzz") / "small.onnx")


# ---- crafted files ---------------------------------------------------------------------------
@dataclass
class Crafted:
    name: str
    data: bytes
    pixels: int | None  # width × height of a good image; None where it may be refused


def _encode(rng: np.random.Generator, height: int, width: int, kind: str) -> bytes:
    if kind == "gray":
        image = rng.integers(0, 256, (height, width), dtype=np.uint8)
    elif kind == "rgba":
        image = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
    elif kind == "deep":
        image = rng.integers(0, 65536, (height, width, 3), dtype=np.uint16)
    else:
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    ok, buffer = cv2.imencode(".jpg" if kind == "jpeg" else ".png", image)
    assert ok
    return buffer.tobytes()


def _bmp_header(width: int, height: int) -> bytes:
    """A BMP whose header claims ``width`` × ``height`` 24-bit pixels, with no pixel data."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info), 0, 0, 14 + len(info)) + info


NAME_CHARS = st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\\0")


@st.composite
def crafted_file(draw) -> Crafted:
    stem = draw(st.text(NAME_CHARS, min_size=1, max_size=60)
                | st.integers(200, 246).map(lambda n: "x" * n)
                | st.integers(60, 122).map(lambda n: "é" * n))
    if stem.startswith(".") or stem in (".", ".."):
        stem = "f" + stem
    kind = draw(st.sampled_from(["png", "gray", "rgba", "deep", "jpeg", "header_png",
                                 "header_bmp", "truncated", "flipped", "random", "empty"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    suffix = ".jpg" if kind == "jpeg" else draw(st.sampled_from([".png", ".jpg", ".bmp"]))
    if len(os.fsencode(stem + suffix)) > 250:
        stem = stem[: 250 - len(suffix) - 3 * len(stem) // len(os.fsencode(stem))]
    name = stem + suffix
    if kind in ("png", "gray", "rgba", "deep", "jpeg"):
        height, width = draw(st.integers(1, 48)), draw(st.integers(1, 48))
        return Crafted(name, _encode(rng, height, width, kind), height * width)
    if kind == "header_png":
        return Crafted(name, png_header(draw(st.integers(1, 2**31 - 1)),
                                        draw(st.integers(1, 2**31 - 1))), None)
    if kind == "header_bmp":
        return Crafted(name, _bmp_header(draw(st.integers(1, 2**31 - 1)),
                                         draw(st.integers(-(2**31) + 1, 2**31 - 1))), None)
    good = _encode(rng, 24, 24, draw(st.sampled_from(["png", "jpeg"])))
    if kind == "truncated":
        return Crafted(name, good[: draw(st.integers(1, len(good) - 1))], None)
    if kind == "flipped":
        data = bytearray(good)
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
        return Crafted(name, bytes(data), None)
    if kind == "random":
        return Crafted(name, draw(st.binary(min_size=1, max_size=200)), None)
    return Crafted(name, b"", None)


def _write(folder: Path, files: list[Crafted]) -> dict[str, Crafted]:
    folder.mkdir()
    written = {}
    for item in files:
        if item.name in written:
            continue
        (folder / item.name).write_bytes(item.data)
        written[item.name] = item
    return written


# ---- options ---------------------------------------------------------------------------------
def _maybe(flag: str, valid: list[str], hostile: list[str], use_hostile: bool
           ) -> st.SearchStrategy[list[str]]:
    values = valid + hostile if use_hostile else valid
    return st.one_of(st.just([]), st.sampled_from(values).map(lambda v: [flag, v]))


def _options(hostile: bool) -> st.SearchStrategy[list[str]]:
    """Run options; with ``hostile``, also values the run must refuse in one line."""
    return st.tuples(
        _maybe("--method", ["gradcam", "gradcam++", "layercam", "eigencam", "gradcam,xgradcam"],
               ["nope", ""], hostile),
        _maybe("--top-k", ["1", "2", "5"], ["0", "6", "-1"], hostile),
        _maybe("--batch-size", ["1", "2", "5"], ["0", "x"], hostile),
        _maybe("--target", ["0", "4", "-1", "ant"], ["5", "zebra", "1.5"], hostile),
        _maybe("--alpha", ["0", "0.5", "1"], ["1.5", "nan", "-0.1"], hostile),
        _maybe("--size", ["32,32", "32"], ["0,0", "31,32", "nan,1", "100000,100000", "x"],
               hostile),
        _maybe("--std", ["1,1,1", "0.5", "0.2,0.3,0.4"], ["0,0,0", "nan", "1,2"], hostile),
        _maybe("--scale", ["0.5", "1e-3"], ["nan", "inf"], hostile),
        _maybe("--max-pixels", ["400", "1000", "64000000"], ["0", "-5"], hostile),
        _maybe("--colormap", ["jet", "viridis"], ["nope"], hostile),
        st.sampled_from([[], ["--save-npy"], ["--grid"], ["--save-npy", "--grid"]]),
    ).map(lambda parts: [a for part in parts for a in part])


OPTIONS = st.booleans().flatmap(_options)


def _option(args: list[str], flag: str, default: str) -> str:
    return args[args.index(flag) + 1] if flag in args else default


def _check_run(out: Path, inputs: dict[str, Crafted], folder: Path, code: int,
               args: list[str]) -> None:
    """The invariants of one ``run`` (see the module docstring)."""
    assert code in (0, 1, 2)
    if not (out / "report.json").exists():
        assert code != 0
        assert not out.exists() or not os.listdir(out), "files left without a report"
        return
    report = strict_json(out / "report.json")
    seen = [Path(i["path"]).name for i in report["images"]]
    seen += [Path(e["path"]).name for e in report["errors"]]
    assert sorted(seen) == sorted(inputs), "every input exactly once"
    assert set(os.listdir(out)) == listed_files(report), "report.json describes every file"
    max_pixels = int(_option(args, "--max-pixels", "64000000"))
    good = {n for n, c in inputs.items() if c.pixels is not None and c.pixels <= max_pixels}
    failed = {Path(e["path"]).name: e["error"] for e in report["errors"]}
    assert not good & set(failed), f"good images failed: {failed}"
    assert code == (1 if failed else 0)


@seed(SEED)
@FUZZ
@given(files=st.lists(crafted_file(), min_size=1, max_size=4), args=OPTIONS,
       where=st.sampled_from(["apart"] * 6 + ["the input folder", "inside the input"]))
def test_fuzz_run(model_path, files, args, where) -> None:
    note(f"fuzz seed {SEED} (ONNX_GRADCAM_FUZZ_SEED); options {args}; -o {where}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        inputs = _write(folder, files)
        before = digest(folder), model_path.read_bytes()
        out = {"apart": Path(tmp) / "out", "the input folder": folder,
               "inside the input": folder / "out"}[where]
        result = cli("run", model_path, folder, "-o", out, "-q", *args)
        note(result.stderr)
        event(f"exit {result.returncode}, report {(out / 'report.json').exists()}")
        assert "Traceback" not in result.stderr
        assert (digest(folder), model_path.read_bytes()) == before, "an input changed"
        if where != "apart":
            assert result.returncode in (1, 2) and sorted(os.listdir(folder)) == sorted(inputs)
            return
        _check_run(out, inputs, folder, result.returncode, args)
        if result.returncode in (0, 1) and (out / "report.json").exists():
            again = cli("run", model_path, folder, "-o", out, "-q", *args)
            assert again.returncode == 1 and "--overwrite" in again.stderr
            rerun = cli("run", model_path, folder, "-o", out, "-q", "--overwrite", *args)
            _check_run(out, inputs, folder, rerun.returncode, args)


@seed(SEED)
@settings(FUZZ, max_examples=25)
@given(files=st.lists(crafted_file(), min_size=1, max_size=3),
       masks=st.lists(crafted_file(), max_size=3),
       max_pixels=st.sampled_from(["1000", "64000000"]))
def test_fuzz_evaluate(model_path, files, masks, max_pixels) -> None:
    note(f"fuzz seed {SEED} (ONNX_GRADCAM_FUZZ_SEED)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        inputs = _write(folder, files)
        mask_folder = Path(tmp) / "masks"
        _write(mask_folder, masks)
        before = digest(Path(tmp))
        result = cli("evaluate", model_path, folder, "--masks", mask_folder, "--steps", "2",
                     "-q", "--json", Path(tmp) / "e.json", "--max-pixels", max_pixels)
        note(result.stderr)
        assert result.returncode in (0, 1) and "Traceback" not in result.stderr
        after = digest(Path(tmp))
        after.pop("e.json", None)
        assert after == before, "an input changed"
        if not (Path(tmp) / "e.json").exists():  # refused as a whole: one line, no output
            assert result.returncode == 1 and result.stderr.count("error: ") == 1
            return
        report = strict_json(Path(tmp) / "e.json")
        errors = {Path(e["path"]).name for e in report["errors"]}
        good = {n for n, c in inputs.items() if c.pixels is not None
                and c.pixels <= int(max_pixels)}
        assert not good & errors
        counted = report["metrics"]["gradcam"]["images"] if report["metrics"] else 0
        assert counted + len(errors) == len(inputs)
        if report["metrics"]:
            problems = {Path(p["path"]).name for p in report["mask_problems"]}
            row = report["metrics"]["gradcam"]
            assert row["pointing_images"] + len(problems) == counted


@seed(SEED)
@settings(FUZZ, max_examples=3)
@given(files=st.lists(crafted_file(), min_size=2, max_size=4))
def test_fuzz_real_command_never_prints_a_traceback(model_path, files) -> None:
    note(f"fuzz seed {SEED} (ONNX_GRADCAM_FUZZ_SEED)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        inputs = _write(folder, files)
        before = digest(folder)
        out = Path(tmp) / "out"
        proc = subprocess_cli("run", model_path, folder, "-o", out, "--top-k", "2",
                              "--save-npy")
        note(proc.stderr)
        assert "Traceback" not in proc.stderr
        assert digest(folder) == before
        _check_run(out, inputs, folder, proc.returncode, [])
        json.loads((out / "report.json").read_text())
