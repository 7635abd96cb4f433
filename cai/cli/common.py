"""Options and helpers shared by the CLI commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cai import library, terminal

console = terminal.err

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML config file; flags override it.")]
ModelOpt = Annotated[str | None, typer.Option("--model", help="`default`, a local HF folder, or a hub id.")]
BackendOpt = Annotated[str | None, typer.Option("--backend", help="vllm (default), hf, or http.")]
DtypeOpt = Annotated[str | None, typer.Option("--dtype", help="auto, bfloat16, float16 or float32.")]
MaxLenOpt = Annotated[int | None, typer.Option("--max-model-len", help="Longest prompt + completion in tokens.")]
BaseUrlOpt = Annotated[str | None, typer.Option("--base-url", help="http backend: server URL, e.g. "
                                                "http://127.0.0.1:8000/v1.")]
ServedOpt = Annotated[str | None, typer.Option("--served-model-name", help="http backend: model name on the server.")]
TrustOpt = Annotated[bool | None, typer.Option("--trust-remote-code/--no-trust-remote-code",
                                               help="Run model code from the checkpoint (off by default).")]
EagerOpt = Annotated[bool | None, typer.Option("--enforce-eager/--compile",
                                               help="vLLM: eager (fast start) or compiled (faster long jobs).")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Run seed, recorded in every output record.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Resume into a folder made with a different config.")]
ConstitutionOpt = Annotated[Path | None, typer.Option(
    "--constitution", help="Principle file, or the name of one that ships with cai (`cai principles list`). "
    "Default: `default`, cai's packaged principles.yaml (not a file of the current folder).")]


def say_constitution(value: str | Path) -> None:
    """Say which principle file a run used (first line of its summary): with no --constitution
    it is the packaged one, whatever the current folder holds."""
    console.print(f"constitution: {library.describe(value)}", markup=False, highlight=False, soft_wrap=True)


def engine_overrides(model=None, backend=None, dtype=None, max_model_len=None, base_url=None,
                     served_model_name=None, trust_remote_code=None, enforce_eager=None) -> dict[str, Any]:
    """The engine fields the user set on the command line (None = not set, keep YAML/default)."""
    return {"model": model, "backend": backend, "dtype": dtype, "max_model_len": max_model_len,
            "base_url": base_url, "served_model_name": served_model_name,
            "trust_remote_code": trust_remote_code, "enforce_eager": enforce_eager}
