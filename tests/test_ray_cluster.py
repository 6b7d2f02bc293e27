"""``run --engine ray`` on a two-node Ray cluster this module starts (a head and a worker node,
one CPU each, in this process's machine): a node lost mid-run loses no row and repeats none.

Its own module: a process holds one Ray connection, and tests/test_ray.py holds another."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import pytest

from models.scenes import make_dataset
from onnx_gradcam.results import Ledger
from tests.test_hostile import cli
from tests.test_ray import DEMO, _explain_actors

ray = pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")
N = 48


@pytest.fixture()
def two_nodes():
    from ray.cluster_utils import Cluster

    memory = 150 * 2**20
    cluster = Cluster(initialize_head=True, head_node_args=dict(
        num_cpus=1, include_dashboard=False, object_store_memory=memory))
    worker = cluster.add_node(num_cpus=1, object_store_memory=memory)
    cluster.wait_for_nodes()
    yield cluster, worker
    cluster.shutdown()


def _actors_on(node) -> list[int]:
    """Pids of the explaining actors a node runs (its raylet's children)."""
    return _explain_actors(node.all_processes["raylet"][0].process.pid)


def test_a_lost_node_still_yields_every_row_once(two_nodes, tmp_path, monkeypatch):
    """Two explaining actors of one CPU each on two one-CPU nodes: one per node. Once the
    first part has landed and the worker node's actor is up, that node is removed (its
    raylet, actor and objects gone): Ray retries the lost actor's batches on the head's
    actor and rebuilds the lost decoded blocks from lineage (Ray Data's actor pools default
    to ``max_restarts=-1``, ``max_task_retries=-1``; with ``max_restarts=0`` this test fails
    with ActorDiedError), and every image has exactly one row."""
    cluster, worker = two_nodes
    folder = tmp_path / "in"
    folder.mkdir()
    images, _, _ = make_dataset(N, seed=18, size=48)
    for i, rgb in enumerate(images):
        cv2.imwrite(str(folder / f"s{i:02d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    real, removed = Ledger.write, {}

    def write(self, rows):
        real(self, rows)
        if rows and not removed:
            deadline = time.monotonic() + 120  # the worker node's actor holds its CPU
            while not (actors := _actors_on(worker)) and time.monotonic() < deadline:
                time.sleep(0.05)
            removed["actors"] = actors
            cluster.remove_node(worker)

    monkeypatch.setattr(Ledger, "write", write)
    out = tmp_path / "out"
    result = cli("run", DEMO, folder, "-o", out, "--batch-size", "2", "--engine", "ray",
                 "--ray-address", cluster.address, "--workers", "2", "--quiet")
    assert result.returncode == 0, result.stderr
    assert removed["actors"], "no actor started on the worker node"
    assert not set(removed["actors"]) & set(_explain_actors()), "its actor outlived the node"
    rows = pq.read_table(out / "results").to_pylist()
    assert sorted(Path(r["path"]).name for r in rows) == [f"s{i:02d}.png" for i in range(N)]
    assert all(r["error"] is None for r in rows)
