"""`cai models prepare|path`."""

from __future__ import annotations

from typing import Annotated

import typer

from cai import models
from cai.cli.common import console
from cai.cli.root import app

models_app = typer.Typer(help="Prepare and locate models.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("prepare")
def prepare(
    name: Annotated[str, typer.Argument(help="`default` (the embedded SmolLM2-135M-Instruct) or a model.")] = "default",
    force: Annotated[bool, typer.Option("--force", help="Convert again even if already prepared.")] = False,
) -> None:
    """Make a model ready to load offline (the default model: convert its GGUF once)."""
    if name.lower() in models.ALIASES:
        with console.status("Converting the embedded GGUF into a Hugging Face folder (about 20 s)..."):
            path = models.prepare_default(force=force)
    else:
        path = models.resolve(name)
    typer.echo(path)


@models_app.command("path")
def path(name: Annotated[str, typer.Argument(help="Model name.")] = "default") -> None:
    """Print where a model is loaded from (without preparing it)."""
    typer.echo(models.resolve(name, prepare=False))
