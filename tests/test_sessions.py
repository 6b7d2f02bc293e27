"""The graph cache: shared between explainers of one model, bounded, and keyed by what a graph
computes (the model's bytes and the GraphSpec), so a different model never gets another's graph."""

from __future__ import annotations

import numpy as np

import onnx_gradcam as og
from onnx_gradcam import sessions
from onnx_gradcam.cams import GRAPH_METHODS
from tests.models import small_cnn


def test_explainers_of_one_model_share_graphs_and_the_cache_is_bounded(monkeypatch) -> None:
    monkeypatch.setattr(sessions, "_GRAPHS", type(sessions._GRAPHS)())
    model = small_cnn()
    first = og.Explainer(model, providers="cpu")
    assert og.Explainer(model, providers="cpu").graph is first.graph
    for method in GRAPH_METHODS:  # more specs than the cache holds
        for seed in ("argmax", "classes", "ranks"):
            og.Explainer(model, method=method, providers="cpu").sessions.graph(seed)
    assert sessions.CACHE_SIZE < 6 * 3
    assert len(sessions._GRAPHS) == sessions.CACHE_SIZE
    # the first graph was evicted: rebuilt the same, and the first explainer still explains
    again = og.Explainer(model, providers="cpu").graph
    assert again is not first.graph
    assert again.model.SerializeToString() == first.graph.model.SerializeToString()
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    fresh = og.Explainer(model, providers="cpu")
    np.testing.assert_array_equal(first.explain(x).cams, fresh.explain(x).cams)


def test_another_model_gets_its_own_graph() -> None:
    a = og.Explainer(small_cnn(seed=0), providers="cpu")
    b = og.Explainer(small_cnn(seed=1), providers="cpu")
    assert a.graph is not b.graph
