"""`cai revise`: a thin layer over `cai.revise.run_revise`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

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
    ModelOpt,
    SeedOpt,
    ServedOpt,
    TrustOpt,
    console,
    engine_overrides,
    say_constitution,
)
from cai.errors import ConfigError
from cai.revise import ReviseConfig, ReviseSummary, run_revise


@app.command("revise")
def revise(
    prompts: Annotated[Path | None, typer.Option("--prompts", help="Prompts: JSONL, JSON, CSV or HF dataset "
                                                 "folder.")] = None,
    constitution: ConstitutionOpt = None,
    out: Annotated[Path | None, typer.Option("--out", help="Run folder (resumed if it exists).")] = None,
    cfg_file: ConfigOpt = None,
    rounds: Annotated[int | None, typer.Option("--rounds", help="Critique-revision rounds (default 2).")] = None,
    direct: Annotated[bool | None, typer.Option("--direct/--critique", help="Revise without a critique "
                                                "(the paper's ablation), or with one (default).")] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", help="New tokens per response and "
                                                   "revision.")] = None,
    critique_max_tokens: Annotated[int | None, typer.Option("--critique-max-tokens", help="New tokens per "
                                                            "critique.")] = None,
    temperature: Annotated[float | None, typer.Option("--temperature", help="0 = greedy.")] = None,
    top_p: Annotated[float | None, typer.Option("--top-p")] = None,
    seed: SeedOpt = None,
    chunk_size: Annotated[int | None, typer.Option("--chunk-size", help="Records per engine call.")] = None,
    prompt_column: Annotated[str | None, typer.Option("--prompt-column")] = None,
    id_column: Annotated[str | None, typer.Option("--id-column")] = None,
    split: Annotated[str | None, typer.Option("--split", help="Split of a DatasetDict input.")] = None,
    sft_all_rounds: Annotated[bool | None, typer.Option("--sft-all-rounds/--sft-final", help="SFT on every "
                                                        "round's revision, or only the final one.")] = None,
    keep_flagged: Annotated[bool, typer.Option("--keep-flagged", help="Export flagged texts too (empty, "
                                               "degenerate, truncated, wrong_role).")] = False,
    test_fraction: Annotated[float | None, typer.Option("--test-fraction", help="Share of ids in the test "
                                                        "splits.")] = None,
    model: ModelOpt = None,
    backend: BackendOpt = None,
    dtype: DtypeOpt = None,
    max_model_len: MaxLenOpt = None,
    base_url: BaseUrlOpt = None,
    served_model_name: ServedOpt = None,
    trust_remote_code: TrustOpt = None,
    enforce_eager: EagerOpt = None,
    force: ForceOpt = False,
) -> None:
    """Critique and revise answers to a file of prompts under a constitution (the supervised CAI
    stage): batched, resumable, with provenance; exports SFT data and preference pairs."""
    if cfg_file is None:
        missing = [flag for flag, value in (("--prompts", prompts), ("--out", out)) if value is None]
        if missing:
            raise ConfigError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required",
                              fix="pass them as flags, or set prompts: and out: in a --config file")
    cfg = config.load(ReviseConfig, cfg_file, {
        "prompts": prompts, "out": out, "constitution": constitution, "rounds": rounds, "direct": direct,
        "max_tokens": max_tokens, "critique_max_tokens": critique_max_tokens, "temperature": temperature,
        "top_p": top_p, "seed": seed, "chunk_size": chunk_size, "prompt_column": prompt_column,
        "id_column": id_column, "split": split,
        "export": {"sft_all_rounds": sft_all_rounds, "test_fraction": test_fraction,
                   "skip_flags": [] if keep_flagged else None},
        "engine": engine_overrides(model, backend, dtype, max_model_len, base_url, served_model_name,
                                   trust_remote_code, enforce_eager),
    })
    terminal.capture(cfg.out)
    summary = run_revise(cfg, force=force)
    say_constitution(cfg.constitution)
    print_summary(summary)


def print_summary(s: ReviseSummary) -> None:
    e = s.export
    console.print(
        f"[bold green]done[/] {s.done} revised, {s.skipped} already there, {s.rejected} rejected"
        + (f" (see {s.out / 'rejects.jsonl'})" if s.rejected else "")
        + f"; {s.records} records, {s.flagged} flagged"
        + (f" ({', '.join(f'{k} {v}' for k, v in s.flags.items())})" if s.flags else "")
        + (f"; {s.stale} stale recomputed (made from other inputs than today's)" if s.stale else "")
        + (f"; {s.removed} removed (their prompts are no longer in the input)" if s.removed else "")
    )
    console.print(
        f"{s.prompt_tokens} prompt + {s.completion_tokens} completion tokens in {s.seconds:.1f} s "
        f"({s.tokens_per_s:.0f} tok/s)"
    )
    skipped = [f"{k} {v}" for k, v in e.sft_skipped.items()]
    console.print(
        f"exported {e.sft_rows} SFT rows, {e.prefs_rows} preference pairs "
        f"({', '.join(f'{k} {v}' for k, v in e.splits.items())})"
        + (f"; left out of SFT: {', '.join(skipped)}" if skipped else "")
        + (f"; pairs left out: {', '.join(f'{k} {v}' for k, v in e.prefs_skipped.items())}"
           if e.prefs_skipped else "")
        + (" (--keep-flagged exports flagged texts too)" if skipped or e.prefs_skipped else "")
    )
    if s.principle_usage:
        table = Table("principle", "drawn", title="principle usage", title_justify="left")
        for pid, n in s.principle_usage.items():
            table.add_row(pid, str(n))
        console.print(table)
    console.print(f"-> {s.out} (records.jsonl, sft.jsonl, prefs.jsonl, dataset/, summary.json)")
