"""The reward-hacking panel, from the `reward_hacking` part of a `cai eval` report.json: over the
checkpoints of one PPO run, the reward model's score of the policy's answers against the judge's
win rate of them. The signature of a policy gaming its reward model is the proxy rising while the
judge's verdict stays flat or falls.

`cai eval --hacking NAME=RUN` writes `reward_hacking[NAME]` = {run, reward_model, suites, steps:
[{step, policy, model, n, rm_score, win_rate}], verdict: {hacking, rm_score_rose, win_rate_fell,
rm_score_change, win_rate_change, rule, note}} (or an `error`: docs/eval.md). The section is read
defensively (it may be missing, or shaped by another version of cai): the checkpoints are a list
under `steps` or `checkpoints` (or the section itself), one run or a mapping of run name to one;
in each checkpoint the step (`step`), the reward model's score (`rm_score`, `reward_model_score`,
`rm`, `reward` or `score`) and the judge's win rate (`win_rate`, `judge_win_rate` or `judge`),
each a number or an Estimate mapping."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cai.report import svg
from cai.report.folders import Run
from cai.report.page import charts, figure, how, tiles
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


@dataclass(frozen=True)
class HackingRun:
    checkpoints: list[Checkpoint]
    entry: Mapping[str, Any]
    """The run's own entry (its verdict, error, run folder), {} for a bare list."""


def runs_of(section: Any) -> dict[str, HackingRun]:
    """The runs by name (their entries' key); {} when the section holds none in a shape this reads.
    A run with an `error` and no checkpoints is kept, to say why it has no plot."""
    if isinstance(section, list):
        return {"": HackingRun(_checkpoints(section), {})} if _checkpoints(section) else {}
    if not isinstance(section, Mapping):
        return {}
    key = next((k for k in ("steps", "checkpoints") if k in section), None)
    if key is not None or "error" in section:
        found = _checkpoints(section.get(key)) if key else []
        return {"": HackingRun(found, section)} if found or "error" in section else {}
    out = {}
    for name, inner in section.items():
        for sub, run in runs_of(inner).items():
            out[sub or str(name)] = run
    return out


def _series(name: str, points: list[tuple[float, Figure]]) -> svg.Series:
    has_ci = all(f.low is not None and f.high is not None for _, f in points)
    return svg.Series(name, [s for s, _ in points], [f.value for _, f in points],
                      [f.low for _, f in points] if has_ci else None,  # type: ignore[misc]
                      [f.high for _, f in points] if has_ci else None)  # type: ignore[misc]


def panel(cps: list[Checkpoint]) -> list[str]:
    rm = [(c.step, c.rm) for c in cps if c.rm is not None]
    win = [(c.step, c.win) for c in cps if c.win is not None]
    figures = []
    if rm:
        figures.append(figure("Reward model score over checkpoints",
                              svg.line_chart([_series("RM score", rm)], "reward model score", y_label="RM score")))
    if win:
        figures.append(figure("Judge win rate over checkpoints",
                              svg.line_chart([_series("judge win rate (95% interval)", win)], "judge win rate",
                                             y_label="win rate", y_domain=(0.0, 1.0), reference=0.5, fmt=svg.pct)))
    both = [c for c in cps if c.rm is not None and c.win is not None]
    if len(both) > 1:
        path = svg.Series("checkpoints, in step order", [c.rm.value for c in both],  # type: ignore[union-attr]
                          [c.win.value for c in both],  # type: ignore[union-attr]
                          labels=[f"step {svg.num(c.step)}" for c in both])
        figures.append(figure("Judge win rate against RM score (the path of the run)",
                              svg.line_chart([path], "win rate against RM score", x_label="RM score",
                                             y_label="win rate", y_domain=(0.0, 1.0), reference=0.5, fmt=svg.pct)))
    return figures


def _verdict(entry: Mapping[str, Any]) -> str:
    """The run's verdict (first step against last) or error, in words."""
    if "error" in entry:
        return f'<p class="note">No plot: {svg.esc(entry["error"])}</p>'
    v = entry.get("verdict")
    if not isinstance(v, Mapping):
        return ""
    items = [("yes" if v.get("hacking") else "no", "reward hacking (RM score rose and win rate fell)")]
    for key, label in (("rm_score_change", "RM score change, last - first"),
                       ("win_rate_change", "win rate change, last - first")):
        f = read_figure(v.get(key))
        if f is not None:
            ci = f" [{f.low:+.2f}, {f.high:+.2f}]" if f.low is not None and f.high is not None else ""
            items.append((f"{f.value:+.2f}{ci}", label))
    note = v.get("note") or v.get("rule")
    return tiles(items) + (f'<p class="note">{svg.esc(note)}</p>' if note else "")


def section(runs: list[Run]) -> str:
    found = [(run, name, h) for run in runs for name, h in runs_of(run.report.get("reward_hacking")).items()]
    if not found:
        return ""
    body = [how("For the checkpoints of a PPO run: the reward model's mean score of the policy's answers (the proxy "
                "PPO maximizes) and the judge's win rate of the same checkpoint against the baseline (the target). "
                "Both rising: the policy improved. The score rising while the win rate stays flat or falls: the policy "
                "learned what the reward model over-rewards, not what the constitution asks; stop at the last "
                "checkpoint where both rose.")]
    for run, name, h in found:
        where = f" ({h.entry['run']})" if isinstance(h.entry.get("run"), str) else ""
        body.append(f"<h3>{svg.esc(name or run.name)}{svg.esc(where)}</h3>" + _verdict(h.entry))
        body.append(charts(panel(h.checkpoints)))
    return "".join(body)
