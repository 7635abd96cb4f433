"""Typed errors. The library raises them; only the CLI turns them into text and exit codes.

Every error says what is wrong, where (file, line, column, record) and how to fix it, so a
user never has to read a traceback to know what to change.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field


@dataclass
class Location:
    """Where a problem is: a file, and optionally a line and column (1-based) or a record id."""

    file: str | None = None
    line: int | None = None
    column: int | None = None
    record: str | None = None

    def __str__(self) -> str:
        parts = []
        if self.file:
            where = self.file
            if self.line is not None:
                where += f":{self.line}"
                if self.column is not None:
                    where += f":{self.column}"
            parts.append(where)
        if self.record is not None:
            parts.append(f"record {self.record!r}")
        return ", ".join(parts)


@dataclass
class CaiError(Exception):
    """Base of every error cai raises on purpose. `str()` gives the full message."""

    message: str
    location: Location | None = None
    fix: str | None = None

    def __post_init__(self) -> None:
        super().__init__(str(self))

    def __str__(self) -> str:
        head = f"{self.location}: {self.message}" if self.location and str(self.location) else self.message
        return f"{head}\n  fix: {self.fix}" if self.fix else head


class ConfigError(CaiError):
    """A config file or flag has a bad value."""


class InputError(CaiError):
    """A user's input file (prompts, pairs, datasets) cannot be read or has a bad record."""


class RecordError(InputError):
    """A record a stage wrote (records.jsonl, judgments.jsonl, prefs.jsonl, ...) is malformed, or of
    a format newer than this cai reads (cai.schema)."""


class ModelNotFoundError(CaiError):
    """A model name resolves to nothing that can be loaded here."""


class EngineError(CaiError):
    """The inference engine failed, timed out, or was asked for something it cannot do."""


class OutputError(CaiError):
    """An output file cannot be written (disk full, read-only or missing folder, no permission)."""


def write_error(path: object, e: OSError) -> OutputError:
    """The error for a failed write of `path`: what the system said, and what to do about it."""
    if e.errno == errno.ENOSPC or e.errno == errno.EDQUOT:
        fix = "free some disk space (or choose another --out), then run the same command again to resume"
    else:
        fix = "choose an --out folder you can write to, then run the same command again"
    return OutputError(f"cannot write: {e.strerror or e}", Location(str(path)), fix=fix)


@dataclass
class ConstitutionError(CaiError):
    """A principle file breaks the schema. Names file:line:column, the principle id where
    there is one, what is wrong and how to fix it."""

    principle: str | None = None

    def __str__(self) -> str:
        what = f"principle {self.principle!r}: {self.message}" if self.principle else self.message
        where = str(self.location) if self.location else ""
        head = f"{where}: {what}" if where else what
        return f"{head}\n  fix: {self.fix}" if self.fix else head


class ResumeError(CaiError):
    """An output folder holds a job made with a different config, or cannot be resumed."""


@dataclass
class MultiError(CaiError):
    """Several problems found in one pass (a loader reports all of them, not only the first)."""

    errors: list[CaiError] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [self.message] + [f"- {e}".replace("\n", "\n  ") for e in self.errors]
        return "\n".join(lines)
