"""The explainer graphs of a model and their ONNX Runtime sessions, each built on first use.

Graphs live in a small cache shared by explainers (a second :class:`~onnx_gradcam.Explainer` on
the same model, layers and method reuses them) and bounded, so a long-lived process that explains
many models does not keep every graph it built; sessions belong to one explainer (its providers,
threads and optimisation level).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import onnxruntime as ort

from onnx_gradcam.autodiff.builder import build_gradient
from onnx_gradcam.errors import OnnxGradCamError, UnsupportedOpError
from onnx_gradcam.explainer_graph import ExplainerModel, GraphSpec, explainer_model
from onnx_gradcam.model import LoadedModel, candidate_layers
from onnx_gradcam.runtime import Provider, make_session

#: graphs kept: an explainer uses up to four (argmax, classes, ranks, rows), and one per target
#: kind it explains
CACHE_SIZE = 8
_GRAPHS: OrderedDict[tuple[str, GraphSpec], ExplainerModel] = OrderedDict()


def cached_graph(model: LoadedModel, digest: str, spec: GraphSpec) -> ExplainerModel:
    """The explainer graph of ``spec`` on ``model`` (whose identity is ``digest``), from the
    cache or built; a layer whose head has an op without a rule fails naming the nearest layer
    that works."""
    key = (digest, spec)
    graph = _GRAPHS.get(key)
    if graph is not None:
        _GRAPHS.move_to_end(key)
        return graph
    try:
        graph = explainer_model(model.info, spec)
    except UnsupportedOpError as exc:
        nearest = nearest_working_layer(model, spec.score, exc.node_output)
        hint = f"; the nearest layer that works: --layer {nearest}" if nearest else ""
        raise UnsupportedOpError(f"{exc}{hint}", exc.node_output) from None
    _GRAPHS[key] = graph
    while len(_GRAPHS) > CACHE_SIZE:
        _GRAPHS.popitem(last=False)
    return graph


def nearest_working_layer(model: LoadedModel, score: str, node_output: str) -> str | None:
    """The first candidate layer after the failing node whose head we can differentiate."""
    info = model.info
    after = {o for i in info.descendants(node_output) for o in info.nodes[i].output}
    after.add(node_output)
    for layer in candidate_layers(model, score):
        if layer.name not in after:
            continue
        try:
            build_gradient(info, layer.name, score, score)
        except OnnxGradCamError:
            continue
        return layer.name
    return None


class Sessions:
    """One explainer's graphs (variants of ``spec``) and a session of each."""

    def __init__(self, model: LoadedModel, spec: GraphSpec,
                 providers: str | Sequence[Provider] | None, threads: int | None,
                 exact: bool) -> None:
        self.model, self.spec = model, spec
        self._providers, self._threads, self._exact = providers, threads, exact
        #: by the graph's identity (cheaper to hash than its spec, on every call); the entry
        #: holds the graph, so its id is not reused while the entry lives
        self._sessions: dict[tuple[int, bool], tuple[ExplainerModel, ort.InferenceSession]] = {}

    @cached_property
    def _digest(self) -> str:
        """The model's identity in the graph cache (hashed once: it serializes every weight)."""
        return hashlib.sha1(self.model.proto.SerializeToString()).hexdigest()

    def graph(self, seed: str = "argmax", rows: bool = False) -> ExplainerModel:
        """The explainer graph whose ``ogc_target`` takes ``seed`` (:data:`SEEDS`), or whose
        seed reads a target kind's inputs (``seed`` the kind's name); ``rows``: the many-targets
        graph (:class:`GraphSpec`)."""
        return cached_graph(self.model, self._digest, replace(self.spec, seed=seed, rows=rows))

    def session(self, graph: ExplainerModel, tensors: bool = False) -> ort.InferenceSession:
        """A session of ``graph``'s maps model, or (``tensors``) of the full graph, whose layer
        tensors are fetched only on demand."""
        full = tensors or not graph.coarse
        key = (id(graph), full)
        if key not in self._sessions:
            model = graph.model if full else graph.maps_model()
            self._sessions[key] = graph, make_session(model.SerializeToString(), self._providers,
                                                      self._threads, self._exact)
        return self._sessions[key][1]


@dataclass(slots=True)
class Batch:
    """A batch's feeds bound to one explainer graph, run in chunks of ``chunk`` rows (None:
    in one run)."""

    sessions: Sessions
    graph: ExplainerModel
    feeds: dict[str, np.ndarray]
    chunk: int | None = None

    def maps(self, names: list[str]) -> list[np.ndarray]:
        """``names`` from the maps session (:meth:`Sessions.session`)."""
        return self._run(self.sessions.session(self.graph), names)

    def tensors(self, names: list[str]) -> list[np.ndarray]:
        """``names`` from the full graph's session: the layer tensors."""
        return self._run(self.sessions.session(self.graph, tensors=True), names)

    def _run(self, session: ort.InferenceSession, names: list[str]) -> list[np.ndarray]:
        return run_chunked(session, names, self.feeds, self.chunk)


def run_chunked(session: ort.InferenceSession, names: list[str], feeds: dict[str, np.ndarray],
                chunk: int | None) -> list[np.ndarray]:
    """``names`` of ``session`` for ``feeds`` whose arrays share their first axis, run in
    chunks of ``chunk`` rows (None: in one run) and concatenated."""
    n = len(next(iter(feeds.values())))
    if chunk is None or n <= chunk:
        return session.run(names, feeds)
    parts = [session.run(names, {k: v[i:i + chunk] for k, v in feeds.items()})
             for i in range(0, n, chunk)]
    return [np.concatenate(outs) for outs in zip(*parts)]
