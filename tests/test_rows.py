"""``run``'s rows (OUT/results, Parquet): schema, one row per explanation, and ``--resume``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from onnx_gradcam.results import COLUMNS, cam_array
from tests.test_hostile import (
    cli,
    explained,
    labelled_cnn,
    listed_files,
    report_of,
    save,
    write_image,
)

pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return save(labelled_cnn(), tmp_path_factory.mktemp("model") / "small.onnx")


@pytest.fixture
def folder(tmp_path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(6):
        write_image(folder / f"{i}.png", 20 + i, 24, seed=i)
    (folder / "bad.png").write_bytes(b"not an image")
    return folder


def rows(out: Path) -> list[dict]:
    return pq.read_table(out / "results").to_pylist()  # the folder reads as one table


def key(row: dict) -> tuple:
    return (row["path"], row["method"] or "", row["rank"] or 0)


def test_parquet_has_one_row_per_explanation_with_the_documented_schema(model_path, folder,
                                                                         tmp_path):
    out = tmp_path / "out"
    result = cli("run", model_path, folder, "-o", out, "--format", "parquet", "--top-k", "2",
                 "--method", "gradcam,gradcam++", "--save-npy")
    assert result.returncode == 1  # bad.png
    table = pq.read_table(out / "results")
    assert table.schema.names == [c for c, _ in COLUMNS]
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for column in table.schema.names:  # every column is documented
        assert f"`{column}`" in readme, column
    got = rows(out)
    good = [r for r in got if r["error"] is None]
    assert len(good) == 6 * 2 * 2 and len({key(r) for r in good}) == len(good)
    [bad] = [r for r in got if r["error"] is not None]
    assert bad["path"].endswith("bad.png") and bad["cam"] is None
    for row in good:
        cam = np.load(row["npy"])  # float32 .npy: the float16 column agrees to its precision
        assert np.allclose(cam_array(row), cam, atol=1e-3, rtol=1e-3)
        assert row["overlay"] is None  # parquet: the maps are in the rows, no pictures
        assert row["top"][0]["score"] >= row["top"][-1]["score"]
    report = report_of(out)
    assert len(report["images"]) == 6 and len(report["errors"]) == 1
    assert set(os.listdir(out)) == listed_files(report)


def test_resume_after_an_interruption_equals_a_clean_run(model_path, folder, tmp_path,
                                                         monkeypatch):
    from onnx_gradcam import runner

    clean = tmp_path / "clean"
    assert cli("run", model_path, folder, "-o", clean, "--top-k", "2", "--save-npy",
               "--batch-size", "2").returncode == 1
    real, calls = runner.save_image, []

    def interrupted(path, rgb):  # Ctrl-C in image 3's second overlay (two per image)
        calls.append(path)
        if len(calls) == 6:
            raise KeyboardInterrupt
        real(path, rgb)

    monkeypatch.setattr(runner, "save_image", interrupted)
    out = tmp_path / "out"
    assert cli("run", model_path, folder, "-o", out, "--top-k", "2", "--save-npy",
               "--batch-size", "2").returncode == 130
    assert explained(out) == {"0.png", "1.png"}  # chunk two (2.png, 3.png) never listed
    assert set(os.listdir(out)) == listed_files(report_of(out))  # its files are gone
    monkeypatch.setattr(runner, "save_image", real)
    refused = cli("run", model_path, folder, "-o", out)
    assert refused.returncode == 1 and "--resume" in refused.stderr
    other = cli("run", model_path, folder, "-o", out, "--top-k", "1", "--save-npy", "--resume")
    assert other.returncode == 1 and "other options than the run it continues" in other.stderr
    assert explained(out) == {"0.png", "1.png"}  # refused before anything was touched
    assert cli("run", model_path, folder, "-o", out, "--top-k", "2", "--save-npy",
               "--batch-size", "2", "--resume").returncode == 1
    report = report_of(out)
    assert report["explained_this_run"] == 4  # 0.png and 1.png were not explained again
    assert set(os.listdir(out)) == listed_files(report) == listed_files(report_of(clean))
    strip = [c for c, _ in COLUMNS if c not in ("path", "decode_ms", "explain_ms", "overlay",
                                                 "npy", "grid")]

    def table(run: Path) -> list[tuple]:
        return sorted((Path(r["path"]).name, Path(r["npy"] or "").name,
                       *(repr(r[c]) for c in strip)) for r in rows(run))

    assert table(out) == table(clean)  # no duplicate rows, none missing
    for row in rows(out):
        if row["npy"]:
            clean_npy = clean / Path(row["npy"]).name
            assert np.array_equal(np.load(row["npy"]), np.load(clean_npy))


def test_a_list_file_and_a_pattern_name_the_images(model_path, folder, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("# the first two, one relative, one absolute\n\nin/0.png\n"
                       f"{folder / '1.png'}\n")
    out = tmp_path / "out"
    assert cli("run", model_path, listing, folder / "[45].png", "-o", out).returncode == 0
    assert explained(out) == {"0.png", "1.png", "4.png", "5.png"}
    nothing = cli("run", model_path, folder / "*.jpg", "-o", tmp_path / "none")
    assert nothing.returncode == 1 and "matches no file" in nothing.stderr
    # a listed image's folder is an input folder too: inputs are never outputs
    refused = cli("run", model_path, listing, "-o", folder)
    assert refused.returncode == 1 and "holds the input" in refused.stderr


def test_a_parquet_of_image_bytes_is_read_in_place(model_path, folder, tmp_path):
    """Rows of a Parquet image column (binary, or Hugging Face's struct with ``bytes``) give
    the cams the same images give as files; a null or corrupt row is an error row."""
    import pyarrow as pa

    names = [f"{i}.png" for i in range(6)]
    blobs = [(folder / n).read_bytes() for n in names]
    table = pa.table({"img": blobs + [b"junk", None],
                      "hf": [{"bytes": b, "path": n} for b, n in zip(blobs, names)]
                      + [{"bytes": b"junk", "path": "x"}, None]})
    data = tmp_path / "data.parquet"
    pq.write_table(table, data, row_group_size=3)  # rows spread over three row groups
    files, stored = tmp_path / "files", tmp_path / "stored"
    assert cli("run", model_path, *[folder / n for n in names], "-o", files,
               "--save-npy").returncode == 0
    result = cli("run", model_path, data, "-o", stored, "--save-npy", "--image-column", "img")
    assert result.returncode == 1
    got = {r["path"]: r for r in rows(stored)}
    assert sorted(got) == sorted(f"{data}/img/{i}" for i in range(8))
    assert "cannot decode" in got[f"{data}/img/6"]["error"]
    assert "no image bytes" in got[f"{data}/img/7"]["error"]
    want = {Path(r["path"]).stem: r for r in rows(files)}
    for i in range(6):
        row, ref = got[f"{data}/img/{i}"], want[str(i)]
        assert (row["width"], row["height"], row["target"]) == (ref["width"], ref["height"],
                                                                ref["target"])
        assert np.array_equal(np.load(row["npy"]), np.load(ref["npy"]))
    hf = tmp_path / "hf"
    assert cli("run", model_path, data, "-o", hf, "--image-column", "hf").returncode == 1
    assert len(rows(hf)) == 8
    wrong = cli("run", model_path, data, "-o", tmp_path / "w", "--image-column", "nope")
    assert wrong.returncode == 1 and "candidates: img, hf" in wrong.stderr


def test_resume_after_a_killed_run_removes_its_half_written_files(model_path, folder, tmp_path,
                                                                  monkeypatch):
    """A killed process cleans nothing up: the files of its last chunk lie in OUT, listed in
    no part, and report.json is missing. --resume removes exactly those (the ledger named
    them before writing) and then equals a clean run."""
    from onnx_gradcam import runner

    clean = tmp_path / "clean"
    assert cli("run", model_path, folder, "-o", clean, "--save-npy",
               "--batch-size", "2").returncode == 1
    real, calls = runner.save_image, []

    def killed(path, rgb):  # dies in 3.png's overlay, after 2.png's files of that chunk
        calls.append(path)
        if len(calls) == 4:
            raise KeyboardInterrupt
        real(path, rgb)

    monkeypatch.setattr(runner, "save_image", killed)
    monkeypatch.setattr(runner.Sink, "abort", lambda self: None)  # SIGKILL: no clean-up
    out = tmp_path / "out"
    assert cli("run", model_path, folder, "-o", out, "--save-npy",
               "--batch-size", "2").returncode == 130
    (out / "report.json").unlink()
    monkeypatch.undo()
    listed = {Path(r[c]).name for r in rows(out) for c in ("overlay", "npy") if r[c]}
    orphans = {p.name for p in out.iterdir()} - listed - {"results"}
    assert len(orphans) >= 2 and all(n.startswith("2_") for n in orphans), orphans
    refused = cli("run", model_path, folder, "-o", out, "--save-npy", "--batch-size", "2")
    assert refused.returncode == 1 and "previous run" in refused.stderr  # rows, no report
    assert cli("run", model_path, folder, "-o", out, "--save-npy", "--batch-size", "2",
               "--resume").returncode == 1
    assert set(os.listdir(out)) == listed_files(report_of(out))
    assert sorted(os.listdir(out)) == sorted(os.listdir(clean))  # no 2_2_… names
