"""The `cai` command line: a thin typer layer over the stage functions.

Each command group lives in its own module and registers itself on `app` (cai.cli.root), most
through `cai.cli.common.config_command`, which makes a flag of each config field. Only this layer
turns cai's typed errors into text and exit codes.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import traceback

from cai import terminal
from cai.cli.root import app
from cai.errors import CaiError

err_console = terminal.err

# Importing a module registers its commands on `app`, in this order (the order of `cai --help`).
for _name in ("generate", "models", "principles", "revise", "label", "judge", "train", "ppo", "eval", "report"):
    importlib.import_module(f"cai.cli.{_name}")


def _hoist_verbose(argv: list[str]) -> tuple[list[str], bool]:
    """`--verbose` is a global option; accept it after the command name too (`cai revise ... --verbose`)."""
    rest = [a for a in argv if a != "--verbose"]
    return rest, len(rest) != len(argv)


def main() -> None:
    args, verbose = _hoist_verbose(sys.argv[1:])
    terminal.enable(verbose)
    try:
        app(args=(["--verbose"] if verbose else []) + args, prog_name="cai")
    except CaiError as e:
        _print_error(str(e))
        sys.exit(1)
    except KeyboardInterrupt:
        _say_interrupted()
        sys.exit(130)
    except SystemExit as e:
        # typer turns Ctrl-C inside a command into a silent exit 130 (and click would print
        # "Aborted!" to stderr, which is cai.log once captured): say it on the terminal.
        if e.code == 130 and _caused_by_interrupt(e):
            _say_interrupted()
        raise
    except OSError as e:
        # A write or read the library did not wrap (a full disk inside a library's save, ...).
        where = f"{e.filename}: " if e.filename else ""
        _print_error(f"{where}{e.strerror or e}\n  fix: free disk space or choose a folder you can write to, "
                     "then run the same command again")
        sys.exit(1)
    except Exception:
        # A bug, not a user error: the traceback goes to the terminal (and the log, if any).
        text = traceback.format_exc()
        terminal.err.print(text, markup=False, highlight=False, soft_wrap=True, end="")  # lines unbroken
        if terminal.err.file is not sys.stderr:
            with contextlib.suppress(OSError):
                sys.stderr.write(text)
        sys.exit(1)


def _caused_by_interrupt(e: BaseException) -> bool:
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def _say_interrupted() -> None:
    err_console.print("Interrupted. Finished records are saved; run the same command again to resume.",
                      markup=False, highlight=False)


def _print_error(message: str) -> None:
    # markup off: messages quote user text, which may contain [brackets].
    err_console.print(f"Error: {message}", style="bold red", markup=False, highlight=False, soft_wrap=True)
