"""The ladder panel, from a `cai eval` report.json: each rung (policy) with its harmless and
over-refusal rates, its win rate and length-controlled win rate against the baseline, its length
difference, each with its 95% interval and n; its win rate per principle; and the cost of each
rung where report.json has one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cai.report import svg
from cai.report.folders import Run
from cai.report.page import charts, figure, how, table
from cai.report.values import Figure, flat_numbers
from cai.report.values import figure as read_figure

# (key in results[policy][suite], caption, chart options): the order of the charts.
FIGURES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("harmless_rate", "Harmless rate: share of harmful requests declined (higher is better)", {}),
    ("over_refusal_rate", "Over-refusal rate: share of benign-but-risky requests declined (lower is better)", {}),
    ("win_rate", "Win rate against the baseline, both orders, ties half (0.5 = no difference)", {"reference": 0.5}),
    ("length_controlled_win_rate", "Length-controlled win rate: the win rate at equal lengths", {"reference": 0.5}),
    ("length_drift", "Length difference: mean tokens more than the baseline per prompt",
     {"domain": None, "reference": 0.0, "fmt": lambda v: f"{v:+.3g}"}),
)
COST_CHARTS = 4
"""At most this many cost fields get a bar chart (all of them are in the table)."""


def section(runs: list[Run]) -> str:
    """The ladder of every eval folder, one after the other."""
    body = [how("Each rung is one policy of `cai eval`. A dot is the figure, its bar the 95% interval, n the prompts "
                "behind it; the dashed line is no difference from the baseline. Read the win rate beside the "
                "length-controlled one (a large gap: the wins are mostly length), and the harmless rate beside the "
                "over-refusal rate (alignment worked when the first rises and the second does not).")]
    for run in runs:
        body.append(_one(run, heading=len(runs) > 1))
    return "".join(body)


def _map(v: Any) -> Mapping[str, Any]:
    """`v` where it is a mapping, else {}: a part of report.json in a shape this version does not
    know (another cai version, a file edited by hand) leaves its panel out, not the whole page."""
    return v if isinstance(v, Mapping) else {}


def _list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else []


def _one(run: Run, heading: bool) -> str:
    r = run.report
    results: Mapping[str, Any] = {p: _map(res) for p, res in _map(r.get("results")).items()}
    baseline = str(r.get("baseline", ""))
    out = [f"<h3>{svg.esc(run.name)}</h3>"] if heading else []
    out.append(f'<p class="note">Baseline: <b>{svg.esc(baseline)}</b>; judge: '
               f'{svg.esc(_judge(r))}; constitution: {svg.esc(_constitution(r))}.</p>')
    columns = _columns(r)
    head = ["policy"] + [f"{_short_name(key)} ({suite})" for suite, key in columns]
    rows = [[p] + [_cell(_map(results[p].get(suite)).get(key)) for suite, key in columns] for p in results]
    out.append(table(head, rows))
    out.append(_errors(results, columns))
    figures = []
    for suite, key in columns:
        caption, opts = next((c, o) for k, c, o in FIGURES if k == key)
        rows_ = [_interval(p, _map(results[p].get(suite)).get(key), p == baseline) for p in results]
        if any(x.value is not None for x in rows_):
            figures.append(figure(f"{caption}, suite {suite}", svg.interval_chart(rows_, f"{key} on {suite}",
                                                                                   **opts)))
    out.append(charts(figures))
    out.append(_by_principle(results, columns))
    out.append(_cost(r, list(results)))
    return "".join(out)


def _columns(r: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(suite, figure key) of every figure some policy has, suites in report order."""
    results = {p: _map(res) for p, res in _map(r.get("results")).items()}
    suites = [str(s) for s in _map(_map(r.get("provenance")).get("suites"))]
    for res in results.values():
        suites += [s for s in res if s not in suites]
    return [(s, key) for key, _, _ in FIGURES for s in suites
            if any(isinstance(res.get(s), Mapping) and key in res[s] for res in results.values())]


def _errors(results: Mapping[str, Any], columns: list[tuple[str, str]]) -> str:
    """Why a cell says n/a: each figure report.json gives as an `error` (with its `fix`), in words
    (its chart leaves the row out, or is not drawn at all when no policy has the figure)."""
    notes = []
    for p, res in results.items():
        for suite, key in columns:
            v = _map(res.get(suite)).get(key)
            if isinstance(v, Mapping) and "error" in v:
                fix = f" ({v['fix']})" if isinstance(v.get("fix"), str) else ""
                notes.append(f"{p}, {_short_name(key)} ({suite}): n/a: {v['error']}{fix}")
    return "".join(f'<p class="note">{svg.esc(n)}</p>' for n in notes)


def _short_name(key: str) -> str:
    return {"harmless_rate": "harmless", "over_refusal_rate": "over-refusal", "win_rate": "win",
            "length_controlled_win_rate": "LC win", "length_drift": "Δ tokens"}.get(key, key)


def _cell(v: Any) -> str:
    if isinstance(v, Mapping) and "error" in v:
        return "n/a"
    f = read_figure(v)
    if f is None:
        return "–"
    signed = isinstance(v, Mapping) and "difference" in v
    show = (lambda x: f"{x:+.1f}") if signed else svg.pct
    ci = f" [{show(f.low)}, {show(f.high)}]" if f.low is not None and f.high is not None else ""
    return show(f.value) + ci + (f" n={f.n}" if f.n is not None else "")


def _interval(policy: str, v: Any, is_baseline: bool) -> svg.Interval:
    f: Figure | None = read_figure(v)
    if f is None:
        note = "not measured"
        if is_baseline:
            note = "baseline"
        elif isinstance(v, Mapping) and "error" in v:
            note = "n/a: " + str(v["error"])[:60]
        return svg.Interval(policy, None, note=note)
    return svg.Interval(policy, f.value, f.low, f.high, f.n)


def _by_principle(results: Mapping[str, Any], columns: list[tuple[str, str]]) -> str:
    """Win rate per comparison principle, one table per judged suite: principles × policies."""
    out = []
    for suite in [s for s, key in columns if key == "win_rate"]:
        by = {p: _map(res[suite].get("win_rate_by_principle")) for p, res in results.items()
              if isinstance(res.get(suite), Mapping)}
        policies = [p for p, b in by.items() if b]
        principles = sorted({k for b in by.values() for k in b})
        if not principles:
            continue
        rows = [[pid] + [_cell(by[p].get(pid)) for p in policies] for pid in principles]
        out.append(f"<h3>Win rate per principle, suite {svg.esc(suite)}</h3>"
                   + how("Only the judgments made under that comparison principle; n is small, read the intervals.")
                   + table(["principle"] + policies, rows))
    return "".join(out)


def cost_entry(r: Mapping[str, Any], policy: str) -> Mapping[str, Any]:
    """One rung's cost entry, wherever report.json keeps it: `cost[policy]` (cai eval: {stages,
    total, notes, prompt_tokens_per_answer, ...}, docs/eval.md), `results[policy].cost`, or
    `provenance.policies[policy].cost`; {} when there is none."""
    places = [_map(r.get("cost")).get(policy), _map(_map(r.get("results")).get(policy)).get("cost"),
              _map(_map(_map(r.get("provenance")).get("policies")).get(policy)).get("cost")]
    return next((c for c in places if isinstance(c, Mapping)), {})


def cost_of(r: Mapping[str, Any], policy: str) -> dict[str, float]:
    """The numeric cost fields of one rung by dotted name (`total.seconds`), the stage rows aside."""
    return flat_numbers(cost_entry(r, policy))


def _cost(r: Mapping[str, Any], policies: list[str]) -> str:
    costs = {p: cost_of(r, p) for p in policies}
    fields = list(dict.fromkeys(k for c in costs.values() for k in c))
    stages = _stages(r, policies)
    if not fields and not stages:
        return ""
    rows = [[p] + [svg.num(costs[p][k]) if k in costs[p] else "–" for k in fields] for p in policies]
    figures = [figure(f"Cost: {k}", svg.bar_chart([(p, costs[p][k]) for p in policies if k in costs[p]], f"cost {k}"))
               for k in fields[:COST_CHARTS]]
    return ("<h3>Cost of each rung</h3>"
            + how("What each rung cost to make, from its run folders' summaries (tokens, training steps, seconds; "
                  "GPU-seconds where known). A rung is worth its cost when it beats the cheaper ones below it.")
            + (table(["policy"] + fields, rows) if fields else "") + charts(figures) + stages)


STAGE_COLUMNS = ("stage", "folder", "tokens_generated", "tokens_judged", "training_steps", "seconds", "device")


def _stages(r: Mapping[str, Any], policies: list[str]) -> str:
    """The run folders each rung's cost was summed from, and what could not be followed."""
    rows, notes = [], []
    for p in policies:
        entry = cost_entry(r, p)
        for st in _list(entry.get("stages")):
            if isinstance(st, Mapping):
                rows.append([p] + [_cell(st.get(c)) for c in STAGE_COLUMNS])
        notes += [f"{p}: {n}" for n in _list(entry.get("notes")) if isinstance(n, str)]
    if not rows and not notes:
        return ""
    return ((table(["policy", *STAGE_COLUMNS], rows, left=3) if rows else "")
            + "".join(f'<p class="note">{svg.esc(n)}</p>' for n in notes))


def _cell(v: Any) -> str:
    """A stage table cell: numbers as the charts write them (seconds to 3 figures), '–' for none."""
    if v is None:
        return "–"
    return svg.num(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def _judge(r: Mapping[str, Any]) -> str:
    j = _map(r.get("provenance")).get("judge")
    return str(j.get("model", "?")) if isinstance(j, Mapping) else "none"


def _constitution(r: Mapping[str, Any]) -> str:
    c = _map(r.get("provenance")).get("constitution")
    return f"{c.get('name', '?')} {c.get('version', '')} ({c.get('hash', '')})" if isinstance(c, Mapping) else "?"
