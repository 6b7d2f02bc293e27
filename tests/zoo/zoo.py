"""Keras applications converted with tf2onnx, and TensorFlow's own gradients for them (oracle 3).

For each architecture: build it with ``weights=None`` at a small input size, give its
BatchNormalization layers sane statistics (so activations neither vanish nor explode), convert it
with tf2onnx the way ``onnx-gradcam convert`` does
(``onnx_gradcam.converters.export.graph_to_onnx``, opset 17, symbolic batch), find the ONNX
tensor inside the graph that holds each chosen Keras layer output (by value: the graph keeps it
NCHW) and record ``tf.GradientTape``'s gradient of the
target logits w.r.t. those layer outputs.

TF's reference is taken twice: in float32 (the model as converted) and in float64 (the same
weights in a float64 Keras model); see ``float64.py`` for why. For the architectures in
``NATIVE64`` the float64 Keras model is converted too (``<model>.f64.onnx``): tf2onnx folds
BatchNormalization into the conv weights in the model's own dtype, so the float32 model cast to
double carries weights ~1e-7 off TF's float64 ones, which flips a few near-zero ReLU decisions in
a deep ReLU head (DenseNet121: 3 flips, |x| ≤ 1.4e-6, gradient 6e-3 off at conv1_relu; on the
native double model, 1.6e-15. InceptionV3: 1.1e-2 / 1.0e-2 at activation_4 / mixed3 cast, 2.8e-15 /
1.9e-15 native. MobileNetV2: ~5e-3 cast, 2.1e-15 native).

Everything is cached under ``.cache/zoo/<versions>-v<BUILD>-<hash of ARCHS>/``
(``ONNX_GRADCAM_ZOO_CACHE`` overrides the root): a conversion costs 20–60 s; the cache makes a
re-run cost only ORT time. TensorFlow is imported only when something has to be (re)built.
Bump ``BUILD`` when the way cases are built changes.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[2]
INSTALL_HINT = "pip install 'onnx-gradcam[tf]'"
SKIP_ENV = "ONNX_GRADCAM_SKIP_TF"
OPSET = 17
BATCH = 2
BUILD = 8  # 8: converted through converters/ (was tf2onnx.convert.from_keras)


@dataclass(frozen=True)
class Tap:
    """A Keras tensor to explain: a layer's output, or (``input=True``) its input (for tensors no
    layer outputs, e.g. ConvNeXt's residual sums)."""

    layer: str
    input: bool = False

    @property
    def key(self) -> str:
        return f"{self.layer}.input" if self.input else self.layer


@dataclass(frozen=True)
class Arch:
    name: str  # keras.applications attribute
    size: int  # test input size (H = W)
    taps: tuple[Tap, Tap, Tap]  # early, middle, last conv activation
    raw: bool = False  # the model rescales 0..255 itself (include_preprocessing)
    softmax: bool = False  # keep the softmax head (the explainer must find the logits)
    kwargs: dict = field(default_factory=dict)


#: Converted in float64 as well (see the module docstring): the architectures whose float32 model
#: cast to double is > 1e-4 off TF float64 at some tap because BN folding in float32 flips a
#: decision. Kept out of ``Arch`` so the set can change without rebuilding every case.
NATIVE64 = frozenset({"DenseNet121", "MobileNetV2", "InceptionV3"})


def _t(*names: str) -> tuple[Tap, ...]:
    return tuple(Tap(n[1:], True) if n.startswith("<") else Tap(n) for n in names)


#: early, middle, last: the early layer puts most of the backbone into the differentiated head.
ARCHS: dict[str, Arch] = {a.name: a for a in [
    Arch("ResNet50", 96, _t("conv1_relu", "conv4_block1_out", "conv5_block3_out"), softmax=True),
    Arch("MobileNetV2", 96, _t("block_1_expand_relu", "block_6_expand_relu", "out_relu")),
    Arch("MobileNetV3Small", 96, _t("activation", "activation_11", "activation_17"), raw=True),
    Arch("MobileNetV3Large", 96, _t("activation", "activation_9", "activation_19"), raw=True),
    Arch("EfficientNetB0", 96, _t("block2a_expand_activation", "block4b_activation",
                                  "top_activation"), raw=True),
    Arch("DenseNet121", 96, _t("conv1_relu", "conv4_block1_concat", "relu")),
    # Inception needs >= 75 px; 139 is the smallest size whose mixed10 is 3x3 (96 gives 1x1)
    Arch("InceptionV3", 139, _t("activation_4", "mixed3", "mixed10")),
    Arch("VGG16", 96, _t("block1_conv2", "block3_conv3", "block5_conv3"), softmax=True,
         kwargs={"classes": 100}),
    Arch("Xception", 96, _t("block1_conv2_act", "block8_sepconv1_act", "block14_sepconv2_act")),
    Arch("ConvNeXtTiny", 96, _t("<convnext_tiny_stage_0_block_1_depthwise_conv",
                                "<convnext_tiny_stage_2_block_3_depthwise_conv",
                                "<convnext_tiny_head_gap"), raw=True),
]}


def tf_status() -> str | None:
    """None if TensorFlow, Keras and tf2onnx are importable; else what to install."""
    missing = [m for m in ("tensorflow", "keras", "tf2onnx") if importlib.util.find_spec(m) is None]
    if missing:
        return f"the Keras zoo tests need {', '.join(missing)}: {INSTALL_HINT}"
    return None


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def cache_dir() -> Path:
    """The cache folder for this TF/Keras/tf2onnx, this build recipe and this table of cases."""
    root = Path(os.environ.get("ONNX_GRADCAM_ZOO_CACHE", ROOT / ".cache" / "zoo"))
    digest = hashlib.sha1(repr(sorted(ARCHS.items())).encode()).hexdigest()[:8]
    tf_dist = next((d for d in ("tensorflow", "tensorflow-cpu") if _version(d) != "none"), "tf")
    key = (f"tf{_version(tf_dist)}-keras{_version('keras')}-tf2onnx{_version('tf2onnx')}"
           f"-v{BUILD}-{digest}")
    return root / key


@dataclass
class Case:
    """One converted architecture with TF's reference values (arrays NHWC, as TF has them)."""

    arch: Arch
    size: int
    model_path: Path
    taps: list[str]  # tap keys, early to last
    x: np.ndarray  # (N, H, W, 3) float32 input batch
    targets: np.ndarray  # (N,) int64
    logits: np.ndarray  # (N, C) TF float32 pre-softmax scores
    logits64: np.ndarray  # (N, C) the same in float64
    acts: dict[str, np.ndarray]  # tap key -> (N, h, w, K), float32
    grads: dict[str, np.ndarray]  # tap key -> d Σ_n logits[n, targets[n]] / d act, float32
    grads64: dict[str, np.ndarray]  # the same in float64
    onnx_names: dict[str, str]  # tap key -> ONNX tensor holding it inside the graph
    onnx_layouts: dict[str, str]  # tap key -> NCHW | NHWC (of that ONNX tensor)
    meta: dict = field(default_factory=dict)

    @property
    def model(self) -> onnx.ModelProto:
        return onnx.load(str(self.model_path))

    @property
    def model64(self) -> tuple[onnx.ModelProto, dict[str, str]] | None:
        """(tf2onnx's conversion of the float64 twin, tap key -> ONNX name) if built, else None."""
        path = self.model_path.with_suffix(".f64.onnx")
        names = self.meta.get("onnx_names64")
        return (onnx.load(str(path)), names) if names and path.exists() else None

    def nchw(self, array: np.ndarray) -> np.ndarray:
        return array.transpose(0, 3, 1, 2)


def case_stem(arch: Arch, size: int, symbolic_hw: bool) -> tuple[str, str]:
    """(model file stem, reference file stem)."""
    model = f"{arch.name}-hw" if symbolic_hw else f"{arch.name}-{size}"
    return model, f"{model}-{size}" if symbolic_hw else model


def load_case(arch: Arch, size: int | None = None, symbolic_hw: bool = False,
              sizes: tuple[int, ...] = (96, 128), cache: Path | None = None) -> Case:
    """The cached case, built (with TensorFlow) first if absent. ``symbolic_hw``: the model is
    converted with input (None, None, None, 3) and references are kept for each of ``sizes``."""
    size = size or (sizes[0] if symbolic_hw else arch.size)
    folder = cache or cache_dir()
    model_stem, stem = case_stem(arch, size, symbolic_hw)
    meta_path = folder / f"{stem}.json"
    if not meta_path.exists():
        _build(arch, size, sizes, symbolic_hw, folder, stem)
    meta = json.loads(meta_path.read_text())
    if arch.name in NATIVE64 and "onnx_names64" not in meta:
        _build(arch, size, sizes, symbolic_hw, folder, stem, native64_only=True)
        meta = json.loads(meta_path.read_text())
    data = np.load(folder / f"{stem}.npz")
    keys = [k for k in meta["taps"] if k in meta["onnx_names"]]
    return Case(arch, size, folder / f"{model_stem}.onnx", meta["taps"], data["x"],
                data["targets"], data["logits"], data["logits64"],
                {k: data[f"act:{k}"] for k in keys}, {k: data[f"grad:{k}"] for k in keys},
                {k: data[f"grad64:{k}"] for k in keys}, meta["onnx_names"],
                meta["onnx_layouts"], meta)


def _build(arch: Arch, size: int, sizes: tuple[int, ...], symbolic_hw: bool, folder: Path,
           stem: str, native64_only: bool = False) -> None:
    """Build in a subprocess: a conversion holds GBs it never frees."""
    import subprocess
    import sys

    args = [arch.name, ",".join(map(str, sizes if symbolic_hw else (size,))),
            "hw" if symbolic_hw else "fixed", str(folder)] + (["native64"] if native64_only else [])
    proc = subprocess.run([sys.executable, "-m", "tests.zoo.zoo", *args], cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"building {stem} failed:\n{proc.stderr[-3000:]}")


# ---- building (needs TensorFlow) ---------------------------------------------------------------
def _tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf
    import tf2onnx

    tf.get_logger().setLevel("ERROR")
    return tf, keras, tf2onnx


def inputs(arch: Arch, size: int, n: int, seed: int) -> np.ndarray:
    """Random images in the range the model takes (0..255 raw, else about −1..1)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 255.0, (n, size, size, 3))
    return (x if arch.raw else x / 127.5 - 1.0).astype(np.float32)


def keras_model(arch: Arch, size: int | None, symbolic_hw: bool = False, seed: int = 0,
                calibrate: bool = True):
    """The application with random weights and calibrated BatchNormalization statistics.

    BN: γ ~ U(0.5, 1.5), β ~ U(−0.25, 0.25); then one training-mode pass with momentum 0 (and
    dropout off) sets each moving mean/variance to the batch statistics it sees, so every layer's
    output stays O(1) in inference. ConvNeXt's LayerScale γ (init 1e-6) ~ U(0.2, 1).
    """
    tf, keras, _ = _tf()
    keras.backend.clear_session()  # deterministic auto names (activation_17, …)
    keras.utils.set_random_seed(seed)
    builder: Callable = getattr(keras.applications, arch.name)
    extra = dict(arch.kwargs)
    if not arch.softmax:
        extra["classifier_activation"] = None
    if symbolic_hw:
        base = builder(weights=None, include_top=False, input_shape=(None, None, 3),
                       pooling="avg")
        logits = keras.layers.Dense(10, name="predictions")(base.output)
        model = keras.Model(base.input, logits)
    else:
        model = builder(weights=None, input_shape=(size, size, 3), **extra)
    if not calibrate:
        return model
    rng = np.random.default_rng(seed)
    saved = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            if layer.gamma is not None:  # InceptionV3 has scale=False
                layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape).astype(np.float32))
            if layer.beta is not None:
                layer.beta.assign(rng.uniform(-0.25, 0.25, layer.beta.shape).astype(np.float32))
            saved.append((layer, "momentum", layer.momentum))
            layer.momentum = 0.0
        elif isinstance(layer, keras.layers.Dropout):
            saved.append((layer, "rate", layer.rate))
            layer.rate = 0.0
        elif type(layer).__name__ == "LayerScale":
            layer.gamma.assign(rng.uniform(0.2, 1.0, layer.gamma.shape).astype(np.float32))
    calibration = inputs(arch, size or 96, 8, seed + 1)
    model(calibration, training=True)
    for layer, attr, value in saved:
        setattr(layer, attr, value)
    return model


def _tap_tensor(model, tap: Tap):
    layer = model.get_layer(tap.layer)
    return layer.input if tap.input else layer.output


def _logits_model(model, arch: Arch):
    """The model returning pre-softmax scores: a softmax head's activation becomes linear
    (after conversion, so the ONNX model keeps its Softmax)."""
    _, keras, _ = _tf()
    if arch.softmax and model.layers[-1].name == "predictions":
        head = model.layers[-1]
        head.activation = keras.activations.linear
    return model


def tf_reference(model, taps: list[Tap], x: np.ndarray, targets: np.ndarray | None):
    """(logits, targets, acts, grads): GradientTape of Σ_n logits[n, t_n] w.r.t. each tap.
    ``model`` returns logits. Default targets: sample 0's argmax, a fixed other class for the
    rest (so a non-argmax target is checked too)."""
    tf, keras, _ = _tf()
    sub = keras.Model(model.inputs, [_tap_tensor(model, t) for t in taps] + [model.outputs[0]])
    with tf.GradientTape() as tape:
        *acts, logits = sub(tf.constant(x), training=False)
        if targets is None:
            top = int(np.argmax(logits.numpy()[0]))
            targets = np.array([top] + [(top + 7) % logits.shape[1]] * (len(x) - 1), np.int64)
        score = tf.reduce_sum(tf.gather(logits, targets, axis=1, batch_dims=1))
    grads = tape.gradient(score, acts)
    return (logits.numpy(), targets, [a.numpy() for a in acts], [g.numpy() for g in grads])


def float64_twin(model, arch: Arch, size: int | None, symbolic_hw: bool):
    """The same network and weights in float64 (Keras builds it afresh with floatx float64)."""
    _, keras, _ = _tf()
    weights = model.get_weights()
    keras.config.set_floatx("float64")
    try:
        twin = keras_model(arch, size, symbolic_hw, calibrate=False)
        twin.set_weights([w.astype(np.float64) if w.dtype == np.float32 else w for w in weights])
    finally:
        keras.config.set_floatx("float32")
    return _logits_model(twin, arch)


def convert(model, size: int | None, dtype: str = "float32") -> onnx.ModelProto:
    """tf2onnx's conversion as ``onnx-gradcam convert`` runs it (``converters``: the frozen
    inference call, library-function calls inlined, Erfc written as 1 − Erf), without the
    activation output and metadata that ``convert`` adds."""
    tf, _, _ = _tf()
    from onnx_gradcam.converters import export
    from onnx_gradcam.converters.keras import freeze_model

    spec = tf.TensorSpec((None, size, size, 3), getattr(tf, dtype), name="input")
    graph_def, inputs, outputs = freeze_model(model, spec, model.name)
    return export.graph_to_onnx(graph_def, inputs, outputs, opset=OPSET, nchw=False)


def map_tensors(proto: onnx.ModelProto, taps: list[Tap], acts: list[np.ndarray],
                x: np.ndarray) -> tuple[dict[str, str], dict[str, str], dict[str, float]]:
    """For each tap, the ONNX tensor whose value equals the Keras tensor.

    Every rank-4 float node output is exposed and run once; a candidate matches when
    max|onnx − tf| ≤ 1e-3·max|tf| in NCHW (transposed) or NHWC layout. A match that is only a
    Transpose/Identity copy of another match is dropped: the gradient w.r.t. a copy misses the
    consumers of the original. Among the rest: a name containing the Keras layer's name first,
    then NCHW, then the one latest in the graph.
    """
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    elem = model.graph.input[0].type.tensor_type.elem_type  # FLOAT, or DOUBLE for the twin
    inferred = onnx.shape_inference.infer_shapes(model)
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in inferred.graph.value_info
             if v.type.tensor_type.elem_type == elem}
    order = [o for n in model.graph.node for o in n.output if ranks.get(o) == 4]
    feed = x.astype(np.float64 if elem == onnx.TensorProto.DOUBLE else np.float32)
    if elem == onnx.TensorProto.DOUBLE:  # ONNX Runtime has no double Conv
        from tests.zoo.float64 import evaluator

        run = evaluator(model).run(order, {model.graph.input[0].name: feed})
    else:
        import onnxruntime as ort
        from onnx import helper

        existing = {o.name for o in model.graph.output}
        for name in order:
            if name not in existing:
                model.graph.output.append(helper.make_tensor_value_info(name, elem, None))
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(model.SerializeToString(), opts,
                                    providers=["CPUExecutionProvider"])
        run = sess.run(order, {sess.get_inputs()[0].name: feed})
    values = dict(zip(order, run))
    producer = {o: n for n in model.graph.node for o in n.output}
    names, layouts, errors = {}, {}, {}
    for tap, act in zip(taps, acts):
        want = {"NCHW": act.transpose(0, 3, 1, 2), "NHWC": act}
        scale = float(np.abs(act).max())
        matches = {}
        for pos, name in enumerate(order):
            value = values[name]
            for layout, ref in want.items():
                if value.shape == ref.shape:
                    err = float(np.abs(value - ref).max()) / scale
                    if err <= 1e-3:
                        matches[name] = (pos, layout, err)
        best = None
        for name, (pos, layout, err) in matches.items():
            node = producer.get(name)
            if node is not None and node.op_type in ("Transpose", "Identity") and (
                    node.input[0] in matches):
                continue
            named = f"/{tap.layer}_1/" in name or f"/{tap.layer}/" in name  # tf scope names
            rank = (named, layout == "NCHW", pos)
            if best is None or rank > best[0]:
                best = (rank, name, layout, err)
        if best is not None:
            names[tap.key], layouts[tap.key], errors[tap.key] = best[1], best[2], best[3]
    return names, layouts, errors


def build_case(arch: Arch, sizes: tuple[int, ...], symbolic_hw: bool, folder: Path,
               native64_only: bool = False) -> None:
    """Build, convert, map and record one architecture into ``folder`` (atomically per file).
    ``native64_only``: add only the float64 conversion (and its tensor names) to a built case."""
    import time

    start = time.perf_counter()
    model = keras_model(arch, None if symbolic_hw else sizes[0], symbolic_hw)
    taps = list(arch.taps)
    if symbolic_hw:  # include_top=False: the last conv activation is the base's output
        taps[-1] = Tap(model.layers[-3].name)
    fixed = None if symbolic_hw else sizes[0]
    proto = None if native64_only else convert(model, fixed)
    model = _logits_model(model, arch)
    twin = float64_twin(model, arch, fixed, symbolic_hw)
    proto64 = convert(twin, fixed, "float64") if arch.name in NATIVE64 else None
    folder.mkdir(parents=True, exist_ok=True)
    model_stem, _ = case_stem(arch, sizes[0], symbolic_hw)
    if proto64 is not None:
        _atomic(folder / f"{model_stem}.f64.onnx", proto64.SerializeToString())
    if native64_only:
        for size in sizes:
            _, stem = case_stem(arch, size, symbolic_hw)
            meta = json.loads((folder / f"{stem}.json").read_text())
            data = np.load(folder / f"{stem}.npz")
            x64 = data["x"].astype(np.float64)
            _, _, acts64, grads64 = tf_reference(twin, taps, x64, data["targets"])
            for tap, g64 in zip(taps, grads64):  # the rebuilt twin is the cached one
                assert np.array_equal(g64, data[f"grad64:{tap.key}"]), (stem, tap.key)
            meta["onnx_names64"] = map_tensors(proto64, taps, acts64, x64)[0]
            _atomic(folder / f"{stem}.json", json.dumps(meta, indent=1).encode())
        return
    _atomic(folder / f"{model_stem}.onnx", proto.SerializeToString())
    for size in sizes:
        x = inputs(arch, size, BATCH, seed=2)
        logits, targets, acts, grads = tf_reference(model, taps, x, None)
        logits64, _, acts64, grads64 = tf_reference(twin, taps, x.astype(np.float64), targets)
        names, layouts, errors = map_tensors(proto, taps, acts, x)
        arrays = {"x": x, "targets": targets, "logits": logits, "logits64": logits64}
        for tap, a, g, g64 in zip(taps, acts, grads, grads64):
            arrays[f"act:{tap.key}"], arrays[f"grad:{tap.key}"] = a, g
            arrays[f"grad64:{tap.key}"] = g64
        meta = {"arch": arch.name, "size": size, "taps": [t.key for t in taps],
                "onnx_names": names, "onnx_layouts": layouts, "match_errors": errors,
                "build_seconds": round(time.perf_counter() - start, 1)}
        if proto64 is not None:
            meta["onnx_names64"] = map_tensors(proto64, taps, acts64, x.astype(np.float64))[0]
        _, stem = case_stem(arch, size, symbolic_hw)
        with tempfile.NamedTemporaryFile(dir=folder, suffix=".npz", delete=False) as f:
            np.savez(f, **arrays)
        os.replace(f.name, folder / f"{stem}.npz")
        _atomic(folder / f"{stem}.json", json.dumps(meta, indent=1).encode())


def _atomic(path: Path, data: bytes) -> None:
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as f:
        f.write(data)
    os.replace(f.name, path)


if __name__ == "__main__":
    import sys

    name, sizes, kind, folder = sys.argv[1:5]
    build_case(ARCHS[name], tuple(int(v) for v in sizes.split(",")), kind == "hw", Path(folder),
               native64_only=sys.argv[5:] == ["native64"])
