"""The `cai` command line: a thin typer layer over the stage functions.

Each command group lives in its own module and registers itself on `app`. Only this layer turns
cai's typed errors into text and exit codes.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from cai.errors import CaiError

app = typer.Typer(
    name="cai",
    help="Constitutional AI: principles -> self-revision -> AI feedback -> reward model -> PPO.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err_console = Console(stderr=True)

# Importing a module registers its commands on `app`.
from cai.cli import generate as _generate  # noqa: E402,F401
from cai.cli import models as _models  # noqa: E402,F401

for _name in ("principles", "revise", "label", "judge", "train", "ppo"):
    # Command groups still being built are added as their modules land.
    try:
        __import__(f"cai.cli.{_name}")
    except ModuleNotFoundError as _e:
        if _e.name != f"cai.cli.{_name}":
            raise


def main() -> None:
    try:
        app()
    except CaiError as e:
        # markup off: messages quote user text, which may contain [brackets].
        err_console.print(f"Error: {e}", style="bold red", markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("Interrupted. Finished records are saved; run the same command again to resume.")
        sys.exit(130)
