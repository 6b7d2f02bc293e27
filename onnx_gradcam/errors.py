"""The one domain exception: every user-facing failure is an ``OnnxGradCamError``."""

from __future__ import annotations


class OnnxGradCamError(Exception):
    """A failure the user can act on; its message is one line naming the file, tensor or op."""

    exit_code: int = 1

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class UnsupportedOpError(OnnxGradCamError):
    """The head holds an op with no VJP rule; ``node_output`` names that node's first output."""

    def __init__(self, message: str, node_output: str = "") -> None:
        super().__init__(message)
        self.node_output = node_output


class NonFiniteError(OnnxGradCamError):
    """NaN or infinity in an input, a score or a map; ``samples`` are the batch indices."""

    def __init__(self, message: str, samples: list[int]) -> None:
        super().__init__(message)
        self.samples = samples
