"""`cai judge eval`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
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
    run_stage,
)
from cai.cli.label import JUDGE
from cai.cli.root import app
from cai.judge_eval import JudgeEvalConfig, run_judge_eval

judge_app = typer.Typer(help="The AI judge: measure it against human labels.", no_args_is_help=True)
app.add_typer(judge_app, name="judge")

FLAGS = [Flag("pairs"), JUDGE, CONSTITUTION, Flag("out"), Flag("limit"), *engine_flags("judge", model=False),
         *judging_flags(), SEED]
JSON_OUT = (bool, typer.Option(False, "--json", help="Print the JSON report instead of the table."))


def _judge_eval(cfg: JudgeEvalConfig, as_json: bool, force: bool) -> None:
    report = run_stage(cfg, run_judge_eval, force)  # (its constitution line on stderr: --json stays the report)
    if as_json:
        print(json.dumps(report, indent=2), file=terminal.out.file, flush=True)
        return
    console.print(report_table(report))
    console.print(calibration_table(report))
    if cfg.out is not None:
        console.print(f"report: {Path(cfg.out) / 'report.json'}")


config_command(judge_app, "eval", JudgeEvalConfig, _judge_eval, flags=FLAGS,
               extra={"as_json": JSON_OUT, "force": FORCE},
               help="Agreement of the judge with human labels, position consistency, length bias, calibration.")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _ci(d: dict[str, Any]) -> str:
    lo, hi = d["ci95"]
    return f"[{100 * lo:.1f}, {100 * hi:.1f}]"


def report_table(r: dict[str, Any]) -> Table:
    t = Table(title=f"judge {r['judge_model']} on {r['pairs']} pairs of {r['pairs_file']}")
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_column("95% CI", justify="right")
    t.add_column("length-only baseline (shorter wins)", justify="right")
    base = r["length_baseline"]["shorter_wins"]
    t.add_row("agreement with humans (hard)", _pct(r["agreement"]["rate"]), _ci(r["agreement"]) + " Wilson",
              f"{_pct(base['rate'])} {_ci(base)}")
    soft = r["soft_agreement"]
    t.add_row("mean p on the human's choice (soft)", _pct(soft["mean_p_human_choice"]),
              f"[{100 * soft['ci95'][0]:.1f}, {100 * soft['ci95'][1]:.1f}] bootstrap", "")
    t.add_row("position consistency (both orders agree)", _pct(r["position_consistency"]["rate"]),
              _ci(r["position_consistency"]) + " Wilson", "")
    t.add_row("single-order verdicts picking (A)", _pct(r["first_position_rate"]), "", "")
    t.add_row("judge picks the longer response", _pct(r["length"]["judge_picks_longer"]["rate"]),
              _ci(r["length"]["judge_picks_longer"]), "")
    t.add_row("humans picked the longer response", _pct(r["length"]["humans_pick_longer"]["rate"]),
              _ci(r["length"]["humans_pick_longer"]), "")
    t.add_row("mean |p - 0.5|", "-" if r["mean_margin"] is None else f"{r['mean_margin']:.3f}", "", "")
    ece = r["calibration"]["ece"]
    t.add_row("expected calibration error", "-" if ece is None else f"{ece:.3f}", "", "")
    return t


def calibration_table(r: dict[str, Any]) -> Table:
    t = Table(title="calibration: the judge's confidence in its pick, max(p, 1-p), against agreement")
    for col in ("confidence bin", "pairs", "mean confidence", "observed agreement"):
        t.add_column(col, justify="right")
    for b in r["calibration"]["bins"]:
        lo, hi = b["bin"]
        t.add_row(f"[{lo:.2f}, {hi:.2f})", str(b["n"]), _pct(b["mean_confidence"]), _pct(b["agreement"]))
    return t
