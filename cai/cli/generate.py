"""`cai generate`."""

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
    DtypeOpt,
    EagerOpt,
    MaxLenOpt,
    ModelOpt,
    SeedOpt,
    ServedOpt,
    TrustOpt,
    console,
    engine_overrides,
)
from cai.generate import GenerateConfig, run_generate


@app.command("generate")
def generate(
    prompts: Annotated[Path | None, typer.Option("--prompts", help="Prompts: JSONL, JSON, CSV or a HF dataset folder.")
                       ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Output JSONL (resumed if it exists).")] = None,
    cfg_file: ConfigOpt = None,
    model: ModelOpt = None,
    backend: BackendOpt = None,
    dtype: DtypeOpt = None,
    max_model_len: MaxLenOpt = None,
    base_url: BaseUrlOpt = None,
    served_model_name: ServedOpt = None,
    trust_remote_code: TrustOpt = None,
    enforce_eager: EagerOpt = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", help="New tokens per response.")] = None,
    temperature: Annotated[float | None, typer.Option("--temperature", help="0 = greedy.")] = None,
    top_p: Annotated[float | None, typer.Option("--top-p")] = None,
    seed: SeedOpt = None,
    prompt_column: Annotated[str | None, typer.Option("--prompt-column")] = None,
) -> None:
    """Answer a file of prompts with one model (batched, resumable, with provenance)."""
    cfg = config.load(GenerateConfig, cfg_file, {
        "prompts": prompts, "out": out, "max_tokens": max_tokens, "temperature": temperature, "top_p": top_p,
        "seed": seed, "prompt_column": prompt_column,
        "engine": engine_overrides(model, backend, dtype, max_model_len, base_url, served_model_name,
                                   trust_remote_code, enforce_eager),
    })
    terminal.capture(None)  # the output is one file, not a run folder: library chatter to stderr
    s = run_generate(cfg)
    console.print(
        f"[bold green]done[/] {s.done} generated, {s.skipped} already there, {s.rejected} rejected"
        + (f" (see {s.rejects_path})" if s.rejects_path else "")
        + (f"; {s.stale} stale recomputed" if s.stale else "")
        + (f"; {s.unfinished} unfinished (flagged)" if s.unfinished else "")
        + f"; {s.truncated} hit max_tokens; {s.prompt_tokens} prompt + {s.completion_tokens} completion tokens "
        f"in {s.seconds:.1f} s ({s.completion_tokens / max(s.seconds, 1e-9):.0f} tok/s) -> {cfg.out}"
    )
