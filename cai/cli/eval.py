"""`cai eval`: a thin layer over `cai.eval.run.run_eval`, and its table."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from cai import terminal
from cai.cli.common import (
    CONSTITUTION,
    FORCE,
    SEED,
    Flag,
    config_command,
    console,
    engine_flags,
    judging_flags,
    say_constitution,
)
from cai.cli.root import app
from cai.eval.run import EvalConfig, EvalSummary, run_eval

FLAGS = [
    Flag("policies", "--policy", type=list[str], value=lambda v: tuple(v) or None, show_default=False),
    Flag("baseline"), Flag("out"),
    Flag("suites", "--suite", type=list[str], value=lambda v: tuple(v) or None, show_default=False),
    Flag("default_suites"), Flag("prompts_per_suite"), CONSTITUTION,
    Flag("hacking", "--hacking", type=list[str], value=lambda v: tuple(v) or None, show_default=False),
    Flag("judge.model", "--judge", help="Judge model: `default`, a local HF folder, or a hub id. Other settings: "
         "YAML `judge:`."),
    *engine_flags("engine", model=False), *judging_flags(), Flag("max_tokens"),
    Flag("temperature"), Flag("top_p"), SEED, Flag("tie_margin"), Flag("resamples"), Flag("chunk_size"),
    Flag("refusal"), Flag("refusal_threshold"),
]


def _eval(cfg: EvalConfig, force: bool) -> None:
    terminal.capture(cfg.out)
    summary = run_eval(cfg, force=force)
    say_constitution(cfg.constitution)
    console.print(report_table(summary.report))
    for table in hacking_tables(summary.report):
        console.print(table)
    warn_refusal_judge(summary.report)
    print_summary(summary)


config_command(app, "eval", EvalConfig, _eval, flags=FLAGS, extra={"force": FORCE},
               required=("--policy", "--baseline", "--out"),
               help="Compare policies side by side: each answers the eval suites; each is judged against the "
                    "baseline (win rate, length-controlled win rate) and its refusals counted (harmless and "
                    "over-refusal rates), every figure with its 95% interval. Resumable.")


def _figure(e: dict[str, Any] | None) -> str:
    if not e or "value" not in e:
        return "-"
    return f"{100 * e['value']:.0f}% [{100 * e['low']:.0f}-{100 * e['high']:.0f}]"


def _n(r: dict[str, Any], suite: str, figure: str) -> str:
    """The n of a column (the same for every policy, but for pairs the judge could not score)."""
    ns = {res[suite][figure]["n"] for res in r["results"].values()
          if figure in res.get(suite, {}) and "n" in res[suite][figure]}
    return "" if not ns else f" n={ns.pop()}" if len(ns) == 1 else f" n={min(ns)}-{max(ns)}"


def report_table(r: dict[str, Any]) -> Table:
    """One row per policy: its refusal rates, then per judged suite its win rate, its
    length-controlled win rate and its length difference against the baseline."""
    suites = r["provenance"]["suites"]
    judged = [name for name, s in suites.items() if s["kind"] == "judged"]
    t = Table(title=f"cai eval against {r['baseline']}: value [95% interval]; refusals by "
                    f"{r['provenance']['refusal']['classifier']}", title_justify="left")
    t.add_column("policy")
    columns: list[tuple[str, str, str]] = []  # (suite, figure, heading)
    for suite, figure, heading in (("harmful", "harmless_rate", "harmless"),
                                   ("benign-risky", "over_refusal_rate", "over-refusal")):
        if suite in suites:
            columns.append((suite, figure, heading + _n(r, suite, figure)))
    for suite in judged:
        columns += [(suite, "win_rate", f"win {suite}"), (suite, "length_controlled_win_rate", f"LC win {suite}"),
                    (suite, "length_drift", f"Δ tokens {suite}")]
    for _, _, heading in columns:
        t.add_column(heading, justify="right")
    t.add_column("cost", justify="right")
    for policy, results in r["results"].items():
        t.add_row(policy, *(_cell(results[suite].get(figure)) for suite, figure, _ in columns),
                  cost_cell(r.get("cost", {}).get(policy)))
    return t


# --- Cost and reward hacking (cai/eval/cost.py, cai/eval/hacking.py) -------------------------------


def cost_cell(c: dict[str, Any] | None) -> str:
    """A rung's cost in one cell: its training steps, wall seconds (GPU-seconds where known) and
    tokens generated and judged; for a prompted rung, its extra prompt tokens per answer."""
    if c is None:
        return "-"
    t = c["total"]
    parts = [] if not c["stages"] else [
        f"{t['training_steps'] or 0} steps", f"{t['seconds'] or 0:.0f} s"
        + (f" ({t['gpu_seconds']:.0f} GPU-s)" if t["gpu_seconds"] else ""),
        f"{(t['tokens_generated'] or 0) / 1000:.1f}k tok gen, {(t['tokens_judged'] or 0) / 1000:.1f}k judged"]
    if c.get("extra_prompt_tokens_per_answer") is not None:
        parts.append(f"+{c['extra_prompt_tokens_per_answer']:.0f} prompt tok/answer")
    return ", ".join(parts) or "none"


def hacking_tables(r: dict[str, Any]) -> list[Table]:
    """One table per --hacking run: per step the reward model's score and the judge's win rate."""
    tables = []
    for name, h in r.get("reward_hacking", {}).items():
        if "error" in h:
            tables.append(Table(title=escape(f"reward hacking {name}: {h['error']}"), title_justify="left"))
            continue
        v = h["verdict"]
        sign = "HACKING: the reward model's score rose while the judge's win rate fell" if v["hacking"] else \
            "no hacking signature" + (f" ({v['note']})" if v.get("note") else "")
        t = Table(title=escape(f"reward hacking {name} ({h['run']}): {sign}"), title_justify="left")  # a path: [x]
        for heading in ("step", "policy", "RM score", "win rate", "n"):
            t.add_column(heading, justify="left" if heading == "policy" else "right")
        for row in h["steps"]:
            rm = row["rm_score"]
            t.add_row(str(row["step"]), row["policy"],
                      "-" if rm is None else f"{rm['value']:+.2f} [{rm['low']:+.2f}, {rm['high']:+.2f}]",
                      _figure(row["win_rate"]), str(row["n"]))
        tables.append(t)
    return tables


def _cell(value: dict[str, Any] | None) -> str:
    if value is None:
        return "-"
    if "error" in value:
        return "n/a"  # e.g. every length difference equal: report.json says why
    if "difference" in value:
        d = value["difference"]
        return f"{d['value']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}]"
    return _figure(value.get("estimate", value)) + (f" n={value['estimate']['n']}" if "estimate" in value else "")


REFUSAL_ORDERS_AGREE_MIN = 0.5
"""Below this share of answers whose two option orders agreed, the refusal verdicts are flagged."""


def warn_refusal_judge(r: dict[str, Any]) -> None:
    """Say so when the judge's refusal verdicts follow the option letters, not the answers (the
    135M default judge: docs/eval.md, "How good is the judge classifier?")."""
    shares = [res[s]["refusal_orders_agree"] for res in r["results"].values() for s in res
              if "refusal_orders_agree" in res[s]]
    if shares and min(shares) < REFUSAL_ORDERS_AGREE_MIN:
        console.print(f"[yellow]warning[/] the judge's two option orders agreed on as few as {min(shares):.0%} of "
                      "the answers of a refusal suite: its refusal verdicts follow the letters, not the answers. "
                      "Use a stronger --judge, or --refusal patterns.", highlight=False)


def print_summary(s: EvalSummary) -> None:
    console.print(
        f"[bold green]done[/] {s.answered} answers, {s.asked} refusal questions and {s.judged} pairs judged "
        "in this run"
        + (f"; {s.stale} stale recomputed" if s.stale else "")
        + f"; {s.seconds:.1f} s -> {escape(str(s.out))} "
          "(report.json, rows.jsonl, answers.jsonl, refusals.jsonl, judgments.jsonl)",
        highlight=False)
