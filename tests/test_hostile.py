"""Nothing lost, nothing silently wrong: the CLI and the API under hostile and careless input.

One test per case of issue #14, through the CLI (in-process through its one error boundary,
``main``, and a few real subprocesses) and through the API where it applies.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

import onnx_gradcam as og
from onnx_gradcam.cli import main
from onnx_gradcam.errors import OnnxGradCamError
from onnx_gradcam.images import OVERLAY_MAX_PIXELS
from onnx_gradcam.metadata import metadata_props, write_metadata
from tests.models import small_cnn

LABELS = ["ant", "bee", "cat", "dog", "eel"]


# ---- helpers ---------------------------------------------------------------------------------
class Result:
    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = code, stdout, stderr

    @property
    def lines(self) -> list[str]:
        return self.stderr.strip().splitlines()


def cli(*args: object) -> Result:
    """The ``onnx-gradcam`` command in this process, through its error boundary ``main``."""
    out, err = io.StringIO(), io.StringIO()
    code, argv = 0, sys.argv
    sys.argv = ["onnx-gradcam", *map(str, args)]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = argv
    return Result(code, out.getvalue(), err.getvalue())


def subprocess_cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnx_gradcam", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def one_error(result: Result | subprocess.CompletedProcess, *words: str) -> str:
    """The command failed with exactly one ``error:`` line holding ``words`` and no traceback
    (its summary line may precede it); return the line."""
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def strict_json(path: Path) -> dict:
    """Parse JSON as strict parsers do: NaN and Infinity are not JSON."""

    def refuse(token: str) -> None:
        raise ValueError(f"{path}: bare {token} in JSON")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def png_header(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` × ``height`` pixels (the data is 10 bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2,
                                                                  0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b""))


def write_image(path: Path, height: int, width: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    cv2.imwrite(str(path), rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    return path


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def labelled_cnn() -> onnx.ModelProto:
    """small_cnn at 32 × 32 with a softmax output and five labels in its metadata."""
    model = small_cnn(size=32, softmax=True)
    write_metadata(model, metadata_props(labels=LABELS))
    return model


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return save(labelled_cnn(), tmp_path_factory.mktemp("model") / "small.onnx")


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    write_image(folder / "a.png", 40, 50, seed=1)
    write_image(folder / "b.jpg", 30, 30, seed=2)
    return folder


def report_of(out: Path) -> dict:
    return strict_json(out / "report.json")


def explained(out: Path) -> set[str]:
    return {Path(i["path"]).name for i in report_of(out)["images"]}


def listed_files(report: dict) -> set[str]:
    names = {"report.json"}
    for item in report["images"]:
        names |= {Path(e[k]).name for e in item["explanations"] for k in ("overlay", "npy")
                  if k in e}
        if "grid" in item:
            names.add(Path(item["grid"]).name)
    for key in ("contact_sheet", "results"):  # results: the rows' folder
        if key in report:
            names.add(Path(report[key]).name)
    return names


# ---- data lost or overwritten ----------------------------------------------------------------
def test_output_folder_equal_to_the_input_folder_is_refused(model_path, images):
    before = digest(images)
    line = one_error(cli("run", model_path, images, "-o", images, "-q"), "input folder")
    assert "-o" in line
    assert digest(images) == before and sorted(os.listdir(images)) == ["a.png", "b.jpg"]


def test_output_folder_inside_an_input_folder_is_refused(model_path, images):
    one_error(cli("run", model_path, images, "-o", images / "out", "-q"),
              "inside the input folder")
    assert not (images / "out").exists()


def test_output_folder_holding_an_input_file_is_refused(model_path, images):
    before = digest(images)
    one_error(cli("run", model_path, images / "a.png", "-o", images, "-q"), "holds the input")
    assert digest(images) == before


def test_export_refuses_to_overwrite_its_source(model_path, tmp_path):
    source = tmp_path / "self.onnx"
    source.write_bytes(model_path.read_bytes())
    before = source.read_bytes()
    one_error(cli("export", source, "-o", source), "which this command reads")
    one_error(cli("export", source, "-o", tmp_path / "." / "self.onnx"), "command reads")
    served = tmp_path / "repo" / "x" / "1" / "model.onnx"  # a Triton entry's own model
    served.parent.mkdir(parents=True)
    served.write_bytes(before)
    one_error(cli("export", served, "--triton", tmp_path / "repo", "--triton-name", "x"),
              "--triton", "command reads")
    assert served.read_bytes() == before and not (served.parents[1] / "config.pbtxt").exists()
    with pytest.raises(OnnxGradCamError, match="command reads"):
        og.Explainer(source).export(source)
    assert source.read_bytes() == before


def test_evaluate_json_and_convert_never_overwrite_an_input(model_path, images, tmp_path):
    before = digest(images), model_path.read_bytes()
    one_error(cli("evaluate", model_path, images, "--json", images / "a.png"), "command reads")
    one_error(cli("evaluate", model_path, images, "--json", model_path), "command reads")
    one_error(cli("evaluate", model_path, images, "--json", images), "is a folder")
    pytest.importorskip("onnx_gradcam.converters")
    one_error(cli("convert", model_path, "-o", model_path), "command reads")
    assert (digest(images), model_path.read_bytes()) == before


def test_export_refuses_to_overwrite_the_models_external_data(tmp_path):
    folder = tmp_path / "ext"
    folder.mkdir()
    onnx.save(small_cnn(size=32), folder / "m.onnx", save_as_external_data=True,
              all_tensors_to_one_file=True, location="w.bin", size_threshold=0)
    before = (folder / "w.bin").read_bytes()
    one_error(cli("export", folder / "m.onnx", "-o", folder / "w.bin"), "w.bin")
    assert (folder / "w.bin").read_bytes() == before


def test_a_model_not_named_onnx_is_told_from_images_by_content(model_path, images, tmp_path):
    model = tmp_path / "m" / "model.bin"
    model.parent.mkdir()
    model.write_bytes(model_path.read_bytes())
    out = tmp_path / "out"
    result = cli("run", model, images, "-o", out)
    assert result.returncode == 0, result.stderr
    report = report_of(out)
    assert report["model"] == str(model) and report["demo_model"] is False
    assert explained(out) == {"a.png", "b.jpg"}  # the model is not taken for an image
    assert "demo model" not in result.stderr


def test_without_a_model_the_demo_model_runs_and_says_so(images, tmp_path):
    out = tmp_path / "out"
    result = cli("run", images, "-o", out)
    assert result.returncode == 0, result.stderr
    assert report_of(out)["demo_model"] is True
    assert "no model given: using the bundled demo model" in " ".join(result.stderr.split())


def test_a_file_neither_model_nor_image_is_refused(images, tmp_path):
    junk = tmp_path / "model.bin"
    junk.write_bytes(b"\x01\x02 not a model")
    one_error(cli("run", junk, images, "-o", tmp_path / "out"), "not an ONNX model")
    assert not (tmp_path / "out").exists()


def test_second_run_into_a_used_folder_needs_overwrite(model_path, images, tmp_path):
    out = tmp_path / "out"
    assert cli("run", model_path, images, "-o", out, "--top-k", "2", "--save-npy").returncode == 0
    (out / "notes.txt").write_text("mine")
    before = digest(out)
    one_error(cli("run", model_path, images, "-o", out), "--overwrite", "previous run")
    assert digest(out) == before  # refused before anything was touched
    result = cli("run", model_path, images / "a.png", "-o", out, "--overwrite")
    assert result.returncode == 0, result.stderr
    report = report_of(out)
    assert explained(out) == {"a.png"}
    # report.json describes every file in the folder; the user's file is kept
    assert set(os.listdir(out)) == listed_files(report) | {"notes.txt"}
    assert (out / "notes.txt").read_text() == "mine"


def test_overwrite_never_removes_a_file_the_run_did_not_write(model_path, images, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.png").write_bytes(b"user data")
    (out / "report.json").write_text(json.dumps({"images": [{"explanations": [
        {"overlay": str(out / "precious.png")}, {"overlay": "/etc/hostname"}]}]}))
    result = cli("run", model_path, images, "-o", out, "--overwrite")
    assert result.returncode == 0, result.stderr
    # the forged report listed precious.png; --overwrite removes only what the report lists,
    # so precious.png goes, but nothing outside the folder is touched
    assert Path("/etc/hostname").exists()
    garbage = out / "report.json"
    garbage.write_text("not json")
    one_error(cli("run", model_path, images, "-o", out, "--overwrite"), "not a report")


def test_output_names_never_replace_a_file_already_in_the_folder(model_path, images, tmp_path):
    first = tmp_path / "first"
    assert cli("run", model_path, images / "a.png", "-o", first).returncode == 0
    name = Path(report_of(first)["images"][0]["explanations"][0]["overlay"]).name
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_bytes(b"user data")
    assert cli("run", model_path, images / "a.png", "-o", out).returncode == 0
    assert (out / name).read_bytes() == b"user data"
    assert Path(report_of(out)["images"][0]["explanations"][0]["overlay"]).name != name


# ---- one input stops the whole batch ---------------------------------------------------------
@pytest.mark.parametrize("command", ["run", "evaluate"])
def test_a_png_header_claiming_60000_squared_pixels_is_an_error_row(model_path, images,
                                                                     tmp_path, command):
    (images / "bomb.png").write_bytes(png_header(60000, 60000))
    assert len((images / "bomb.png").read_bytes()) < 80
    if command == "run":
        result = cli("run", model_path, images, "-o", tmp_path / "out", "-q")
        report = report_of(tmp_path / "out")
    else:
        result = cli("evaluate", model_path, images, "--steps", "2", "-q",
                     "--json", tmp_path / "eval.json")
        report = strict_json(tmp_path / "eval.json")
        assert report["metrics"]["gradcam"]["images"] == 2
    one_error(result, "bomb.png", "3600000000 pixels", "pixel budget", "--max-pixels")
    assert [Path(e["path"]).name for e in report["errors"]] == ["bomb.png"]
    if command == "run":
        assert explained(tmp_path / "out") == {"a.png", "b.jpg"}


def test_a_complete_image_over_max_pixels_is_an_error_row(model_path, images, tmp_path):
    write_image(images / "big.png", 60, 60)
    result = cli("run", model_path, images, "-o", tmp_path / "out", "--max-pixels", "2500")
    one_error(result, "big.png", "60 × 60", "2500")
    assert explained(tmp_path / "out") == {"a.png", "b.jpg"}
    assert "64000000" in " ".join(cli("run", "--help").stdout.split())  # the default, stated


def test_a_large_image_within_budget_gets_a_bounded_overlay(model_path, tmp_path):
    big = write_image(tmp_path / "big.jpg", 2000, 2600)
    out = tmp_path / "out"
    assert cli("run", model_path, big, "-o", out, "--save-npy").returncode == 0
    item = report_of(out)["images"][0]
    assert (item["width"], item["height"]) == (2600, 2000)  # the original's size
    picture = cv2.imread(item["explanations"][0]["overlay"])
    assert picture.shape[0] * picture.shape[1] <= OVERLAY_MAX_PIXELS
    assert abs(picture.shape[1] / picture.shape[0] - 2600 / 2000) < 0.01
    assert np.load(item["explanations"][0]["npy"]).shape == (32, 32)


@pytest.mark.parametrize("stem", ["a" * 250, "ü" * 125, "a" * 200 + "ü" * 25])
def test_long_file_names_get_output_names_that_fit(model_path, tmp_path, stem):
    folder = tmp_path / "in"
    folder.mkdir()
    good = write_image(folder / "first.png", 20, 20)
    long = write_image(folder / f"{stem}.png", 20, 20)
    assert len(os.fsencode(long.name)) <= 255
    out = tmp_path / "out"
    result = cli("run", model_path, folder, "-o", out, "--top-k", "2", "--save-npy", "--grid")
    assert result.returncode == 0, result.stderr
    assert explained(out) == {good.name, long.name}
    names = set(os.listdir(out))
    assert all(len(os.fsencode(n)) <= 255 for n in names)
    assert names == listed_files(report_of(out))
    again = tmp_path / "again"
    assert cli("run", model_path, folder, "-o", again, "--top-k", "2", "--save-npy",
               "--grid").returncode == 0
    assert set(os.listdir(again)) == names  # the shortened names are stable


def test_evaluate_lists_missing_undecodable_and_mis_sized_masks(model_path, tmp_path):
    images = tmp_path / "images"
    masks = tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for i in range(7):
        write_image(images / f"{i}.png", 40, 50, seed=i)
    square = np.zeros((40, 50), np.uint8)
    square[10:30, 10:40] = 255
    cv2.imwrite(str(masks / "0.png"), square)
    cv2.imwrite(str(masks / "1.png"), square)
    (masks / "2.png").write_bytes(b"not a mask")
    cv2.imwrite(str(masks / "3.png"), cv2.resize(square, (25, 20)))
    result = cli("evaluate", model_path, images, "--masks", masks, "--steps", "2",
                 "--json", tmp_path / "eval.json")
    assert result.returncode == 1
    report = strict_json(tmp_path / "eval.json")
    row = report["metrics"]["gradcam"]
    assert row["images"] == 7 and row["pointing_images"] == 2
    problems = {Path(p["path"]).name: p["problem"] for p in report["mask_problems"]}
    assert set(problems) == {"2.png", "3.png", "4.png", "5.png", "6.png"}
    assert "cannot decode" in problems["2.png"]
    assert "25 × 20" in problems["3.png"] and "50 × 40" in problems["3.png"]
    assert "no mask" in problems["4.png"]
    assert "(2/7" in result.stdout  # the table says over how many
    errors = [ln for ln in result.lines if ln.startswith("error: ")]
    assert len(errors) == 5 and "Traceback" not in result.stderr


# ---- silently wrong results ------------------------------------------------------------------
def _with_weight(model: onnx.ModelProto, name: str, change) -> onnx.ModelProto:
    for init in model.graph.initializer:
        if init.name == name:
            array = change(onnx.numpy_helper.to_array(init).copy())
            init.CopyFrom(onnx.numpy_helper.from_array(array.astype(np.float32), name))
    return model


def test_a_nan_weight_makes_every_image_an_error_row(images, tmp_path):
    def poison(w):
        w[0, 0, 0, 0] = np.nan
        return w

    model = save(_with_weight(small_cnn(size=32), "w1", poison), tmp_path / "nan.onnx")
    out = tmp_path / "out"
    result = cli("run", model, images, "-o", out, "-q")
    assert result.returncode == 1
    report = report_of(out)  # strict JSON: no bare NaN
    assert report["images"] == []
    assert len(report["errors"]) == 2
    for error in report["errors"]:
        assert "non-finite score for class" in error["error"]
        assert "check the model's weights or --std" in error["error"]
    with pytest.raises(OnnxGradCamError, match="non-finite score"):
        og.Explainer(model).explain_images([images / "a.png"])


def test_an_overflowing_image_fails_alone(tmp_path):
    """A huge first-layer weight: a black image stays finite, a white one overflows."""
    model = save(_with_weight(small_cnn(size=32), "w1", lambda w: np.full_like(w, 1e37)),
                 tmp_path / "overflow.onnx")
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "black.png"), np.zeros((32, 32, 3), np.uint8))
    cv2.imwrite(str(folder / "white.png"), np.full((32, 32, 3), 255, np.uint8))
    out = tmp_path / "out"
    result = cli("run", model, folder, "-o", out, "--batch-size", "2", "-q")
    one_error(result, "white.png", "non-finite")
    assert explained(out) == {"black.png"}


@pytest.mark.parametrize("flags, words", [
    (["--std", "0,0,0"], ["--std", "0"]),
    (["--std", "1,nan,1"], ["--std", "finite"]),
    (["--scale", "nan"], ["--scale", "finite"]),
    (["--mean", "inf"], ["--mean", "finite"]),
])
def test_non_finite_preprocessing_flags_are_refused(model_path, images, tmp_path, flags, words):
    one_error(cli("run", model_path, images, "-o", tmp_path / "out", *flags), *words)
    assert not (tmp_path / "out").exists()


def test_the_api_refuses_a_nan_pixel_and_zero_std(model_path):
    ex = og.Explainer(model_path)
    x = np.zeros((2, 3, 32, 32), np.float32)
    x[1, 0, 5, 5] = np.nan
    with pytest.raises(OnnxGradCamError, match=r"input 1 holds non-finite values"):
        ex.explain(x)
    with pytest.raises(OnnxGradCamError, match="non-finite"):
        ex.explain_many(x, top_k=2)
    rgb = np.zeros((20, 20, 3), np.float32)
    rgb[3, 3] = np.inf
    with pytest.raises(OnnxGradCamError, match="non-finite pixel"):
        ex.explain_images([rgb])
    with pytest.raises(OnnxGradCamError, match="non-finite"):
        ex.explain_images([np.zeros((20, 20, 3), np.uint8)], preprocessing=og.Preprocessing(
            size=(32, 32), std=(0.0, 0.0, 0.0)))


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.int32, bool])
def test_the_api_refuses_integer_arrays_instead_of_casting_them(model_path, dtype):
    ex = og.Explainer(model_path)
    x = np.ones((1, 3, 32, 32), dtype)
    with pytest.raises(OnnxGradCamError, match=f"dtype {np.dtype(dtype)}.*explain_images"):
        ex.explain(x)
    with pytest.raises(OnnxGradCamError, match="dtype"):
        ex.explain_many(x, top_k=2)


@pytest.mark.parametrize("targets", [1.7, 2.0, [1, 2.5], np.array([0.5]), "1", True])
def test_the_api_refuses_non_integer_targets(model_path, targets):
    ex = og.Explainer(model_path)
    x = np.zeros((2, 3, 32, 32), np.float32)
    with pytest.raises(OnnxGradCamError, match="targets must be class indices"):
        ex.explain(x, targets)
    with pytest.raises(OnnxGradCamError, match="targets must be class indices"):
        ex.explain_many(x, targets=np.array([[targets] * 2] * 2, dtype=object)
                        if not isinstance(targets, (list, np.ndarray)) else targets)
    assert ex.explain(x, np.int64(1)).targets.tolist() == [1, 1]  # integers still work


# ---- resources -------------------------------------------------------------------------------
@pytest.mark.parametrize("size, words", [
    ("100000,100000", ["fixed at 32,32", "--size"]),
    ("0,0", ["--size", "≥ 1"]),
    ("-3,5", ["--size"]),
    ("2.5,3", ["--size", "whole numbers"]),
])
def test_bad_sizes_are_one_line(model_path, images, tmp_path, size, words):
    one_error(cli("run", model_path, images, "-o", tmp_path / "out", "--size", size), *words)


def test_size_over_the_pixel_budget_on_a_symbolic_model(images, tmp_path):
    model = small_cnn(size=32)
    for dim in model.graph.input[0].type.tensor_type.shape.dim[2:]:
        dim.dim_param = "S"
    path = save(model, tmp_path / "symbolic.onnx")
    one_error(cli("run", path, images, "-o", tmp_path / "out", "--size", "100000,100000"),
              "pixel budget")


# ---- tracebacks where one line belongs -------------------------------------------------------
def _opset(version: int, folder: Path) -> Path:
    model = small_cnn(size=32)
    model.opset_import[0].version = version
    return save(model, folder / f"opset{version}.onnx")


@pytest.mark.parametrize("version", [30, 27])
def test_an_unsupported_opset_is_one_line_everywhere(images, tmp_path, version):
    model = _opset(version, tmp_path)
    one_error(cli("run", model, images, "-o", tmp_path / "out"), f"opset {version}")
    one_error(cli("inspect", model), f"opset {version}")
    one_error(cli("export", model, "-o", tmp_path / "e.onnx"), f"opset {version}")
    one_error(cli("evaluate", model, images), f"opset {version}")


def test_an_unwritable_output_folder_is_one_line(model_path, images, tmp_path):
    if os.geteuid() == 0:  # root writes through file modes; sysfs refuses even root
        out = Path("/sys/onnx-gradcam-test-out")
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        out = locked / "out"
    one_error(cli("run", model_path, images, "-o", out), str(out.parent))
    one_error(subprocess_cli("run", model_path, images, "-o", out, "-q"), str(out.parent))


def test_export_to_a_folder_is_one_line(model_path, tmp_path):
    one_error(cli("export", model_path, "-o", tmp_path), "is a folder", "explain.onnx")


def test_the_api_refuses_an_empty_batch(model_path):
    ex = og.Explainer(model_path)
    with pytest.raises(OnnxGradCamError, match="empty batch"):
        ex.explain(np.zeros((0, 3, 32, 32), np.float32))
    with pytest.raises(OnnxGradCamError, match="empty batch"):
        ex.explain_many(np.zeros((0, 3, 32, 32), np.float32), top_k=2)
    with pytest.raises(OnnxGradCamError, match="no images"):
        ex.explain_images([])


def test_top_k_past_the_classes_names_the_number_of_classes(model_path, images, tmp_path):
    ex = og.Explainer(model_path)
    with pytest.raises(OnnxGradCamError, match="top_k 99 is more than the model's 5 classes"):
        ex.explain_many(np.zeros((1, 3, 32, 32), np.float32), top_k=99)
    one_error(cli("run", model_path, images, "-o", tmp_path / "out", "--top-k", "99"),
              "--top-k 99", "5 classes")


def _external(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    onnx.save(small_cnn(size=32), folder / "m.onnx", save_as_external_data=True,
              all_tensors_to_one_file=True, location="w.bin", size_threshold=0)
    return folder


def test_external_data_outside_the_folder_gives_onnxs_reason(images, tmp_path):
    folder = _external(tmp_path)
    (folder / "w.bin").rename(tmp_path / "w.bin")
    proto = onnx.load(folder / "m.onnx", load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../w.bin"
    onnx.save(proto, folder / "m.onnx")
    line = one_error(cli("run", folder / "m.onnx", images, "-o", tmp_path / "out"),
                     "points outside the directory")
    assert "convert it first" not in line
    with pytest.raises(OnnxGradCamError, match="points outside the directory"):
        og.Explainer(folder / "m.onnx")


def test_external_data_through_a_symlink_gives_onnxs_reason(images, tmp_path):
    folder = _external(tmp_path)
    (folder / "w.bin").rename(tmp_path / "w.bin")
    (folder / "w.bin").symlink_to(tmp_path / "w.bin")
    one_error(cli("inspect", folder / "m.onnx"), "symbolic link")


# ---- what already held, and must keep holding ------------------------------------------------
def test_a_symlink_at_an_output_name_is_replaced_not_followed(model_path, images, tmp_path):
    first = tmp_path / "first"
    assert cli("run", model_path, images / "a.png", "-o", first).returncode == 0
    name = Path(report_of(first)["images"][0]["explanations"][0]["overlay"]).name
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    (out / name).symlink_to(victim)
    assert cli("run", model_path, images / "a.png", "-o", out).returncode == 0
    assert victim.read_text() == "keep me"
    assert not (out / name).is_symlink() and cv2.imread(str(out / name)) is not None
    assert not [p for p in os.listdir(out) if p.startswith(".")]  # no temporary files


def test_an_interrupted_run_leaves_complete_listed_files(model_path, tmp_path, monkeypatch):
    """Ctrl-C in the middle of a run: only complete files, each listed in report.json (marked
    interrupted), so --overwrite can clear them."""
    from onnx_gradcam import runner

    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(4):
        write_image(folder / f"{i}.png", 20, 20, seed=i)
    calls = []
    real = runner.save_image

    def interrupted(path, rgb):
        calls.append(path)
        if len(calls) == 4:  # image 1's second overlay (two per image with --top-k 2)
            raise KeyboardInterrupt
        real(path, rgb)

    monkeypatch.setattr(runner, "save_image", interrupted)
    out = tmp_path / "out"
    assert cli("run", model_path, folder, "-o", out, "--top-k", "2", "--batch-size",
               "1").returncode == 130
    report = report_of(out)
    assert "KeyboardInterrupt" in report["interrupted"]
    assert explained(out) == {"0.png"}
    assert set(os.listdir(out)) == listed_files(report)  # image 1's first overlay removed
    monkeypatch.setattr(runner, "save_image", real)
    assert cli("run", model_path, folder, "-o", out, "--overwrite").returncode == 0
    assert set(os.listdir(out)) == listed_files(report_of(out))
    assert explained(out) == {"0.png", "1.png", "2.png", "3.png"}


def test_a_symlink_to_a_secret_named_like_an_image_leaks_nothing(model_path, images, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:TOPSECRET\n")
    (images / "x.png").symlink_to(secret)
    result = cli("run", model_path, images, "-o", tmp_path / "out")
    one_error(result, "x.png", "cannot decode")
    assert "TOPSECRET" not in result.stderr + (tmp_path / "out" / "report.json").read_text()


def test_label_text_is_sanitised_in_file_names(images, tmp_path):
    model = small_cnn(size=32)
    write_metadata(model, metadata_props(labels=["../../evil", "a/b", "c", "d", "e"]))
    path = save(model, tmp_path / "m.onnx")
    out = tmp_path / "out"
    assert cli("run", path, images, "-o", out, "--top-k", "5").returncode == 0
    assert set(os.listdir(out)) == listed_files(report_of(out))
    assert not list(tmp_path.glob("evil*")) and not (tmp_path.parent / "evil").exists()


def test_no_traceback_reaches_stderr_of_the_real_command(model_path, images, tmp_path):
    (images / "bomb.png").write_bytes(png_header(60000, 60000))
    (images / f"{'n' * 250}.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "out"
    proc = subprocess_cli("run", model_path, images, "-o", out, "--top-k", "2", "--save-npy")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 2, proc.stderr
    assert explained(out) == {"a.png", "b.jpg"}
    again = subprocess_cli("run", model_path, images, "-o", out)
    one_error(again, "--overwrite")
