"""The `cai` Typer app that every command module registers on.

It lives in its own module so that command modules import it from here, not from the package
`cai.cli` (whose `__init__` imports them to register their commands: that was an import cycle).
"""

from __future__ import annotations

from typing import Annotated

import typer

from cai import terminal

app = typer.Typer(
    name="cai",
    help="Constitutional AI: principles -> self-revision -> AI feedback -> reward model -> PPO.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _options(
    verbose: Annotated[bool, typer.Option("--verbose", help="Show vLLM's, torch's and transformers' log lines "
                                          "and warnings (by default they go to cai.log in the run folder). "
                                          "Accepted anywhere on the command line.")] = False,
) -> None:
    terminal.set_verbose(verbose)
    terminal.route_warnings()
