"""The public API: ``Explainer`` (input and target checks, the graph for the targets, the result
path) and ``Explanation``; graphs and sessions are :mod:`onnx_gradcam.sessions`'s."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import onnx
import onnxruntime as ort

from onnx_gradcam import targets as targets_
from onnx_gradcam.autodiff.builder import head_nodes
from onnx_gradcam.cams import METHODS, Method, postprocess, reduce_map
from onnx_gradcam.cams.score import scorecam
from onnx_gradcam.errors import NonFiniteError, OnnxGradCamError
from onnx_gradcam.explainer_graph import (
    GRADIENT,
    ROWS,
    SCORES,
    TARGET,
    TARGETS,
    ExplainerModel,
    GraphSpec,
)
from onnx_gradcam.export import ExportSpec, check_exportable, export_model
from onnx_gradcam.images import (
    DEFAULT_MAX_PIXELS,
    atomic_write,
    check_output_file,
    preprocess,
    read_image,
    synthetic_image,
    to_rgb8,
)
from onnx_gradcam.kinks import KnifeEdges, kink_nodes, knife_edges, probe_names
from onnx_gradcam.metadata import Preprocessing
from onnx_gradcam.model import (
    Layer,
    LoadedModel,
    dequantized_layers,
    detect_layer,
    load_model,
    resolve_layer,
    score_like,
)
from onnx_gradcam.runtime import Provider, make_session
from onnx_gradcam.sessions import Batch, Sessions, run_chunked

if TYPE_CHECKING:
    from onnx_gradcam.verify import VerifyReport

Targets = int | Sequence[int] | Sequence[targets_.Target] | np.ndarray | None
_FLOAT32 = np.dtype(np.float32)


LayerTensors = tuple[list[np.ndarray], list[np.ndarray]]


class Maps(NamedTuple):
    """What one run of an explainer graph gives (:meth:`Explainer._maps`); the rows of a
    many-targets run are (image, target) pairs, image-major."""

    scores: np.ndarray
    targets: np.ndarray
    coarse: list[np.ndarray]
    cams: np.ndarray | None  # (N, H, W), where the graph post-processes
    tensors: LayerTensors | Callable[[], LayerTensors]


@dataclass
class Explanation:
    """The result of explaining a batch (arrays are per sample, NCHW for layer tensors).

    ``activations`` and ``gradients`` (per layer, (N, K, h, w); gradients empty for
    gradient-free methods) are fetched on first access where the map was computed inside the
    explainer graph: most callers want only the map, and copying 2·K·h·w numbers per image out
    of ONNX Runtime costs more than the map itself. The fetch re-runs the explainer graph on the
    same batch and targets."""

    cams: np.ndarray  # (N, H, W) float32 in [0, 1]
    coarse: np.ndarray  # (N, h, w) float32, the first layer's map before ReLU/normalisation
    targets: np.ndarray  # (N,) int64 (for og.targets kinds: the category, flat index or −1)
    scores: np.ndarray  # (N, C) float32: the score the targets index into ((N, 1) for kinds)
    tensors: LayerTensors | Callable[[], LayerTensors] = field(repr=False)
    method: str
    layers: list[str]
    score_kind: str  # "logits" or "probabilities"
    provider: str
    seconds: float
    images: list[np.ndarray] = field(default_factory=list)  # explain_images: the RGB originals
    #: computes :attr:`knife_edges` (on first access; None where not available)
    diagnose: Callable[[], KnifeEdges] | KnifeEdges | None = field(default=None, repr=False)

    def _tensors(self) -> LayerTensors:
        if callable(self.tensors):
            self.tensors = self.tensors()
        return self.tensors

    @property
    def activations(self) -> list[np.ndarray]:
        return self._tensors()[0]

    @property
    def gradients(self) -> list[np.ndarray]:
        return self._tensors()[1]

    @property
    def knife_edges(self) -> KnifeEdges | None:
        """Per sample, the kink decisions between the layer and the score that lie within
        float32 rounding of their threshold and how far the gradient could move if they
        flipped (:class:`onnx_gradcam.kinks.KnifeEdges`). Computed on first access by a small
        diagnostic session (one more forward and backward of the batch; none for a head
        without kink ops)."""
        if callable(self.diagnose):
            self.diagnose = self.diagnose()
        return self.diagnose


class Explainer:
    """Grad-CAM-family explanations of an ONNX image classifier on plain ONNX Runtime.

    ``model``: a path or ``onnx.ModelProto``. ``layer``: an ONNX tensor name (or several, for a
    multi-layer map; ``NAME:NHWC`` or ``NAME:NCHW`` states a layout the graph doesn't show),
    ``None`` = the metadata's ``activation`` or the auto-detected last conv activation.
    ``method``: a key of :data:`onnx_gradcam.METHODS`. ``providers``: ``auto``, ``cpu``,
    ``cuda`` or ORT providers (names or ``(name, options)`` pairs). ``score``:
    ``logits`` (pre-softmax, the default) or ``probabilities`` (the model's own output).
    ``gradient_builder``: ``onnx`` (our VJP rules, the default) or ``ort-training``
    (onnxruntime-training's builder in its own venv, lowered to standard ONNX; see
    :mod:`onnx_gradcam.autodiff.ort_training`). ``exact``: run ONNX Runtime's graph optimisation
    only up to ``ORT_ENABLE_EXTENDED`` (no NCHWc layout transformation, whose blocked kernels
    sum in another order), for maps whose kink decisions sit on a knife edge
    (:attr:`Explanation.knife_edges`): the forward then rounds as the plain kernels do.
    ``output``: the graph output to score where
    there are several (:func:`~onnx_gradcam.model.load_model`); one that is not class scores
    (a segmentation map, a detector's tensor) is explained for targets of
    :mod:`onnx_gradcam.targets` only.
    """

    def __init__(self, model: str | Path | onnx.ModelProto,
                 layer: str | Sequence[str] | None = None, method: str = "gradcam",
                 providers: str | Sequence[Provider] | None = None, *,
                 score: str = "logits", batch_size: int = 16, scorecam_batch: int = 32,
                 threads: int | None = None, aug_smooth: bool = False,
                 eigen_smooth: bool = False, gradient_builder: str = "onnx",
                 exact: bool = False, output: str | None = None) -> None:
        if method not in METHODS:
            raise OnnxGradCamError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
        if score not in ("logits", "probabilities"):
            raise OnnxGradCamError(f"score must be 'logits' or 'probabilities', not {score!r}")
        self.model: LoadedModel = load_model(model, output)
        self.method = METHODS[method]
        has_softmax = self.model.logits != self.model.score_output
        self.score = self.model.logits if score == "logits" else self.model.score_output
        #: what the differentiated score is: "logits" (pre-softmax), "probabilities" (after
        #: the model's own Softmax) or "output" (the model's output; no final Softmax found)
        self.score_kind = score if has_softmax else "output"
        self.layers: list[Layer] = self._layers(layer)
        self.model, self.layers = dequantized_layers(self.model, self.layers)
        self.batch_size = max(1, int(batch_size))
        if self.model.input_shape[0] == 1:
            self.batch_size = 1  # a model exported with a fixed batch of one
        self.scorecam_batch = max(1, int(scorecam_batch))
        #: pytorch-grad-cam's smoothing options: average over flips × intensity scales, and/or
        #: the first principal component of the weighted activations instead of their sum
        self.aug_smooth, self.eigen_smooth = aug_smooth, eigen_smooth
        self.gradient_builder = gradient_builder
        self._providers, self._threads, self.exact = providers, threads, exact
        self.sessions = Sessions(self.model, self.graph_spec, providers, threads, exact)
        self._probes: dict[tuple[str, tuple[str, ...]], tuple] = {}
        #: the explainer graph of the common call (each sample's best class) and its session;
        #: None where the output is not class scores (explained for target objects only, each
        #: kind's graph built on first use)
        self.graph: ExplainerModel | None = None
        self.session: ort.InferenceSession | None = None
        if score_like(self.model.info.shapes.get(self.score)):
            self.graph = self.sessions.graph("argmax")
            self.session = self.sessions.session(self.graph)
        self._argmax: dict[int, np.ndarray] = {}  # read-only all −1 targets per batch size
        self.provider: str = self.session.get_providers()[0] if self.session else ""

    # ---- set-up ------------------------------------------------------------------------------
    def _layers(self, layer: str | Sequence[str] | None) -> list[Layer]:
        if layer is None:
            name = self.model.metadata.activation
            if name:
                return [resolve_layer(self.model, name, self.score)]
            return [detect_layer(self.model, self.score)]
        names = [layer] if isinstance(layer, str) else list(layer)
        return [resolve_layer(self.model, n, self.score) for n in names]

    @cached_property
    def layer_names(self) -> list[str]:
        return [la.name for la in self.layers]

    @property
    def graph_cam(self) -> Method | None:
        """The method as graph nodes, when the map is computed inside the explainer graph."""
        if self.eigen_smooth:
            return None
        return self.method if self.method.graph is not None else None

    @property
    def graph_spec(self) -> GraphSpec:
        """What this explainer's graphs compute (:class:`GraphSpec`; the seed kind and rows are
        chosen per call)."""
        return GraphSpec(tuple(self.layer_names), self.score, self.graph_cam,
                         self.method.needs_gradient, layouts=tuple(la.layout for la in self.layers),
                         input_layout=self.model.input_layout, builder=self.gradient_builder,
                         grids=tuple(la.grid for la in self.layers))

    @cached_property
    def num_classes(self) -> int | None:
        return self.model.info.class_count(self.score)

    @property
    def input_size(self) -> tuple[int, int] | None:
        """(H, W) the model takes: from metadata, else from its static input shape."""
        pre = self.model.metadata.preprocessing
        if pre.size:
            return pre.size
        shape = self.model.input_shape
        dims = shape[2:4] if self.model.input_layout == "NCHW" else shape[1:3]
        return (dims[0], dims[1]) if None not in dims else None

    # ---- running -----------------------------------------------------------------------------
    def check_targets(self, targets: Targets, n: int) -> np.ndarray:
        if targets is None:  # each sample's argmax
            if n not in self._argmax:
                self._argmax[n] = np.full(n, -1, dtype=np.int64)
                self._argmax[n].flags.writeable = False
            return self._argmax[n]
        given = np.asarray(targets)
        if given.dtype.kind not in "iu":
            raise OnnxGradCamError(f"targets must be class indices (integers), got {targets!r}")
        out = np.atleast_1d(given.astype(np.int64))
        if out.size == 1 and n > 1:
            out = np.repeat(out, n)
        if out.shape != (n,):
            raise OnnxGradCamError(f"got {out.size} targets for a batch of {n}")
        classes = self.num_classes
        bad = out[(out < -classes) | (out >= classes)] if classes else out[out < -1]
        if bad.size:
            raise OnnxGradCamError(f"target {int(bad[0])} is out of range: the model has "
                                   f"{classes} classes (0..{(classes or 1) - 1})")
        return out

    def _check_input(self, x: np.ndarray) -> np.ndarray:
        if (type(x) is np.ndarray and x.shape[1:] == self._input_tail
                and x.dtype == self.input_dtype and x.flags.c_contiguous and len(x)):
            check_finite_input(x)
            return x  # the common case, checked in one go
        x = np.asarray(x)
        if x.dtype.kind != "f":
            raise OnnxGradCamError(
                f"input batch has dtype {x.dtype}; expected floats ({self.input_dtype}) as "
                "preprocessed for the model: use explain_images for image pixels")
        if x.ndim == 3:
            x = x[None]
        if len(x) == 0 and x.ndim == 4:
            raise OnnxGradCamError("empty batch: pass at least one image")
        if x.ndim != 4:
            raise OnnxGradCamError(f"input batch has shape {x.shape}; expected 4-D in the model's "
                                   f"{self.model.input_layout} layout")
        expected = self.model.input_shape
        if any(want is not None and got != want for got, want in zip(x.shape[1:], expected[1:])):
            raise OnnxGradCamError(f"input batch has shape {x.shape}; the model's input "
                                   f"{self.model.input_name!r} is {expected}")
        x = np.ascontiguousarray(x, dtype=self.input_dtype)
        check_finite_input(x)
        return x

    @cached_property
    def _input_tail(self) -> tuple[int, ...] | None:
        """The input's static (C, H, W)/(H, W, C), or None where a dim is symbolic."""
        tail = tuple(self.model.input_shape[1:])
        return None if None in tail or len(tail) != 3 else tail  # type: ignore[return-value]

    @cached_property
    def input_dtype(self) -> np.dtype:
        return self.model.info.dtype(self.model.input_name)

    def _maps(self, batch: Batch, x: np.ndarray, rows: np.ndarray | None = None,
              forwards: Sequence[Callable[[np.ndarray], np.ndarray]] | None = None) -> Maps:
        """Scores, resolved targets, coarse maps per layer, heatmaps and layer tensors of
        ``batch``. Where the graph computes the map, only the maps are fetched and the layer
        tensors are a function that fetches them from the full graph; else the maps are computed
        here (``rows``: the sample each gradient row explains; ``forwards``: Score-CAM's score
        of each sample's target object, :meth:`_target_forward`) and the heatmaps are left to
        :func:`postprocess` (None)."""
        graph = batch.graph
        if graph.coarse:
            scores, resolved, *coarse, cams = batch.maps(graph.map_outputs)
            return Maps(scores, resolved, [c[:, 0] for c in coarse], cams[:, 0],
                        partial(self._fetch_tensors, batch))
        scores, resolved, *rest = batch.maps([SCORES, TARGETS, *graph.activations,
                                              *graph.gradients])
        acts, grads = self._layer_tensors(rest, x)
        xs = x if rows is None else x[rows]
        coarse = [self._coarse(a if rows is None else a[rows], g, xs, resolved, forwards)
                  for a, g in zip(acts, grads or [None] * len(acts))]
        return Maps(scores, resolved, coarse, None, (acts, grads))

    def _layer_tensors(self, outputs: Sequence[np.ndarray], x: np.ndarray) -> LayerTensors:
        """(activations, gradients) from the fetched [*activations, *gradients] for the input
        batch ``x``, made NCHW."""
        k = len(self.layers)
        first = 2 if self.model.input_layout == "NCHW" else 1
        hw = x.shape[first:first + 2]
        return ([self._nchw(a, la, hw) for a, la in zip(outputs[:k], self.layers)],
                [self._nchw(g, la, hw) for g, la in zip(outputs[k:], self.layers)])

    def _nchw(self, array: np.ndarray, layer: Layer, input_hw: tuple[int, int]) -> np.ndarray:
        if layer.grid is not None:
            return layer.grid.nchw(array, input_hw)
        return array.transpose(0, 3, 1, 2) if layer.layout == "NHWC" else array

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Scores (N, C) of a preprocessed batch (used by Score-CAM's masked passes)."""
        x = self._check_input(x)
        batch = Batch(self.sessions, self.class_graph, {self.model.input_name: x},
                      self.batch_size)
        return batch.maps([SCORES])[0]  # the argmax graph: no targets

    def outputs(self, x: np.ndarray) -> np.ndarray:
        """The scored output (:attr:`score`) of a preprocessed batch, as the model computes it:
        a segmentation map, an embedding, class scores (``run --segment`` reads its pixels'
        classes from it, ``--similar-to`` its concept vector)."""
        x = self._check_input(x)
        return run_chunked(self._output_session, [self.score], {self.model.input_name: x},
                           self.batch_size)[0]

    @cached_property
    def _output_session(self) -> ort.InferenceSession:
        """A plain inference session of the model that outputs the scored tensor only."""
        proto = onnx.ModelProto()
        proto.CopyFrom(self.model.proto)
        del proto.graph.output[:]
        proto.graph.output.append(onnx.ValueInfoProto(name=self.score))
        return make_session(proto.SerializeToString(), self._providers, self._threads, self.exact)

    @property
    def class_graph(self) -> ExplainerModel:
        """The default graph, refused where the scored output is not class scores."""
        if self.graph is None:
            raise OnnxGradCamError(
                f"output {self.score!r} is {list(self.model.info.shapes.get(self.score) or [])}, "
                "not class scores (N, C): pass targets=[og.targets.Segmentation(...)] (or "
                "Similarity, Output; `run --segment CLASS` or `--similar-to IMAGE`), or "
                "output=NAME (--target-output NAME) for another output")
        return self.graph

    def explain(self, x: np.ndarray, targets: Targets = None) -> Explanation:
        """Explain a preprocessed float batch in the model's own layout (NCHW or NHWC) for
        ``targets``: None (each sample's best class), class indices (an int for all), or
        :mod:`onnx_gradcam.targets` objects (one per sample, or one for all)."""
        empty = None
        if self.aug_smooth or self.method.masked_scores:
            targets, empty = self._fixed_masks(x, targets)
        result = (self._explain_augmented if self.aug_smooth else self._explain)(x, targets)
        if empty is not None:
            result.targets[empty] = -1
        return check_finite_result(result)

    def _fixed_masks(self, x: np.ndarray, targets: Targets) -> tuple[Targets, np.ndarray | None]:
        """Segmentation targets without a mask given the mask the model predicts for ``x``
        (and which of those masks are empty), for the methods that run the model on other
        inputs than ``x`` (Score-CAM's masked inputs, aug_smooth's augmentations): there, as in
        pytorch-grad-cam, every pass scores ``x``'s mask, not its own input's prediction."""
        given = [targets] if isinstance(targets, targets_.Segmentation) else targets
        if (not isinstance(given, Sequence) or isinstance(given, str)
                or targets_.kind_of(given) != targets_.PREDICTED
                or len(given) not in (1, len(x))):
            return targets, None
        category = np.array([t.category for t in given], dtype=np.int64)
        masks = self.outputs(x).argmax(axis=1) == category[:, None, None]
        return ([targets_.Segmentation(int(c), m.astype(np.float32))
                 for c, m in zip(np.broadcast_to(category, len(x)), masks)],
                ~masks.any(axis=(1, 2)))

    #: aug_smooth's test-time augmentations (as pytorch-grad-cam's ttach transforms): horizontal
    #: flip on/off × multiplying the input tensor by 0.9, 1.0, 1.1
    AUGMENTATIONS = [(flip, factor) for flip in (False, True) for factor in (0.9, 1.0, 1.1)]

    def _explain_augmented(self, x: np.ndarray, targets: Targets) -> Explanation:
        """aug_smooth: the mean of the post-processed maps of the augmented inputs, each flipped
        back (pytorch-grad-cam's forward_augmentation_smoothing; no renormalisation after)."""
        start = time.perf_counter()
        x = self._check_input(x)
        width_axis = 3 if self.model.input_layout == "NCHW" else 2
        results = []
        for flip, factor in self.AUGMENTATIONS:
            xa = x * np.float32(factor)
            xa = np.ascontiguousarray(np.flip(xa, width_axis) if flip else xa)
            res = self._explain(xa, targets)
            if flip:
                res.cams = np.ascontiguousarray(res.cams[:, :, ::-1])
            results.append(res)
        base = next(r for r, (flip, factor) in zip(results, self.AUGMENTATIONS)
                    if not flip and factor == 1.0)
        base.cams = np.mean([r.cams for r in results], axis=0).astype(np.float32)
        base.seconds = time.perf_counter() - start
        return base

    def _explain(self, x: np.ndarray, targets: Targets = None) -> Explanation:
        start = time.perf_counter()
        x = self._check_input(x)
        if targets is not None:  # None, the common case, means each sample's best class
            if isinstance(targets, (targets_.Class, *targets_.KINDS)):
                targets = [targets]  # one target object for the whole batch
            if isinstance(targets, Sequence) and not isinstance(targets, str):
                kind = targets_.kind_of(targets)
                if kind is not None:
                    return self._explain_kind(start, x, kind, targets)
                targets = targets_.classes(targets)
        checked = self.check_targets(targets, len(x))
        graph = self._graph_for(targets, checked)
        feeds = {self.model.input_name: x}
        if graph.takes_target:
            feeds[TARGET] = checked
        maps = self._maps(Batch(self.sessions, graph, feeds, self.batch_size), x)
        result = self._result(start, maps, x)
        if self.method.needs_gradient:
            result.diagnose = partial(self.knife_edges, x, result.targets)
        return result

    def _explain_kind(self, start: float, x: np.ndarray, kind: str,
                      targets: Sequence[targets_.Target]) -> Explanation:
        """Explain target objects of one kind (:mod:`onnx_gradcam.targets`): one per sample,
        or one for the whole batch."""
        if len(targets) == 1 and len(x) > 1:
            targets = list(targets) * len(x)
        if len(targets) != len(x):
            raise OnnxGradCamError(f"got {len(targets)} targets for a batch of {len(x)}")
        feeds, labels = targets_.feeds(kind, targets, self.score,
                                       self.model.info.shapes.get(self.score),
                                       self.model.info.dtype(self.score))
        graph = self.sessions.graph(kind)
        self.provider = self.sessions.session(graph).get_providers()[0]
        batch = Batch(self.sessions, graph, {self.model.input_name: x, **feeds}, self.batch_size)
        forwards = ([self._target_forward(graph, feeds, i) for i in range(len(x))]
                    if self.method.masked_scores else None)
        maps = self._maps(batch, x, forwards=forwards)
        return self._result(start, maps if labels is None else maps._replace(targets=labels), x)

    def _target_forward(self, graph: ExplainerModel, feeds: dict[str, np.ndarray], i: int
                        ) -> Callable[[np.ndarray], np.ndarray]:
        """Score-CAM's forward for sample ``i``'s target object: the target's score (B, 1) of
        a batch of inputs, as the kind's graph computes it (its seed's score)."""
        def forward(batch: np.ndarray) -> np.ndarray:
            own = {k: np.repeat(v[i:i + 1], len(batch), axis=0) for k, v in feeds.items()}
            return Batch(self.sessions, graph, {self.model.input_name: batch, **own},
                         self.batch_size).maps([SCORES])[0]
        return forward

    def _result(self, start: float, maps: Maps, x: np.ndarray, k: int | None = None
                ) -> Explanation:
        """``maps`` of the batch ``x`` as an :class:`Explanation`, post-processed here where
        the graph does not; with ``k`` targets per image, the arrays gain a k axis (see
        :meth:`explain_many`)."""
        cams, coarse, targets = maps.cams, maps.coarse[0], maps.targets
        if cams is None:
            cams = postprocess(maps.coarse, self._size(x))
        if k is not None:
            n = len(x)
            cams, targets = cams.reshape(n, k, *cams.shape[1:]), targets.reshape(n, k)
            coarse = coarse.reshape(n, k, *coarse.shape[1:])
        f32, scores = _FLOAT32, maps.scores  # a float32 model's outputs need no conversion
        return Explanation(cams if cams.dtype is f32 else cams.astype(f32),
                           coarse if coarse.dtype is f32 else coarse.astype(f32),
                           targets.astype(np.int64, copy=False),
                           scores if scores.dtype is f32 else scores.astype(f32), maps.tensors,
                           self.method.name, list(self.layer_names), self.score_kind,
                           self.provider, time.perf_counter() - start)

    def _fetch_tensors(self, batch: Batch) -> LayerTensors:
        """The layer tensors of a batch, from the full graph (on first access: see
        :class:`Explanation`)."""
        graph = batch.graph
        return self._layer_tensors(batch.tensors([*graph.activations, *graph.gradients]),
                                   batch.feeds[self.model.input_name])

    # ---- diagnostics ---------------------------------------------------------------------------
    def knife_edges(self, x: np.ndarray, targets: np.ndarray) -> KnifeEdges:
        """The knife-edge decisions (:class:`~onnx_gradcam.kinks.KnifeEdges`) of each sample's
        head for the class indices ``targets`` (N,), summed over the target layers."""
        x = self._check_input(x)
        n = len(x)
        # a head without kink ops (GAP → Gemm) has no decisions: nothing to probe for
        parts = [self._probe(x, targets, layer.name)[0] if layer.name in self._kinked_heads
                 else KnifeEdges(np.zeros(n, np.int64), np.zeros(n), [[] for _ in range(n)])
                 for layer in self.layers]
        return KnifeEdges(sum(p.count for p in parts), sum(p.shift for p in parts),
                          [sum(ops, []) for ops in zip(*[p.ops for p in parts])])

    @cached_property
    def _kinked_heads(self) -> frozenset[str]:
        """The target layers whose head (layer → score) holds a kink op (:data:`KINKS`)."""
        info = self.model.info
        return frozenset(layer.name for layer in self.layers
                         if kink_nodes(info, head_nodes(info, layer.name, self.score), {}))

    def _probe(self, x: np.ndarray, targets: np.ndarray, layer: str,
               extra: Sequence[str] = ()) -> tuple[KnifeEdges, dict[str, np.ndarray]]:
        """Run the diagnostic session of ``layer`` (:func:`onnx_gradcam.verify.probe_model`,
        built on first use): its knife edges and the values it fetched (``extra`` too; the
        layer's gradient as ``ogc_gradient``)."""
        from onnx_gradcam.verify import probe_model

        key = (layer, tuple(extra))
        if key not in self._probes:
            model, kinks, gradient = probe_model(self.model.info, layer, self.score, True,
                                                 list(extra))
            names = [gradient, *probe_names(kinks), *extra]
            session = make_session(model.SerializeToString(), self._providers, self._threads,
                                   self.exact)
            self._probes[key] = (kinks, list(dict.fromkeys(names)), session, gradient)
        kinks, names, session, gradient = self._probes[key]
        feeds = {self.model.input_name: x, TARGET: np.asarray(targets, np.int64)}
        values = dict(zip(names, run_chunked(session, names, feeds, self.batch_size)))
        values[GRADIENT] = values[gradient]
        return knife_edges(kinks, values, len(x)), values

    def verify(self, image_or_batch: str | Path | np.ndarray | None = None, directions: int = 4,
               seed: int = 0) -> VerifyReport:
        """Check the gradient graph numerically on this model (:mod:`onnx_gradcam.verify`):
        ``image_or_batch`` an image file, or a preprocessed batch in the model's layout; None:
        a deterministic synthetic image (smooth noise, ``seed``) preprocessed as images are."""
        from onnx_gradcam.verify import verify

        if image_or_batch is None:
            rgb = synthetic_image(self.preprocessing().size or (224, 224), seed)
            x, _ = self.prepare([rgb])
            image = f"synthetic (smooth noise, seed {seed})"
        elif isinstance(image_or_batch, (str, Path)):
            x, _ = self.prepare([image_or_batch])
            image = str(image_or_batch)
        else:
            x, image = self._check_input(image_or_batch), "the given batch"
        return verify(self, x, image, directions, seed)

    def explain_many(self, x: np.ndarray, targets: np.ndarray | Sequence | None = None,
                     top_k: int | None = None) -> Explanation:
        """Explain k targets per image in ONE backbone pass: ``targets`` (N, k) class indices
        (or rank codes −1, −2, … = best, runner-up, …), or ``top_k`` = the k best classes.

        The gradient comes from a copy of the head run on the N·k (image, target) rows, so the
        backbone runs once. Result arrays gain a k axis: cams (N, k, H, W), coarse (N, k, h, w),
        targets (N, k); activations stay (N, K, h, w) and gradients are (N·k, K, h, w).
        ``targets`` may also be N rows of k :mod:`onnx_gradcam.targets` objects of one kind:
        explained one rank at a time (one pass each), scores then (N, k), each the target's.
        """
        start = time.perf_counter()
        objects = _object_rows(targets, len(x))
        if objects is not None:
            k = len(objects[0])
            results = [self.explain(x, [row[r] for row in objects]) for r in range(k)]
            result = self._stack(results, start)
            result.scores = np.concatenate([r.scores for r in results], axis=1)
            return result
        self.class_graph  # noqa: B018 - refused where the output is not class scores
        x = self._check_input(x)
        n = len(x)
        if targets is None:
            k = max(1, int(top_k or 1))
            if self.num_classes and k > self.num_classes:
                raise OnnxGradCamError(f"top_k {k} is more than the model's "
                                       f"{self.num_classes} classes")
            codes = np.tile(-np.arange(1, k + 1, dtype=np.int64), (n, 1))
        else:
            given = np.asarray(targets)
            if given.dtype.kind not in "iu" or given.size == 0:
                raise OnnxGradCamError(f"targets must be class indices (integers), got "
                                       f"{targets!r}")
            codes = given.astype(np.int64).reshape(n, -1)
            k = codes.shape[1]
        flat = self.check_targets(codes.reshape(-1), n * k)
        rows = np.repeat(np.arange(n, dtype=np.int64), k)
        if not self.method.needs_gradient or self.aug_smooth:  # one pass per rank
            results = [self.explain(x, codes[:, r]) for r in range(k)]
            return check_finite_result(self._stack(results, start))
        feeds = {self.model.input_name: x, TARGET: flat, ROWS: rows}
        maps = self._maps(Batch(self.sessions, self.rows_graph, feeds), x, rows)
        return check_finite_result(self._result(start, maps, x, k))

    def _stack(self, results: list[Explanation], start: float) -> Explanation:
        """One result per rank → explain_many's shapes; gradients image-major (row i·k + r),
        the order the one-pass path returns (fetched, like each result's, on first access)."""
        first = results[0]

        def tensors() -> LayerTensors:
            grads = [np.stack(g, axis=1).reshape(-1, *g[0].shape[1:])
                     for g in zip(*[r.gradients for r in results])]
            return first.activations, grads

        return Explanation(
            np.stack([r.cams for r in results], 1), np.stack([r.coarse for r in results], 1),
            np.stack([r.targets for r in results], 1), first.scores, tensors, first.method,
            first.layers, first.score_kind, first.provider, time.perf_counter() - start)

    def _graph_for(self, targets: Targets, checked: np.ndarray) -> ExplainerModel:
        """The cheapest graph that understands these targets (:data:`SEEDS`): ``argmax`` for
        each sample's best class, ``classes`` for class indices and −1, else ``ranks``."""
        default = self.class_graph  # refused where the output is not class scores
        if targets is None or (checked == -1).all():
            return default
        return self.sessions.graph("classes" if (checked >= -1).all() else "ranks")

    @property
    def rows_graph(self) -> ExplainerModel:
        """The many-targets explainer graph (:class:`GraphSpec` ``rows``)."""
        return self.sessions.graph("ranks", rows=True)

    def _size(self, x: np.ndarray) -> tuple[int, int]:
        dims = x.shape[2:4] if self.model.input_layout == "NCHW" else x.shape[1:3]
        return int(dims[0]), int(dims[1])

    def _coarse(self, acts: np.ndarray, grads: np.ndarray | None, x: np.ndarray,
                targets: np.ndarray,
                forwards: Sequence[Callable[[np.ndarray], np.ndarray]] | None = None
                ) -> np.ndarray:
        if self.method.masked_scores:
            layout, size = self.model.input_layout, self.scorecam_batch
            if forwards is None:  # class targets
                weights = scorecam(acts, x, targets, self.forward, layout, size)
            else:  # each sample's target object scores its masked inputs (one column)
                first = np.zeros(1, dtype=np.int64)
                weights = np.concatenate([scorecam(acts[i:i + 1], x[i:i + 1], first, f, layout,
                                                   size) for i, f in enumerate(forwards)])
            return reduce_map(weights, acts, channel=True, eigen=self.eigen_smooth)
        return self.method.cam(acts, grads, self.eigen_smooth)  # type: ignore[arg-type]

    def export(self, path: str | Path | None = None, *, upsample: bool = True,
               target_required: bool = False, target_kind: str | None = None
               ) -> onnx.ModelProto:
        """This explainer's model, target layers and method as one standard ONNX model (forward,
        gradient and CAM post-processing in the graph; see :mod:`onnx_gradcam.export`), for
        classes or the targets of ``target_kind`` (``segmentation``, ``predicted_segmentation``,
        ``similarity``, ``output``), written to ``path`` (atomically) if given."""
        if path is not None:
            check_output_file(Path(path), self.model.files)
        spec = self._export_spec(upsample, target_required, target_kind)
        check_exportable(spec)
        model = export_model(self.model, self.sessions.graph(target_kind or "ranks"), spec)
        if path is not None:
            atomic_write(Path(path), model.SerializeToString())
        return model

    def _export_spec(self, upsample: bool, target_required: bool,
                     target_kind: str | None = None) -> ExportSpec:
        try:
            pre = self.preprocessing()
        except OnnxGradCamError:  # a symbolic input size and none in the metadata
            pre = self.model.metadata.preprocessing
        return ExportSpec(self.method.name, tuple(self.layers), self.score_kind, pre,
                          upsample=upsample, target_required=target_required,
                          eigen_smooth=self.eigen_smooth, aug_smooth=self.aug_smooth,
                          target_kind=target_kind)

    # ---- images ------------------------------------------------------------------------------
    @cached_property
    def model_preprocessing(self) -> Preprocessing:
        """The model's own preprocessing: its metadata, with the layout and (where the metadata
        names no colour) a 1-channel input's GRAY taken from the model's input. Flags are laid
        over this, so they override the model, never reset it to defaults."""
        pre = self.model.metadata.preprocessing.with_(layout=self.model.input_layout)
        has_color = any(p.key == "onnx_gradcam.color" for p in self.model.proto.metadata_props)
        if self.model.input_channels == 1 and not has_color:
            pre = pre.with_(color="GRAY")
        return pre

    def preprocessing(self, overrides: Preprocessing | None = None) -> Preprocessing:
        """The preprocessing in force: ``overrides`` if given, else :attr:`model_preprocessing`;
        the size falls back to the model's static input size. A colour mode that does not fit
        the input's channel count fails with one line."""
        pre = overrides or self.model_preprocessing
        channels = self.model.input_channels
        wanted = 1 if pre.color == "GRAY" else 3
        if channels is not None and channels != wanted:
            what = {1: "gray: pass --gray (or metadata onnx_gradcam.color=GRAY)",
                    3: "colour: drop --gray"}.get(channels, "neither RGB nor gray; "
                                                  "onnx-gradcam feeds 3-channel RGB/BGR or "
                                                  "1-channel gray images only")
            raise OnnxGradCamError(
                f"{self.model.source}: input {self.model.input_name!r} has shape "
                f"{self.model.input_shape}: {channels} channel(s) ({pre.layout}), but the "
                f"preprocessing makes {wanted}; the model takes {what}")
        if pre.size is None:
            size = self.input_size
            if size is None:
                raise OnnxGradCamError(f"{self.model.source}: the input size is symbolic; "
                                       "pass --size H,W (or preprocessing.size)")
            pre = pre.with_(size=size)
        return pre

    def prepare(self, images: Sequence[str | Path | np.ndarray],
                preprocessing: Preprocessing | None = None,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, list[np.ndarray]]:
        """Decode (paths, each within ``max_pixels``) or convert (RGB arrays) and preprocess:
        (batch, RGB originals; a large file's original is decoded reduced, see
        :func:`onnx_gradcam.images.decode_image`)."""
        if isinstance(images, (str, Path, np.ndarray)) or len(images) == 0:
            raise OnnxGradCamError("no images: pass a list of image paths or RGB arrays")
        pre = self.preprocessing(preprocessing)
        originals = [read_image(i, max_pixels, pre.size) if isinstance(i, (str, Path))
                     else to_rgb8(np.asarray(i)) for i in images]
        assert pre.size is not None
        batch = np.stack([preprocess(rgb, pre, pre.size) for rgb in originals])
        return batch, originals

    def explain_images(self, images: Sequence[str | Path | np.ndarray], targets: Targets = None,
                       preprocessing: Preprocessing | None = None) -> Explanation:
        """Decode + preprocess (from metadata or ``preprocessing``), then :meth:`explain`."""
        batch, originals = self.prepare(images, preprocessing)
        result = self.explain(batch, targets)
        result.images = originals
        return result


def _object_rows(targets: object, n: int) -> list[list] | None:
    """``targets`` as N rows of target objects (:mod:`onnx_gradcam.targets`; one object per
    image is a row of one), or None where they are class indices."""
    if targets is None or isinstance(targets, np.ndarray) or not isinstance(targets, Sequence):
        return None
    rows = [list(t) if isinstance(t, (list, tuple)) else [t] for t in targets]
    if not any(isinstance(t, tuple(targets_.KINDS)) for row in rows for t in row):
        return None
    if len(rows) != n or len({len(r) for r in rows}) != 1 or not rows[0]:
        raise OnnxGradCamError(f"explain_many takes N = {n} rows of k target objects each")
    return rows


def check_finite_input(x: np.ndarray) -> None:
    """Refuse a batch holding NaN or infinity, naming the samples."""
    if not np.isfinite(x).all():
        bad = np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))
        which = f"input {', '.join(map(str, bad[:5]))}" if len(x) > 1 else "the input"
        raise NonFiniteError(
            f"{which} holds non-finite values (NaN or infinity): "
            "check the image and the preprocessing (--std must not be 0, --scale finite)",
            [int(i) for i in bad])


def check_finite_result(res: Explanation) -> Explanation:
    """Refuse non-finite scores or maps (NaN weights, overflow) rather than return NaN maps;
    the error names the samples. The coarse map (before ReLU) shows non-finite gradients and
    activations that the post-processing's ReLU or clip would hide."""
    # a sum is finite only where every term is (or where it overflowed, which the exact check
    # below sorts out): one reduction per array instead of a mask and a reduction per row
    if math.isfinite(float(np.add.reduce(res.scores, None)) + float(np.add.reduce(res.coarse, None))
                     + float(np.add.reduce(res.cams, None))):
        return res
    n = len(res.scores)
    scores_ok = np.isfinite(res.scores).all(axis=1)
    maps_ok = (np.isfinite(res.coarse.reshape(n, -1)).all(axis=1)
               & np.isfinite(res.cams.reshape(n, -1)).all(axis=1))
    if scores_ok.all() and maps_ok.all():
        return res
    bad = np.flatnonzero(~(scores_ok & maps_ok))
    first = int(bad[0])
    if not scores_ok[first]:
        c = int(np.flatnonzero(~np.isfinite(res.scores[first]))[0])
        what = f"non-finite score for class {c}"
    else:
        what = "non-finite map (the gradient or the activation overflowed or is NaN)"
    where = f" (sample {first})" if n > 1 else ""
    raise NonFiniteError(f"{what}{where}: check the model's weights or --std",
                         [int(i) for i in bad])
