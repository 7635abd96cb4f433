"""The append-only JSONL store every batch stage writes to, and the run folder around it.

Crash safety: finished records are appended and flushed (and fsynced) in chunks, so `kill -9`
loses at most the records of the chunk in flight. On resume a torn last line (a write cut
short) is cut off with a warning, and the ids already present are skipped. A run folder keeps
the resolved config; resuming with a different one is refused with the list of differences.
"""

from __future__ import annotations

import json
import os
import signal
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from cai import config as cfg
from cai.errors import InputError, Location, ResumeError, write_error


class TornTailWarning(UserWarning):
    """A JSONL file ended in a partial line (a crash mid-write); it was cut off."""


def repair_torn_tail(path: Path) -> int:
    """Cut a partial last line off `path`. Returns the number of bytes removed."""
    if not path.exists():
        return 0
    with path.open("rb+") as f:
        data = f.read()
        if not data:
            return 0
        keep = len(data)
        if not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
        else:
            # A complete-looking last line can still be garbage if the crash hit mid-buffer.
            start = data.rfind(b"\n", 0, len(data) - 1) + 1
            try:
                json.loads(data[start:])
            except ValueError:
                keep = start
        removed = len(data) - keep
        if removed:
            f.truncate(keep)
            warnings.warn(
                f"{path}: removed a torn last line ({removed} bytes) left by an interrupted write; "
                "its record will be made again",
                TornTailWarning,
                stacklevel=2,
            )
        return removed


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Yield the objects of a JSONL file; a bad line raises an error naming file and line."""
    with Path(path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(
                    f"invalid JSON: {e.msg}",
                    Location(str(path), lineno, e.colno),
                    fix="each line must be one JSON object",
                ) from e
            if not isinstance(obj, dict):
                raise InputError(
                    f"expected a JSON object, got {type(obj).__name__}",
                    Location(str(path), lineno),
                    fix="each line must be one JSON object",
                )
            yield obj


class JsonlStore:
    """Append-only JSONL records keyed by `id`, flushed and fsynced in chunks."""

    def __init__(self, path: Path, key: str = "id", flush_every: int = 1):
        self.path = Path(path)
        self.key = key
        self.flush_every = flush_every
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_torn_tail(self.path)
        self.done: set[str] = set()
        if self.path.exists():
            for rec in read_jsonl(self.path):
                self.done.add(str(rec[key]))
        self._pending: list[str] = []
        self._f = self.path.open("a", encoding="utf-8")

    def __contains__(self, record_id: str) -> bool:
        return str(record_id) in self.done

    def __len__(self) -> int:
        return len(self.done)

    def append(self, record: dict[str, Any]) -> None:
        rid = str(record[self.key])
        if rid in self.done:
            raise ValueError(f"record id {rid!r} written twice to {self.path}")
        self.done.add(rid)
        self._pending.append(json.dumps(record, ensure_ascii=False) + "\n")
        if len(self._pending) >= self.flush_every:
            self.flush()

    def extend(self, records: Iterable[dict[str, Any]]) -> None:
        for r in records:
            self.append(r)
        self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        # One write per chunk: a crash leaves whole lines plus at most one torn line (cut off on
        # resume, as after a failed write).
        try:
            if os.environ.get(TORN_WRITE_ENV):
                _die_mid_write(self._f, "".join(self._pending))
            self._f.write("".join(self._pending))
            self._f.flush()
            os.fsync(self._f.fileno())
        except OSError as e:
            raise write_error(self.path, e) from e
        self._pending.clear()

    def close(self) -> None:
        self.flush()
        self._f.close()

    def __enter__(self) -> JsonlStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


TORN_WRITE_ENV = "CAI_CHAOS_TORN_WRITE"
"""Fault-injection hook for scripts/chaos.py only: when set, the first chunk write stops partway
(its last line cut in the middle, written and fsynced) and the process SIGKILLs itself: a crash in
the middle of a write."""


def _die_mid_write(f, text: str) -> None:
    start = text.rfind("\n", 0, len(text) - 1) + 1  # the chunk's last line is cut in its middle
    f.write(text[: start + max(1, (len(text) - start) // 2)])
    f.flush()
    os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)


def write_jsonl_atomic(path: Path, records: Iterable[dict[str, Any]]) -> int:
    """Write a whole JSONL file through a temporary file and a rename (exports, reports)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
                n += 1
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)  # the old file, if any, is untouched
        raise write_error(path, e) from e
    return n


CONFIG_FILE = "config.yaml"


def open_run_dir(out: Path, config: Any, force: bool = False) -> Path:
    """Create or resume a run folder. The resolved config is saved as config.yaml; resuming with
    a different config is refused (the user picks a new folder or passes --force)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / CONFIG_FILE
    new = cfg.to_jsonable(config)
    if path.exists() and not force:
        old = yaml.safe_load(path.read_text()) or {}
        changes = cfg.diff(old, new)
        if changes:
            raise ResumeError(
                f"{out} holds a run made with a different config:\n    " + "\n    ".join(changes),
                fix="choose a new --out folder, or pass --force to continue there with the new config",
            )
    cfg.save(config, path)
    return out
