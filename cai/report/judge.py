"""The judge panel: how far the AI judge can be trusted.

From a `cai judge eval` folder (report.json): agreement with the human labels, position
consistency, the length figures, each with its 95% interval, and the reliability diagram
(calibration: the judge's confidence against how often it agreed with the humans). From a
`cai label` folder (summary.json, judgments.jsonl): the same judge's position agreement on the
pairs it labeled, and the distribution of its soft labels."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cai.report import svg
from cai.report.folders import Run
from cai.report.page import charts, figure, how, table, tiles
from cai.report.values import figure as read_figure
from cai.report.values import number

# (path in report.json, label) of the interval chart's rows.
RATES = (
    (("agreement",), "agrees with humans"),
    (("position_consistency",), "both orders agree"),
    (("length", "judge_picks_longer"), "judge picks the longer"),
    (("length", "humans_pick_longer"), "humans picked the longer"),
    (("length_baseline", "longer_wins"), "'longer wins' agrees"),
    (("length_baseline", "shorter_wins"), "'shorter wins' agrees"),
)


def _get(d: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        d = d.get(key) if isinstance(d, Mapping) else None
    return d


def judge_eval_panel(run: Run) -> str:
    r = run.report
    items = [(str(r.get("pairs", "?")), "human-labeled pairs judged"), (str(r.get("judge_model", "?")), "judge")]
    if (first := number(r.get("first_position_rate"))) is not None:
        items.append((svg.pct(first), "single-order verdicts that picked (A) (0.5 = no position bias)"))
    if (ece := number(_get(r, ("calibration", "ece")))) is not None:
        items.append((f"{ece:.3f}", "expected calibration error (0 = calibrated)"))
    rows = []
    for path, label in RATES:
        f = read_figure(_get(r, path))
        if f is not None:
            rows.append(svg.Interval(label, f.value, f.low, f.high, f.n))
    figures = [figure("Agreement, consistency and length (95% intervals)",
                      svg.interval_chart(rows, "judge eval rates", reference=0.5))] if rows else []
    bins = _get(r, ("calibration", "bins"))
    bins = [b for b in bins if isinstance(b, Mapping)] if isinstance(bins, list) else []
    points = [(c, a, int(b["n"])) for b in bins
              if (c := number(b.get("mean_confidence"))) is not None and (a := number(b.get("agreement"))) is not None
              and isinstance(b.get("n"), int) and b["n"] > 0]
    if points:
        figures.append(figure("Calibration: confidence against agreement",
                              svg.reliability_chart(points, "judge calibration")))
    by = _get(r, ("by_principle",)) or {}
    principle_rows = [[pid, _rate(v)] for pid, v in by.items()] if isinstance(by, Mapping) else []
    return (f"<h3>{svg.esc(run.name)} <span class=\"tag\">cai judge eval</span></h3>" + tiles(items)
            + charts(figures)
            + (table(["comparison principle", "agrees with humans [95%] n"], principle_rows) if principle_rows else ""))


def _rate(v: Any) -> str:
    f = read_figure(v)
    if f is None:
        return "–"
    ci = f" [{svg.pct(f.low)}, {svg.pct(f.high)}]" if f.low is not None and f.high is not None else ""
    return svg.pct(f.value) + ci + (f" n={f.n}" if f.n is not None else "")


def label_panel(run: Run) -> str:
    s = run.summary
    judged = [j for j in run.judgments if j.verdict.status == "judged" and j.verdict.p is not None]
    agree = [bool(j.verdict.agree) for j in judged]
    items = [(str(len(judged)), "pairs judged")]
    if agree:
        items.append((svg.pct(sum(agree) / len(agree)), "position agreement (both orders pick the same)"))
    for key, label in (("first_position_rate", "single-order verdicts that picked (A)"),
                       ("mean_margin", "mean |p - 0.5|"), ("option_mass", "P(A) + P(B) before normalizing")):
        if (v := number(s.get(key))) is not None:
            items.append((svg.pct(v) if key == "first_position_rate" else f"{v:.3f}", label))
    figures = []
    soft = [p for j in judged if (p := number(j.verdict.p)) is not None]  # a NaN p would break the bins
    if soft:
        figures.append(figure("Soft labels: P(x better than y), both orders averaged",
                              svg.histogram(soft, "soft labels", x_label="p")))
    usage = s.get("principles") if isinstance(s.get("principles"), Mapping) else None
    if not usage:
        usage = {}
        for j in judged:
            for pid in j.verdict.principles:
                usage[pid] = usage.get(pid, 0) + 1
    usage_rows = [(str(k), float(v)) for k, v in usage.items() if number(v) is not None]
    if usage_rows:
        figures.append(figure("Comparison principles drawn by the judge",
                              svg.bar_chart(sorted(usage_rows, key=lambda kv: -kv[1]), "label principle usage")))
    return (f"<h3>{svg.esc(run.name)} <span class=\"tag\">cai label</span></h3>" + tiles(items) + charts(figures))


def section(judge_evals: list[Run], labels: list[Run]) -> str:
    intro = how("Every win rate in this report is the judge's opinion, so first: how often does the judge agree with "
                "human labels, does it pick the same answer in both orders (position consistency; a small judge "
                "often picks a position instead), does it prefer the longer answer more often than humans did, and "
                "is it calibrated (in the reliability diagram a calibrated judge's dots sit on the dashed diagonal; "
                "dots below it: overconfident). Soft labels piled at 0.5 mean the judge rarely decides.")
    return intro + "".join(judge_eval_panel(r) for r in judge_evals) + "".join(label_panel(r) for r in labels)
