"""Progress bars for long work: items done, items/s, tokens/s, elapsed and remaining time."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

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


def make_progress(unit: str = "records", console: Console | None = None,
                  rates: Sequence[ProgressColumn] | None = None) -> Progress:
    """A rich progress bar (every bar of cai is one of these); pass `tokens=` in
    `progress.update(task, advance=..., tokens=...)`. `rates`: the columns after the count,
    default `unit`/s and tokens/s."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *(rates if rates is not None else (RateColumn(unit), TokensColumn())),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console or terminal.err,
        transient=False,
        # Library output during a bar goes where it would anyway (cai.log), not above the bar.
        redirect_stdout=False,
        redirect_stderr=False,
    )


@contextlib.contextmanager
def step_progress(total: int, start: int, description: str, enabled: bool) -> Iterator[Callable[..., None]]:
    """A bar over optimizer steps showing samples/s and loss. Yields update(step, samples_per_s, loss)."""
    if not enabled:
        yield lambda *a, **k: None
        return
    rates = [TextColumn("{task.fields[speed]:>7.2f} samples/s  loss {task.fields[loss]:.4f}")]
    with make_progress("steps", rates=rates) as bar:
        task = bar.add_task(description, total=total, completed=start, speed=0.0, loss=float("nan"))

        def update(step: int, samples_per_s: float, loss: float) -> None:
            bar.update(task, completed=step, speed=samples_per_s, loss=loss)

        yield update
