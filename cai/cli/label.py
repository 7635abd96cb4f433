"""`cai label`."""

from __future__ import annotations

from rich.markup import escape

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
from cai.cli.root import app
from cai.label import LabelConfig, LabelSummary, run_label

JUDGE = Flag("judge.model", "--judge", help="Judge model: `default`, a local HF folder, or a hub id (with --backend "
             "http: the served model).")
FLAGS = [
    Flag("input"), Flag("out"), CONSTITUTION, JUDGE, *engine_flags("judge", model=False),
    Flag("policy.model", "--policy", value=lambda v: v or None,
         help="prompts input: the model that samples the responses (default: the judge). Other settings: YAML "
              "`policy:`."),
    Flag("input_kind"), Flag("prompt_column"), Flag("samples_per_prompt", short="-k"), Flag("pairing"),
    Flag("policy_max_tokens", "--max-tokens"), Flag("policy_temperature", "--temperature"), Flag("revise_pairs"),
    *judging_flags(), Flag("tie_threshold"), Flag("keep_ties", off="--drop-ties"), Flag("chunk_size"), SEED,
]


def _label(cfg: LabelConfig, force: bool) -> None:
    print_summary(run_stage(cfg, run_label, force))


config_command(app, "label", LabelConfig, _label, flags=FLAGS, extra={"force": FORCE},
               help="Judge pairs of responses with an AI judge: soft labels, both orders, TRL preference rows.")


def print_summary(s: LabelSummary) -> None:
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    console.print(
        f"[bold green]done[/] {s.judged} pairs judged from {s.groups} prompts ({s.judged_now} in this run): "
        f"{s.pairs} preference pairs, {s.ties} ties, {s.identical} identical skipped, {s.rejected} rejected"
        + (f"; {s.stale} stale judgments recomputed" if s.stale else "")
        + (f"; {s.resampled} prompts' stale samples recomputed" if s.resampled else "") + "\n"
        + f"  position agreement {pct(s.position_agreement)}, first-position picks {pct(s.first_position_rate)}, "
        f"mean |p - 0.5| {'-' if s.mean_margin is None else f'{s.mean_margin:.3f}'}, "
        f"option mass {'-' if s.option_mass is None else f'{s.option_mass:.2f}'}\n"
        f"  {s.prompt_tokens} judge prompt tokens in {s.seconds:.1f} s -> {escape(str(s.out))} "
        "(prefs.jsonl, ties.jsonl, rejects.jsonl, dataset/, summary.json)",
        markup=True, highlight=False,
    )
