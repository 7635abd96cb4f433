"""`cai sft` and `cai rm train|eval|score`: every field of the stage's config is a flag
(`learning_rate` -> `--learning-rate`, see cai.cli.common)."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from cai import terminal
from cai.cli.common import FORCE, QUIET, config_command
from cai.cli.root import app
from cai.reward import RMConfig, run_rm_eval, run_rm_score, train_reward
from cai.reward_eval import RMEvalConfig, RMScoreConfig
from cai.sft import SFTConfig, train_sft

rm_app = typer.Typer(help="Reward model: train on preference pairs, evaluate, score files.",
                     no_args_is_help=True)
app.add_typer(rm_app, name="rm")
out_console = terminal.out
JSON_OUT = (bool, typer.Option(False, "--json", help="Print the JSON report instead of the tables."))


def _summary_table(title: str, summary: dict[str, Any]) -> Table:
    table = Table(title=title, show_header=False)
    for k, v in summary.items():
        table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    return table


def _run_sft(cfg: SFTConfig, force: bool, quiet: bool) -> None:
    terminal.capture(cfg.out)
    s = train_sft(cfg, force=force, progress=not quiet)
    done = " (already finished; nothing to do)" if s.get("already_finished") else ""
    out_console.print(_summary_table(f"cai sft -> {escape(str(cfg.out))}{done}", s))


def _run_rm_train(cfg: RMConfig, force: bool, quiet: bool) -> None:
    terminal.capture(cfg.out)
    s = train_reward(cfg, force=force, progress=not quiet)
    done = " (already finished; nothing to do)" if s.get("already_finished") else ""
    out_console.print(_summary_table(f"cai rm train -> {escape(str(cfg.out))}{done}", s))


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def print_report(report: dict[str, Any], title: str) -> None:
    lo, hi = report["accuracy_ci95"]
    head = Table(title=title, show_header=False)
    head.add_row("pairs", f"{report['n']} ({report['n_ties']} labeled as ties, left out of accuracy)")
    head.add_row("accuracy", f"{_fmt(report['accuracy'])}  (95% CI {_fmt(lo)}-{_fmt(hi)})")
    head.add_row("mean P(labeled choice)", _fmt(report["mean_prob_label"]))
    head.add_row("loss (BCE vs label)", _fmt(report["loss"]))
    head.add_row("ECE", _fmt(report["ece"]))
    head.add_row("baseline: shorter reply wins", _fmt(report["shorter_wins_accuracy"]))
    head.add_row("model prefers the longer reply", _fmt(report["model_prefers_longer"]))
    out_console.print(head)
    cal = Table(title="calibration (confidence of the model's pick)")
    for col in ("bin", "pairs", "confidence", "observed"):
        cal.add_column(col, justify="right")
    for b in report["calibration"]:
        cal.add_row(f"{b['lo']:.2f}-{b['hi']:.2f}", str(b["n"]), _fmt(b["confidence"]), _fmt(b["observed"]))
    out_console.print(cal)
    lengths = Table(title="accuracy by length difference (labeled - other, tokens)")
    for col in ("difference", "pairs", "accuracy"):
        lengths.add_column(col, justify="right")
    for b in report["by_length"]:
        lengths.add_row(b["bucket"], str(b["n"]), _fmt(b["accuracy"]))
    out_console.print(lengths)


def _run_rm_eval(cfg: RMEvalConfig, as_json: bool) -> None:
    terminal.capture(None)  # no run folder: library chatter to stderr, stdout stays clean
    report = run_rm_eval(cfg)
    if as_json:
        out_console.print_json(json.dumps(report))
    else:
        print_report(report, f"{cfg.model} on {cfg.pairs}")
        if cfg.out:
            out_console.print(f"report written to {escape(str(cfg.out))}")


def _run_rm_score(cfg: RMScoreConfig) -> None:
    terminal.capture(None)
    n = run_rm_score(cfg)
    out_console.print(f"[bold green]done[/] {n} rows scored -> {escape(str(cfg.out))}")


config_command(app, "sft", SFTConfig, _run_sft, extra={"force": FORCE, "quiet": QUIET},
               help="Fine-tune a policy on conversations (loss on assistant tokens only); resumable.")
config_command(rm_app, "train", RMConfig, _run_rm_train, extra={"force": FORCE, "quiet": QUIET},
               help="Train a soft-label Bradley-Terry reward model on preference pairs; resumable.")
config_command(rm_app, "eval", RMEvalConfig, _run_rm_eval, extra={"as_json": JSON_OUT},
               help="Accuracy, calibration (ECE) and accuracy by length difference on labeled pairs.")
config_command(rm_app, "score", RMScoreConfig, _run_rm_score,
               help="Add reward columns to a JSONL file (normalized rewards).")
