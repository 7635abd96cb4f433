"""`cai sft` and `cai rm train|eval|score`.

Every field of a stage's config dataclass is a flag of its command (`learning_rate` ->
`--learning-rate`), with the field's docstring as its help, so the flags, the YAML keys and the
docs cannot drift apart. A flag left out is None and does not override the YAML file.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import textwrap
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import typer
from rich.table import Table

from cai import config, terminal
from cai.cli import app
from cai.reward import RewardModel, RMConfig, train_reward
from cai.reward_eval import RMEvalConfig, RMScoreConfig, evaluate_pairs, read_eval_pairs, score_file
from cai.sft import SFTConfig, train_sft
from cai.train_common import resolve_device

rm_app = typer.Typer(help="Reward model: train on preference pairs, evaluate, score files.",
                     no_args_is_help=True)
app.add_typer(rm_app, name="rm")
out_console = terminal.out


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass (and its bases), read from the source."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for node, nxt in zip(body, body[1:], strict=False):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and \
                    isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
                docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def _flag_type(tp: Any) -> tuple[Any, str]:
    """The type typer parses a field as, and a hint for the help text."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if typing.get_origin(tp) is Literal:
        return str, "one of: " + ", ".join(map(str, typing.get_args(tp)))
    return tp, ""


def config_command(group: typer.Typer, name: str, cls: type, run: Callable[..., None], help: str,
                   extra: dict[str, tuple[Any, Any]] | None = None) -> None:
    """Register `name` on `group` with a flag per field of `cls`, plus --config and `extra`
    ({param: (annotation, typer.Option)}). `run(cfg, **extra_values)` does the work."""
    hints, docs = typing.get_type_hints(cls), field_docs(cls)
    params = [inspect.Parameter("config_file", inspect.Parameter.KEYWORD_ONLY, annotation=Path | None,
                                default=typer.Option(None, "--config", help="YAML config file; flags override it."))]
    own = set(cls.__dict__.get("__annotations__", {}))  # the stage's own fields first, then shared ones
    for f in sorted(dataclasses.fields(cls), key=lambda f: f.name not in own):
        tp, hint = _flag_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        decl = f"{flag}/--no-{flag[2:]}" if tp is bool else flag
        default = "" if f.default in ("", None) else f" [default: {f.default}]"
        text = " ".join(x for x in (docs.get(f.name, ""), hint) if x) + default
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=tp | None,
                                        default=typer.Option(None, decl, help=text, show_default=False)))
    for pname, (ann, opt) in (extra or {}).items():
        params.append(inspect.Parameter(pname, inspect.Parameter.KEYWORD_ONLY, annotation=ann, default=opt))

    def command(**kwargs: Any) -> None:
        extras = {k: kwargs.pop(k) for k in (extra or {})}
        cfg = config.load(cls, kwargs.pop("config_file"), kwargs)
        run(cfg, **extras)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = help
    group.command(name, help=help)(command)


FORCE = (bool, typer.Option(False, "--force", help="Resume into a folder made with a different config."))
QUIET = (bool, typer.Option(False, "--quiet", help="No progress bar."))
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
    out_console.print(_summary_table(f"cai sft -> {cfg.out}{done}", s))


def _run_rm_train(cfg: RMConfig, force: bool, quiet: bool) -> None:
    terminal.capture(cfg.out)
    s = train_reward(cfg, force=force, progress=not quiet)
    done = " (already finished; nothing to do)" if s.get("already_finished") else ""
    out_console.print(_summary_table(f"cai rm train -> {cfg.out}{done}", s))


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


def _load_rm(cfg: RMEvalConfig | RMScoreConfig) -> RewardModel:
    import torch

    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
    return RewardModel.load(cfg.model, device=str(resolve_device(cfg.device)), dtype=dtype)


def _run_rm_eval(cfg: RMEvalConfig, as_json: bool) -> None:
    terminal.capture(None)  # no run folder: library chatter to stderr, stdout stays clean
    pairs = read_eval_pairs(cfg.pairs, cfg.split)
    report = evaluate_pairs(_load_rm(cfg), pairs, cfg.batch_size, cfg.calibration_bins)
    report = {"model": cfg.model, "pairs": cfg.pairs, **report}
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text(json.dumps(report, indent=1))
    if as_json:
        out_console.print_json(json.dumps(report))
    else:
        print_report(report, f"{cfg.model} on {cfg.pairs}")
        if cfg.out:
            out_console.print(f"report written to {cfg.out}")


def _run_rm_score(cfg: RMScoreConfig) -> None:
    terminal.capture(None)
    n = score_file(_load_rm(cfg), cfg.input, cfg.out, cfg.batch_size, cfg.raw)
    out_console.print(f"[bold green]done[/] {n} rows scored -> {cfg.out}")


config_command(app, "sft", SFTConfig, _run_sft, extra={"force": FORCE, "quiet": QUIET},
               help="Fine-tune a policy on conversations (loss on assistant tokens only); resumable.")
config_command(rm_app, "train", RMConfig, _run_rm_train, extra={"force": FORCE, "quiet": QUIET},
               help="Train a soft-label Bradley-Terry reward model on preference pairs; resumable.")
config_command(rm_app, "eval", RMEvalConfig, _run_rm_eval, extra={"as_json": JSON_OUT},
               help="Accuracy, calibration (ECE) and accuracy by length difference on labeled pairs.")
config_command(rm_app, "score", RMScoreConfig, _run_rm_score,
               help="Add reward columns to a JSONL file (normalized rewards).")
