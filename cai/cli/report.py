"""`cai report DIR... --out report.html`: a thin layer over `cai.report.write_report`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from cai.cli.common import console
from cai.cli.root import app
from cai.report import SAMPLES, write_report


@app.command("report")
def report(
    folders: Annotated[list[Path], typer.Argument(
        help="Run folders of cai eval, judge eval, revise, label, ppo, sft or rm train (or folders holding them).",
        show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="The HTML file to write.")] = Path("report.html"),
    title: Annotated[str, typer.Option("--title", help="The page's title.")] = "cai report",
    samples: Annotated[int, typer.Option("--samples", min=0, help="Prompts shown side by side.")] = SAMPLES,
) -> None:
    """Write one self-contained HTML page (works offline) from run folders: the eval ladder with its
    intervals and costs, reward hacking, PPO and training curves, the judge's calibration and
    consistency, principle usage and effect, and samples side by side."""
    s = write_report(folders, out, title=title, n_samples=samples)
    for folder, kind in s.runs:
        console.print(f"read {kind}: {escape(str(folder))}", highlight=False)  # a folder name may hold [/b]
    for folder in s.skipped:
        console.print(f"[yellow]Warning:[/] skipped {escape(str(folder))}: no run folder of a stage cai report reads",
                      highlight=False)
    panels = ", ".join(s.sections) or "no panel (nothing to draw)"
    console.print(f"[bold green]done[/] {escape(panels)} -> {escape(str(s.out))}", highlight=False)
