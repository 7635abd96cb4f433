"""`cai label`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cai import config, terminal
from cai.cli import app
from cai.cli.common import (
    BackendOpt,
    BaseUrlOpt,
    ConfigOpt,
    ConstitutionOpt,
    DtypeOpt,
    EagerOpt,
    ForceOpt,
    MaxLenOpt,
    SeedOpt,
    ServedOpt,
    TrustOpt,
    console,
    engine_overrides,
    say_constitution,
)
from cai.label import LabelConfig, LabelSummary, run_label

JudgeOpt = Annotated[str | None, typer.Option("--judge", help="Judge model: `default`, a local HF folder, or a "
                                              "hub id (with --backend http: the served model).")]
KOpt = Annotated[int | None, typer.Option("--principles-per-pair", help="Principles drawn per pair; the label "
                                          "is their mean.")]
CotOpt = Annotated[bool | None, typer.Option("--cot/--no-cot", help="Write a rationale before scoring the "
                                             "options (labels clamped, see --cot-clamp).")]
CotTokOpt = Annotated[int | None, typer.Option("--cot-max-tokens", help="Most tokens of a rationale.")]
ClampOpt = Annotated[tuple[float, float] | None, typer.Option("--cot-clamp", help="CoT labels are clamped to "
                                                              "[LOW HIGH] (default 0.4 0.6; 0 1 = off).")]


def judging_overrides(principles_per_pair=None, cot=None, cot_max_tokens=None, cot_clamp=None) -> dict:
    return {"principles_per_pair": principles_per_pair, "cot": cot, "cot_max_tokens": cot_max_tokens,
            "cot_clamp": list(cot_clamp) if cot_clamp else None}


@app.command("label")
def label(
    input: Annotated[Path | None, typer.Option("--input", help="Prompts file, `cai revise` folder, or a file "
                                               "of prompts with 2+ responses.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Output folder (resumed if it holds this job).")] = None,
    constitution: ConstitutionOpt = None,
    cfg_file: ConfigOpt = None,
    judge: JudgeOpt = None,
    backend: BackendOpt = None,
    dtype: DtypeOpt = None,
    max_model_len: MaxLenOpt = None,
    base_url: BaseUrlOpt = None,
    served_model_name: ServedOpt = None,
    trust_remote_code: TrustOpt = None,
    enforce_eager: EagerOpt = None,
    policy: Annotated[str | None, typer.Option("--policy", help="prompts input: the model that samples the "
                                               "responses (default: the judge). Other settings: YAML `policy:`.")]
    = None,
    input_kind: Annotated[str | None, typer.Option("--input-kind", help="auto, prompts, revise or responses.")]
    = None,
    prompt_column: Annotated[str | None, typer.Option("--prompt-column")] = None,
    samples_per_prompt: Annotated[int | None, typer.Option("--samples-per-prompt", "-k", help="prompts input: "
                                                           "responses per prompt (>= 2).")] = None,
    pairing: Annotated[str | None, typer.Option("--pairing", help="all (every pair) or adjacent (1-2, 2-3, ...).")]
    = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", help="prompts input: tokens per response.")]
    = None,
    temperature: Annotated[float | None, typer.Option("--temperature", help="prompts input: policy sampling "
                                                      "temperature (default 1.0).")] = None,
    revise_pairs: Annotated[str | None, typer.Option("--revise-pairs", help="revise input: final (initial vs "
                                                     "final) or rounds (each round vs the next).")] = None,
    principles_per_pair: KOpt = None,
    cot: CotOpt = None,
    cot_max_tokens: CotTokOpt = None,
    cot_clamp: ClampOpt = None,
    tie_threshold: Annotated[float | None, typer.Option("--tie-threshold", help="|p - 0.5| below this is a tie.")]
    = None,
    keep_ties: Annotated[bool | None, typer.Option("--keep-ties/--drop-ties", help="Write ties to prefs.jsonl "
                                                   "too (flagged).")] = None,
    chunk_size: Annotated[int | None, typer.Option("--chunk-size", help="Pairs per engine call.")] = None,
    seed: SeedOpt = None,
    force: ForceOpt = False,
) -> None:
    """Judge pairs of responses with an AI judge: soft labels, both orders, TRL preference rows."""
    cfg = config.load(LabelConfig, cfg_file, {
        "input": input, "out": out, "constitution": constitution, "input_kind": input_kind,
        "prompt_column": prompt_column, "samples_per_prompt": samples_per_prompt, "pairing": pairing,
        "policy_max_tokens": max_tokens, "policy_temperature": temperature, "revise_pairs": revise_pairs,
        "tie_threshold": tie_threshold, "keep_ties": keep_ties, "chunk_size": chunk_size, "seed": seed,
        "judge": engine_overrides(judge, backend, dtype, max_model_len, base_url, served_model_name,
                                  trust_remote_code, enforce_eager),
        "policy": {"model": policy} if policy else None,
        "judging": judging_overrides(principles_per_pair, cot, cot_max_tokens, cot_clamp),
    })
    terminal.capture(cfg.out)
    summary = run_label(cfg, force=force)
    say_constitution(cfg.constitution)
    print_summary(summary)


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
        f"  {s.prompt_tokens} judge prompt tokens in {s.seconds:.1f} s -> {s.out} "
        "(prefs.jsonl, ties.jsonl, rejects.jsonl, dataset/, summary.json)",
        markup=True, highlight=False,
    )
