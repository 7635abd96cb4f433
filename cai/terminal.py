"""Where output goes: cai's own lines on the terminal, third-party chatter in the run's log.

vLLM, torch, transformers and datasets write log lines, warnings and progress bars, some from
Python and some from C++ straight to file descriptors 1 and 2 (dozens of lines per run). The
CLI is quiet by default: when a stage starts (`capture`), descriptors 1 and 2 are pointed at
`<run folder>/cai.log`, and cai's own consoles (`out`, `err`: progress bars, summaries, `Error:`
and `Warning:` lines) keep writing to copies of the original terminal descriptors. A stage
without a run folder sends the chatter to stderr. With `--verbose` it all goes to stderr.

Either way stdout carries only cai's own output, so `cai judge eval --json | jq` works.
Only `cai.cli.main` turns the redirection on (`enable`); in-process callers (tests through
typer's CliRunner, notebooks) keep their streams untouched.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from pathlib import Path

from rich.console import Console

from cai.errors import ConfigError, Location

LOG_NAME = "cai.log"

out = Console()
"""cai's own stdout (reports, tables, JSON)."""
err = Console(stderr=True)
"""cai's own stderr (progress bars, summaries, `Error:` and `Warning:` lines)."""

_state = {"enabled": False, "verbose": False, "captured": False}


def enable(verbose: bool) -> None:
    """Let `capture` redirect descriptors (the console script calls this once, first)."""
    _state["enabled"], _state["verbose"] = True, verbose


def set_verbose(verbose: bool) -> None:
    _state["verbose"] = _state["verbose"] or verbose


def capture(run_dir: Path | str | None) -> Path | None:
    """Send third-party output to `run_dir`/cai.log (stderr if no run folder, or verbose) and
    keep cai's consoles on the terminal. Returns the log path, or None. Idempotent."""
    route_warnings()
    if not _state["enabled"] or _state["captured"]:
        return None
    log = None
    if run_dir is not None and not _state["verbose"]:
        log = Path(run_dir) / LOG_NAME
        try:
            log.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as e:
            raise ConfigError(f"cannot write to the output folder ({e.strerror})", Location(str(run_dir)),
                              fix="choose an --out folder you can write to") from e
    else:
        fd = os.dup(2)
    sys.stdout.flush()
    sys.stderr.flush()
    out.file = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8", errors="replace")
    err.file = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
    os.dup2(fd, 1)
    if log is not None:
        os.dup2(fd, 2)
        sys.stdout, sys.stderr = _BestEffort(sys.stdout), _BestEffort(sys.stderr)
    os.close(fd)
    _state["captured"] = True
    return log


class _BestEffort:
    """A Python stream into cai.log whose writes never raise: on a full disk a library's print,
    warning or progress bar must not stop the stage (the stage's own writes fail with an error
    naming their file). C-level writes to the descriptor ignore such errors already."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError:
            return len(text)

    def flush(self) -> None:
        with contextlib.suppress(OSError):
            self._stream.flush()

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def is_own_warning(category: type[Warning], filename: str) -> bool:
    """A warning cai raised on purpose (shown as a `Warning:` line), not one from a library."""
    own_dir = str(Path(__file__).resolve().parent)
    return category.__module__.split(".")[0] == "cai" or str(Path(filename).resolve()).startswith(own_dir)


def _show(message, category, filename, lineno, file=None, line=None) -> None:
    if is_own_warning(category, filename):
        err.print(f"[yellow]Warning:[/] {message}", highlight=False, soft_wrap=True)
    else:  # a library's warning: to stderr, which is the log once captured
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def route_warnings() -> None:
    """cai's warnings as one `Warning: ...` line each on the terminal; the rest to stderr/log."""
    warnings.showwarning = _show
