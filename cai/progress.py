"""Progress bars for long work: items done, items/s, tokens/s, elapsed and remaining time."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from cai import terminal


class RateColumn(ProgressColumn):
    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        rate = task.completed / elapsed if elapsed > 0 else 0.0
        return Text(f"{rate:.2f} {self.unit}/s", style="progress.data.speed")


class TokensColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        toks = task.fields.get("tokens", 0)
        return Text(f"{toks / elapsed:.0f} tok/s" if elapsed > 0 else "- tok/s", style="progress.data.speed")


def make_progress(unit: str = "records", console: Console | None = None) -> Progress:
    """A rich progress bar; pass `tokens=` in `progress.update(task, advance=..., tokens=...)`."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(unit),
        TokensColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console or terminal.err,
        transient=False,
        # Library output during a bar goes where it would anyway (cai.log), not above the bar.
        redirect_stdout=False,
        redirect_stderr=False,
    )
