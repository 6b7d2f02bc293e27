"""``run --engine ray`` on a local Ray cluster this module starts (2 CPUs): the same rows and
.npy cams as the local engine, and a corrupt image is an error row, not a failed job."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from models.scenes import make_dataset
from onnx_gradcam.results import cam_array
from tests.test_hostile import cli, report_of

ray = pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")
DEMO = Path(__file__).resolve().parents[1] / "models" / "demo.onnx"
N = 48


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=300 * 2**20,
             log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("scenes")
    images, _, masks = make_dataset(N, seed=18)
    (folder / "masks").mkdir()
    for i, (rgb, mask) in enumerate(zip(images, masks)):
        cv2.imwrite(str(folder / f"s{i:02d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(folder / "masks" / f"s{i:02d}.png"), mask.astype(np.uint8) * 255)
    good = (folder / "s00.png").read_bytes()
    (folder / "corrupt.png").write_bytes(good[: len(good) // 3])
    return folder


def by_image(out: Path) -> dict[tuple, dict]:
    return {(Path(r["path"]).name, r["rank"]): r for r in pq.read_table(out / "results")
            .to_pylist()}


def test_ray_engine_equals_the_local_engine(cluster, scenes, tmp_path):
    local, remote = tmp_path / "local", tmp_path / "ray"
    common = ("--top-k", "2", "--save-npy", "--format", "parquet", "--batch-size", "8")
    assert cli("run", DEMO, scenes, "-o", local, *common).returncode == 1  # corrupt.png
    result = cli("run", DEMO, scenes, "-o", remote, *common, "--engine", "ray",
                 "--workers", "2")
    assert result.returncode == 1, result.stderr
    assert "corrupt.png" in result.stderr
    a, b = by_image(local), by_image(remote)
    assert a.keys() == b.keys() and len(a) == N * 2 + 1  # two targets each, one error row
    assert b[("corrupt.png", None)]["error"] == a[("corrupt.png", None)]["error"]
    for key, row in a.items():
        if row["error"]:
            continue
        other = b[key]
        assert other["target"] == row["target"] and other["top"] == row["top"]
        np.testing.assert_allclose(np.load(other["npy"]), np.load(row["npy"]), atol=1e-6,
                                   rtol=0)
        # float16 rows: within one float16 step near 1 (a 1e-7 difference may round either way)
        np.testing.assert_allclose(cam_array(other), cam_array(row), atol=2.0**-11, rtol=0)
        assert Path(other["npy"]).name == Path(row["npy"]).name
    report = report_of(remote)
    assert report["engine"] == "ray" and report_of(local)["engine"] == "local"
    assert len(report["images"]) == N and len(report["errors"]) == 1


def test_ray_engine_without_ray_says_so_in_one_line(scenes, tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    result = cli("run", DEMO, scenes, "-o", tmp_path / "out", "--engine", "ray")
    assert result.returncode == 1
    assert "onnx-gradcam[ray]" in result.stderr and "Traceback" not in result.stderr


def _parent(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return next((int(line.split()[1]) for line in status.splitlines()
                 if line.startswith("PPid:")), None)


def _explain_actors(raylet: int | None = None) -> list[int]:
    """Pids of the explaining actors (Ray titles their processes) of the Ray this process
    started: children of a raylet that is its child (another Ray on this machine, another
    test run's, is never counted), or of ``raylet``."""
    import os

    pids = []
    for entry in Path("/proc").iterdir():
        try:
            title = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if entry.name.isdigit() and b"MapBatches(_Explain)" in title:
            parent = _parent(int(entry.name))
            if parent is not None and (parent == raylet if raylet is not None
                                       else _parent(parent) == os.getpid()):
                pids.append(int(entry.name))
    return pids


def test_a_killed_actor_still_yields_every_row(cluster, scenes, tmp_path):
    """SIGKILL one explaining actor once the first rows landed: Ray replaces it and retries
    its batch; every image still has its rows, none twice."""
    import os
    import signal
    import threading
    import time

    out = tmp_path / "out"
    killed: list[int] = []

    def kill_one() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            pids = _explain_actors()
            if pids and list((out / "results").glob("part-*.parquet")):
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.05)

    thread = threading.Thread(target=kill_one, daemon=True)
    thread.start()
    result = cli("run", DEMO, scenes, "-o", out, "--save-npy", "--batch-size", "2",
                 "--engine", "ray", "--workers", "2")
    thread.join(timeout=1)
    assert killed, "the run ended before an actor could be killed"
    assert result.returncode == 1, result.stderr  # corrupt.png only
    rows = pq.read_table(out / "results").to_pylist()
    assert sorted(Path(r["path"]).name for r in rows) == sorted(
        [f"s{i:02d}.png" for i in range(N)] + ["corrupt.png"])
    assert all(Path(r["npy"]).is_file() for r in rows if not r["error"])


def test_evaluate_on_ray_equals_the_local_engine(cluster, scenes, tmp_path):
    import json

    common = ("--masks", scenes / "masks", "--steps", "5", "--method", "gradcam,gradcam++",
              "--batch-size", "8", "--quiet")
    local = cli("evaluate", DEMO, scenes, *common, "--json", tmp_path / "local.json")
    remote = cli("evaluate", DEMO, scenes, *common, "--json", tmp_path / "ray.json",
                 "--engine", "ray", "--workers", "2")
    assert local.returncode == remote.returncode == 1, remote.stderr  # corrupt.png
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("local", "ray"))
    assert a["errors"] == b["errors"] and len(a["errors"]) == 1
    assert a["metrics"].keys() == b["metrics"].keys() == {"gradcam", "gradcam++"}
    for method, row in a["metrics"].items():
        assert row["images"] == N and row["pointing_images"] == N
        for key, value in row.items():
            assert b["metrics"][method][key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_resume_on_ray_after_an_interruption_equals_a_clean_run(cluster, scenes, tmp_path,
                                                                monkeypatch):
    from onnx_gradcam.results import Ledger

    common = ("--save-npy", "--batch-size", "8", "--format", "parquet")
    clean = tmp_path / "clean"
    assert cli("run", DEMO, scenes, "-o", clean, *common).returncode == 1
    real, calls = Ledger.write, []

    def interrupted(self, rows):  # Ctrl-C while the third part is written
        calls.append(len(rows))
        if len(calls) == 3:
            raise KeyboardInterrupt
        real(self, rows)

    monkeypatch.setattr(Ledger, "write", interrupted)
    out = tmp_path / "out"
    ray_run = ("--engine", "ray", "--workers", "2")
    assert cli("run", DEMO, scenes, "-o", out, *common, *ray_run).returncode == 130
    monkeypatch.setattr(Ledger, "write", real)
    done = {r["path"] for r in pq.read_table(out / "results").to_pylist()}  # two parts
    good = {str(p) for p in scenes.glob("s*.png")}
    assert 0 < len(done & good) < N and len(report_of(out)["images"]) == len(done & good)
    assert cli("run", DEMO, scenes, "-o", out, *common, *ray_run, "--resume").returncode == 1
    assert report_of(out)["explained_this_run"] == len(good - done)  # none explained twice

    def table(run: Path) -> list[tuple]:
        return sorted((Path(r["path"]).name, Path(r["npy"] or "").name, r["target"],
                       r["error"]) for r in pq.read_table(run / "results").to_pylist())

    assert table(out) == table(clean)  # every row once
    assert sorted(p.name for p in out.glob("*.npy")) == sorted(p.name for p in
                                                              clean.glob("*.npy"))


def test_ray_draws_the_same_overlays_and_grids(cluster, scenes, tmp_path):
    listing = tmp_path / "some.txt"
    listing.write_text("\n".join(str(scenes / f"s{i:02d}.png") for i in range(12)))
    local, remote = tmp_path / "local", tmp_path / "ray"
    common = ("--format", "files", "--grid", "--batch-size", "4", "--quiet")
    assert cli("run", DEMO, listing, "-o", local, *common).returncode == 0
    result = cli("run", DEMO, listing, "-o", remote, *common, "--engine", "ray")
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in local.glob("*.png"))
    assert len(names) == 12 * 2 + 1  # overlay and grid per image, one contact sheet
    assert names == sorted(p.name for p in remote.glob("*.png"))
    for name in names:  # cams equal to 1e-6: a pixel may round one level the other way
        a, b = (cv2.imread(str(d / name)).astype(int) for d in (local, remote))
        assert a.shape == b.shape and np.abs(a - b).max() <= 1, name


@pytest.mark.parametrize("provider, gpus, want", [
    ("auto", 0.5, "cuda"), ("cuda", 0.25, "cuda"), ("auto", 0.0, "cpu"), ("cpu", 0.0, "cpu"),
])
def test_gpus_per_worker_reserve_gpus_and_build_cuda_explainers(cluster, scenes, monkeypatch,
                                                                 provider, gpus, want):
    """No GPU here: the actor stage Ray gets is captured (its ``num_gpus``), and the actor is
    built from it with a recording stand-in for the Explainer (its ``providers``)."""
    import onnx_gradcam as og
    import onnx_gradcam.explainer
    from onnx_gradcam.labels import Labels
    from onnx_gradcam.ray_engine import RayEngine
    from onnx_gradcam.runner import RunOptions

    class Captured(Exception):
        pass

    stages, real = [], ray.data.Dataset.map_batches

    def map_batches(self, fn, **kwargs):
        if isinstance(fn, type):  # the actor stage: record it and stop before any actor starts
            stages.append((fn, kwargs))
            raise Captured
        return real(self, fn, **kwargs)

    monkeypatch.setattr(ray.data.Dataset, "map_batches", map_batches)
    ex = og.Explainer(DEMO, providers="cpu")
    engine = RayEngine(DEMO, {"providers": provider, "batch_size": 4}, ["gradcam", "gradcam++"],
                       Labels(ex.model.metadata.labels, ex.model.metadata.label_offset),
                       RunOptions(Path("unused")), workers=2, gpus_per_worker=gpus)
    assert engine.provider == {"cuda": "CUDAExecutionProvider",
                               "cpu": "CPUExecutionProvider"}[want]
    with pytest.raises(Captured):
        engine(sorted(scenes.glob("s*.png")), ex.preprocessing(), 1, None, None, None)
    actor, stage = stages[0]
    assert stage["num_gpus"] == (gpus or None) and stage["num_cpus"] == 1  # 2 CPUs, 2 actors
    built = []
    monkeypatch.setattr(onnx_gradcam.explainer, "Explainer",
                        lambda model, **kwargs: built.append(kwargs))
    actor(**stage["fn_constructor_kwargs"])
    assert [(b["method"], b["providers"], b["threads"]) for b in built] == [
        ("gradcam", want, 1), ("gradcam++", want, 1)]


@pytest.mark.parametrize("flags, words", [
    (("--gpus-per-worker", "1", "--provider", "cpu"), "leaves idle"),
    (("--provider", "cuda"), "needs --gpus-per-worker"),
])
def test_contradicting_gpu_flags_are_refused_before_any_work(scenes, tmp_path, flags, words):
    from tests.test_hostile import one_error

    out = tmp_path / "out"
    one_error(cli("run", DEMO, scenes, "-o", out, "--engine", "ray", *flags), words)
    assert not out.exists()


class _Broken:
    """An actor whose every batch fails: Ray retries nothing (a user-code error) and gives up."""

    def __init__(self, threads: int, kwargs: dict):
        pass

    def __call__(self, batch: dict) -> dict:
        raise RuntimeError("a bug in the actor")


def test_ray_giving_up_is_one_error_line(cluster, scenes):
    import onnx_gradcam as og
    from onnx_gradcam.errors import OnnxGradCamError
    from onnx_gradcam.ray_engine import ray_records

    pre = og.Explainer(DEMO, providers="cpu").preprocessing()
    with pytest.raises(OnnxGradCamError) as err:
        list(ray_records(sorted(scenes.glob("s0*.png"))[:4], pre, 2**24, 4, _Broken,
                         {"kwargs": {"providers": "cpu"}}))
    message = str(err.value)
    assert "\n" not in message, message
    assert "RuntimeError: a bug in the actor" in message and "--resume" in message, message


@pytest.mark.parametrize("fixture, flag", [
    ("deeplabv3_legacy_opset17.onnx", "--segment"),
    ("embedding_legacy_opset17.onnx", "--similar-to")])
def test_target_flags_on_ray_equal_the_local_engine(cluster, scenes, tmp_path, fixture, flag):
    """``--segment`` (each image's predicted mask, an image without the class an error row)
    and ``--similar-to`` are built in the actors as in the local engine."""
    model = Path(__file__).parent / "fixtures" / "targets" / fixture
    value = "1" if flag == "--segment" else str(scenes / "s01.png")
    images = [str(p) for p in sorted(scenes.glob("s0*.png"))]
    local, remote = tmp_path / "local", tmp_path / "ray"
    common = (flag, value, "--save-npy", "--format", "parquet", "--batch-size", "4")
    a_run = cli("run", model, *images, "-o", local, *common)
    b_run = cli("run", model, *images, "-o", remote, *common, "--engine", "ray",
                "--workers", "2")
    assert b_run.returncode == a_run.returncode, b_run.stderr
    a, b = by_image(local), by_image(remote)
    assert a.keys() == b.keys() and len(a) == len(images)
    assert sum(1 for r in a.values() if not r["error"]) >= 2  # something was explained
    for key, row in a.items():
        assert b[key]["error"] == row["error"] and b[key]["target_kind"] == row["target_kind"]
        if not row["error"]:
            assert b[key]["score"] == pytest.approx(row["score"], rel=1e-6)
            np.testing.assert_allclose(np.load(b[key]["npy"]), np.load(row["npy"]), atol=1e-6,
                                       rtol=0)
