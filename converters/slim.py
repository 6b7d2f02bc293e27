"""TF-Slim checkpoints: rebuild ``tf_slim.nets.<net>`` in graph mode, restore, freeze.

Model-zoo checkpoints have no ``.meta`` graph, so the net is rebuilt from code with
``is_training=False`` and the checkpoint restored into it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from onnx_gradcam.converters import _tf, slim_compat
from onnx_gradcam.converters.options import ConvertOptions, parse_preprocess
from onnx_gradcam.converters.source import Source

from onnx_gradcam.errors import OnnxGradCamError


@dataclass(frozen=True)
class SlimNet:
    """Where a net lives in ``tf_slim.nets`` and how its checkpoints were trained."""

    module: str
    fn: str
    arg_scope: str
    preprocess: str  # preset: "vgg" mean subtraction or "inception" [-1, 1]

    @property
    def name(self) -> str:
        return self.fn


def _nets() -> dict[str, SlimNet]:
    nets = {
        "alexnet_v2": SlimNet("alexnet", "alexnet_v2", "alexnet_v2_arg_scope", "vgg"),
        "overfeat": SlimNet("overfeat", "overfeat", "overfeat_arg_scope", "vgg"),
    }
    for v in ("v1", "v2", "v3"):
        nets[f"inception_{v}"] = SlimNet(
            "inception", f"inception_{v}", f"inception_{v}_arg_scope", "inception"
        )
    for depth in (50, 101, 152, 200):
        nets[f"resnet_v1_{depth}"] = SlimNet("resnet_v1", f"resnet_v1_{depth}",
                                             "resnet_arg_scope", "vgg")
        nets[f"resnet_v2_{depth}"] = SlimNet("resnet_v2", f"resnet_v2_{depth}",
                                             "resnet_arg_scope", "inception")
    for vgg in ("vgg_a", "vgg_16", "vgg_19"):
        nets[vgg] = SlimNet("vgg", vgg, "vgg_arg_scope", "vgg")
    return nets


SLIM_NETS = _nets()

def preprocessing(net: SlimNet) -> dict[str, object]:
    """Inception-style [-1, 1], or tf_slim's vgg_preprocessing: RGB 0..255 minus the mean."""
    if net.preprocess == "inception":
        return parse_preprocess("inception")
    return {"color": "RGB", "scale": 1.0, "mean": (123.68, 116.78, 103.94), "std": (1.0,) * 3}


def get_net(name: str | None) -> SlimNet:
    if name not in SLIM_NETS:
        raise OnnxGradCamError(
            f"unknown --slim-net {name!r}: use one of {', '.join(sorted(SLIM_NETS))}"
        )
    return SLIM_NETS[name]


def checkpoint_prefix(path: Path | None) -> str:
    """The checkpoint prefix, with every ``.data`` shard the index needs present."""
    if path is None:
        raise OnnxGradCamError("--slim-net needs --checkpoint PREFIX (the path before .index)")
    text = re.sub(r"\.(index|meta|data-\d+-of-\d+)$", "", str(path))
    prefix = Path(text)
    if prefix.is_dir():
        tf = _tf.tensorflow()
        latest = tf.train.latest_checkpoint(str(prefix))
        if latest is None:
            raise OnnxGradCamError(f"--checkpoint {prefix}: the folder holds no checkpoint")
        prefix = Path(latest)
    if prefix.is_file():  # a V1 checkpoint (model zoo's *.ckpt): one file
        return str(prefix)
    index = Path(f"{prefix}.index")
    if not index.exists():
        raise OnnxGradCamError(f"--checkpoint {prefix}: no {index.name} (pass the prefix)")
    shards = list(prefix.parent.glob(f"{prefix.name}.data-*-of-*"))
    counts = {int(s.name.rsplit("-of-", 1)[1]) for s in shards}
    if not shards:
        raise OnnxGradCamError(f"--checkpoint {prefix}: no {prefix.name}.data-* shard files")
    total = max(counts)
    missing = [f"{prefix.name}.data-{i:05d}-of-{total:05d}" for i in range(total)
               if not Path(f"{prefix}.data-{i:05d}-of-{total:05d}").exists()]
    if missing:
        raise OnnxGradCamError(
            f"--checkpoint {prefix}: missing shard(s) {', '.join(missing)}"
        )
    return str(prefix)


def build(net: SlimNet, num_classes: int, size: tuple[int, int]) -> tuple[object, dict]:
    """Build ``net`` in a new graph: (graph, {"input", "logits", "end_points"})."""
    tf = _tf.tensorflow()
    slim_compat.tf_slim()
    nets = _tf.require(f"tf_slim.nets.{net.module}")
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, *size, 3], name="input")
        scope = _tf.require("tf_slim").arg_scope(getattr(nets, net.arg_scope)())
        with tf.compat.v1.variable_scope("", use_resource=False), scope:
            net_out, end_points = getattr(nets, net.fn)(
                x, num_classes=num_classes, is_training=False
            )
        if net_out.shape.rank == 4:
            logits = tf.squeeze(net_out, [1, 2], name="logits")
        else:
            logits = tf.identity(net_out, name="logits")
    return graph, {"input": x, "logits": logits, "end_points": end_points}


def default_size(net: SlimNet) -> tuple[int, int]:
    nets = _tf.require(f"tf_slim.nets.{net.module}")
    size = int(getattr(getattr(nets, net.fn), "default_image_size", 224))
    return size, size


def _check_shapes(graph: object, prefix: str, net: SlimNet, num_classes: int) -> list[object]:
    """The model variables, after checking that the checkpoint has each with the same shape."""
    tf = _tf.tensorflow()
    reader = tf.train.load_checkpoint(prefix)
    stored = reader.get_variable_to_shape_map()
    variables = graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES)
    for var in variables:
        name = var.op.name
        if name not in stored:
            raise OnnxGradCamError(
                f"checkpoint {prefix} has no variable {name}: is it a {net.name} checkpoint?"
            )
        want = var.shape.as_list()
        if list(stored[name]) != want:
            if "logits" in name.lower() or name.endswith(("fc8/weights", "fc8/biases")):
                raise OnnxGradCamError(
                    f"--num-classes {num_classes} does not match checkpoint {prefix}: {name} has "
                    f"shape {list(stored[name])}, so pass --num-classes {stored[name][-1]}"
                )
            raise OnnxGradCamError(
                f"checkpoint {prefix}: {name} has shape {list(stored[name])}, "
                f"{net.name} needs {want}"
            )
    return variables


def load(options: ConvertOptions) -> Source:
    """Rebuild, restore and freeze ``--slim-net`` from ``--checkpoint``."""
    net = get_net(options.slim_net)
    if options.num_classes is None or options.num_classes < 1:
        raise OnnxGradCamError("--slim-net needs --num-classes N (1001 for most zoo models)")
    prefix = checkpoint_prefix(options.checkpoint)
    tf = _tf.tensorflow()
    size = options.input_size or default_size(net)
    graph, t = build(net, options.num_classes, size)
    variables = _check_shapes(graph, prefix, net, options.num_classes)
    logits_op = t["logits"].op.name
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as sess:
        tf.compat.v1.train.Saver(var_list=variables).restore(sess, prefix)
        graph_def = tf.compat.v1.graph_util.convert_variables_to_constants(
            sess, graph.as_graph_def(), [logits_op]
        )
    aliases: dict[str, str] = {}
    for key, tensor in t["end_points"].items():
        aliases[key] = tensor.name
        aliases.setdefault(key.rsplit("/", 1)[-1], tensor.name)
    return Source(
        graph_def=graph_def,
        inputs=[t["input"].name],
        score=t["logits"].name,
        preprocessing=preprocessing(net),
        layer_aliases=aliases,
    )
