"""`cai report DIR... --out report.html`: one self-contained HTML page from run folders.

It reads whatever run folders it is given (cai.report.folders tells each stage's folder by its
files) and shows a panel for each kind of data found: the eval ladder (ladder.py), the reward
hacking plot (hacking.py), PPO and training curves (curves.py), the judge's agreement,
consistency and calibration (judge.py), principle usage and effect (principles.py) and
side-by-side samples (samples.py). Charts are inline SVG drawn by svg.py; the page (page.py) has
no script and no link outside itself. Every text from a run folder is escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cai import __version__
from cai.atomic import write_text_atomic
from cai.report import curves, hacking, judge, ladder, principles, samples
from cai.report.folders import Run, load_runs
from cai.report.page import Section, render

SAMPLES = 6
"""Side-by-side samples shown by default."""


@dataclass(frozen=True)
class ReportSummary:
    out: Path
    runs: list[tuple[str, str]]
    """(folder, kind) of every run folder read."""
    skipped: list[str]
    """Subfolders of a given folder that are no run folder."""
    sections: list[str]
    """The titles of the panels drawn."""


def sections(runs: Sequence[Run], n_samples: int = SAMPLES) -> list[Section]:
    """The panels the runs have data for, in reading order."""
    of = {kind: [r for r in runs if r.kind == kind] for kind in ("eval", "ppo", "training", "judge_eval", "label",
                                                                  "revise")}
    candidates = [
        ("ladder", "The ladder", ladder.section(of["eval"]) if of["eval"] else ""),
        ("hacking", "Reward hacking", hacking.section(of["eval"])),
        ("ppo", "PPO curves", curves.ppo_section(of["ppo"]) if of["ppo"] else ""),
        ("training", "Training curves (SFT, reward model)",
         curves.training_section(of["training"]) if of["training"] else ""),
        ("judge", "The judge", judge.section(of["judge_eval"], of["label"]) if of["judge_eval"] or of["label"] else ""),
        ("principles", "Principles", principles.section(of["revise"]) if of["revise"] else ""),
        ("samples", "Samples side by side", samples.section(of["revise"], of["eval"], n_samples)),
    ]
    return [Section(id_, title, body) for id_, title, body in candidates if body]


def build_report(paths: Sequence[str | Path], *, title: str = "cai report",
                 n_samples: int = SAMPLES) -> tuple[str, ReportSummary]:
    """(the page, what it holds) for the run folders under `paths`; nothing is written."""
    runs, skipped = load_runs([Path(p) for p in paths])
    drawn = sections(runs, n_samples)
    footer = [f"cai {__version__}; cai report " + " ".join(str(p) for p in paths)]
    footer += [f"{r.kind}: {r.name}" for r in runs]
    footer += [f"skipped (no run folder): {p}" for p in skipped]
    summary = ReportSummary(Path(), [(r.name, r.kind) for r in runs], [str(p) for p in skipped],
                            [s.title for s in drawn])
    return render(title, drawn, footer), summary


def write_report(paths: Sequence[str | Path], out: str | Path, *, title: str = "cai report",
                 n_samples: int = SAMPLES) -> ReportSummary:
    """Build the page and write it to `out` atomically (a reader never sees half a page)."""
    page, summary = build_report(paths, title=title, n_samples=n_samples)
    write_text_atomic(out, page)
    return ReportSummary(Path(out), summary.runs, summary.skipped, summary.sections)
