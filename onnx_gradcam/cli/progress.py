"""One live progress bar for the commands that go over many images: count and images/s."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn
from rich.text import Text


class _Rate(ProgressColumn):
    def render(self, task) -> Text:
        return Text(f"{task.speed or 0:.1f} images/s")


def image_bar(verb: str, console: Console) -> Progress:
    return Progress(TextColumn(verb), BarColumn(), MofNCompleteColumn(), _Rate(),
                    console=console, transient=True)
