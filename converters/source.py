"""What every source format hands to the common pipeline: a frozen graph and what it means."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Source:
    """A frozen TF GraphDef (variables folded to constants) plus the facts the source knows."""

    graph_def: object  # tf.compat.v1.GraphDef
    inputs: list[str]  # tensor names; the first is the image
    score: str  # tensor name of the class scores
    preprocessing: dict[str, object] | None = None  # color/scale/mean/std fields, None = unknown
    layer_aliases: dict[str, str] = field(default_factory=dict)  # e.g. Slim end points
    default_layer: str | None = None  # tensor name, when the source knows its target layer
