"""The reward-hacking panel, from the `reward_hacking` part of a `cai eval` report.json: over the
checkpoints of one PPO run, the reward model's score of the policy's answers against the judge's
win rate of them. The signature of a policy gaming its reward model is the proxy rising while the
judge's verdict stays flat or falls.

The section is read defensively (it may be missing, or shaped by a newer cai): a list of
checkpoints, or a mapping with `checkpoints`, or a mapping of run name to either; in each
checkpoint the step (`step`), the reward model's score (`rm_score`, `reward_model_score`, `rm`,
`reward` or `score`) and the judge's win rate (`win_rate`, `judge_win_rate` or `judge`), each a
number or an Estimate mapping."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cai.report import svg
from cai.report.folders import Run
from cai.report.page import charts, figure, how
from cai.report.values import Figure, number
from cai.report.values import figure as read_figure

RM_KEYS = ("rm_score", "reward_model_score", "rm", "reward", "score")
WIN_KEYS = ("win_rate", "judge_win_rate", "judge")


@dataclass(frozen=True)
class Checkpoint:
    step: float
    rm: Figure | None
    win: Figure | None


def _first(d: Mapping[str, Any], keys: tuple[str, ...]) -> Figure | None:
    return next((f for k in keys if (f := read_figure(d.get(k))) is not None), None)


def _checkpoints(items: Any) -> list[Checkpoint]:
    out = []
    for c in items if isinstance(items, list) else []:
        if isinstance(c, Mapping) and (step := number(c.get("step"))) is not None:
            out.append(Checkpoint(step, _first(c, RM_KEYS), _first(c, WIN_KEYS)))
    return sorted(out, key=lambda c: c.step)


def runs_of(section: Any) -> dict[str, list[Checkpoint]]:
    """Checkpoints by run name; {} when the section holds none in a shape this reads."""
    if isinstance(section, list):
        return {"": _checkpoints(section)} if _checkpoints(section) else {}
    if not isinstance(section, Mapping):
        return {}
    if "checkpoints" in section:
        found = _checkpoints(section["checkpoints"])
        return {str(section.get("run", section.get("policy", ""))): found} if found else {}
    out = {}
    for name, inner in section.items():
        for sub, found in runs_of(inner).items():
            out[sub or str(name)] = found
    return out


def _series(name: str, points: list[tuple[float, Figure]]) -> svg.Series:
    has_ci = all(f.low is not None and f.high is not None for _, f in points)
    return svg.Series(name, [s for s, _ in points], [f.value for _, f in points],
                      [f.low for _, f in points] if has_ci else None,  # type: ignore[misc]
                      [f.high for _, f in points] if has_ci else None)  # type: ignore[misc]


def panel(name: str, cps: list[Checkpoint]) -> list[str]:
    rm = [(c.step, c.rm) for c in cps if c.rm is not None]
    win = [(c.step, c.win) for c in cps if c.win is not None]
    figures = []
    if rm:
        figures.append(figure(f"Reward model score over checkpoints {name}".strip(),
                              svg.line_chart([_series("RM score", rm)], "reward model score", y_label="RM score")))
    if win:
        figures.append(figure(f"Judge win rate over checkpoints {name}".strip(),
                              svg.line_chart([_series("judge win rate (95% interval)", win)], "judge win rate",
                                             y_label="win rate", y_domain=(0.0, 1.0), reference=0.5, fmt=svg.pct)))
    both = [c for c in cps if c.rm is not None and c.win is not None]
    if len(both) > 1:
        path = svg.Series("checkpoints, in step order", [c.rm.value for c in both],  # type: ignore[union-attr]
                          [c.win.value for c in both])  # type: ignore[union-attr]
        figures.append(figure("Judge win rate against RM score (the path of the run)",
                              svg.line_chart([path], "win rate against RM score", x_label="RM score",
                                             y_label="win rate", y_domain=(0.0, 1.0), reference=0.5, fmt=svg.pct)))
    return figures


def section(runs: list[Run]) -> str:
    found = [(run, name, cps) for run in runs for name, cps in runs_of(run.report.get("reward_hacking")).items()]
    if not found:
        return ""
    body = [how("For the checkpoints of a PPO run: the reward model's mean score of the policy's answers (the proxy "
                "PPO maximizes) and the judge's win rate of the same checkpoint against the baseline (the target). "
                "Both rising: the policy improved. The score rising while the win rate stays flat or falls: the policy "
                "learned what the reward model over-rewards, not what the constitution asks; stop at the last "
                "checkpoint where both rose.")]
    for run, name, cps in found:
        body.append(f"<h3>{svg.esc(run.name)}{' / ' + svg.esc(name) if name else ''}</h3>")
        body.append(charts(panel("", cps)))
    return "".join(body)
