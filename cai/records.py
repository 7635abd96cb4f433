"""The append-only JSONL store every batch stage writes to, and the run folder around it.

Crash safety: finished records are appended and flushed (and fsynced) in chunks, so `kill -9`
loses at most the records of the chunk in flight. On resume a torn last line (a write cut
short) is cut off with a warning, and the ids already present are skipped.

Resume means the same inputs (docs/architecture.md, "Resume"): a run folder keeps the resolved
config and the run-wide inputs it cannot show (a model folder's fingerprint, the cleaning
version, the shared prompts of a constitution); resuming with different ones is refused with the
list of differences unless `force`. Per record, the store compares each stored `key` with the key
of today's inputs: a stale record is dropped from the file and made again.

One writer per run folder: `RunLock` holds an exclusive `flock` on DIR/.cai.lock for the whole
job; the OS releases it when the process ends, also by `kill -9`. A store that finds an id twice
on disk (two writers without the lock) refuses to open, naming the lines.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import signal
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from cai import config as cfg
from cai.atomic import atomic_open, write_json_atomic
from cai.errors import InputError, Location, ResumeError, write_error


class TornTailWarning(UserWarning):
    """A JSONL file ended in a partial line (a crash mid-write); it was cut off."""


def repair_torn_tail(path: Path) -> int:
    """Cut a partial last line off `path`. Returns the number of bytes removed. Reads only the
    end of the file (the last line and the newline before it), whatever its size."""
    if not path.exists():
        return 0
    with path.open("rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if not size:
            return 0
        f.seek(size - 1)
        whole = f.read(1) == b"\n"
        start = _line_start(f, size - 1 if whole else size)
        keep = size
        if not whole:
            keep = start
        else:
            # A complete-looking last line can still be garbage if the crash hit mid-buffer.
            f.seek(start)
            try:
                json.loads(f.read(size - start))
            except ValueError:
                keep = start
        removed = size - keep
        if removed:
            f.truncate(keep)
            warnings.warn(
                f"{path}: removed a torn last line ({removed} bytes) left by an interrupted write; "
                "its record will be made again",
                TornTailWarning,
                stacklevel=2,
            )
        return removed


def _line_start(f, end: int, block: int = 1 << 16) -> int:
    """The offset just after the last newline before `end` (0 if there is none)."""
    pos = end
    while pos > 0:
        step = min(block, pos)
        f.seek(pos - step)
        i = f.read(step).rfind(b"\n")
        if i >= 0:
            return pos - step + i + 1
        pos -= step
    return 0


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Yield the objects of a JSONL file; a bad line raises an error naming file and line."""
    for _, obj in read_jsonl_numbered(path):
        yield obj


def read_jsonl_numbered(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """`read_jsonl` with each object's line number (1-based; blank lines are skipped but counted),
    for readers whose own errors name the line (cai.schema.read_records)."""
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
            yield lineno, obj


class JsonlStore:
    """Append-only JSONL records keyed by `id`, flushed and fsynced in chunks.

    `current_keys` (id -> the key today's inputs give that record): a stored record whose `key`
    differs is stale; it is removed from the file (rewritten atomically, the other lines kept
    byte for byte) so that its id is made again. `stale` lists the ids removed. Records of ids
    not in `current_keys` are kept (a judge eval with a smaller --limit), unless `drop_unknown`:
    then they are removed too and listed in `removed` (a stage whose outputs are everything in
    the store, such as revise: an edited prompt without an id column has a new id)."""

    def __init__(self, path: Path, key: str = "id", flush_every: int = 1,
                 current_keys: Mapping[str, str] | None = None, drop_unknown: bool = False):
        self.path = Path(path)
        self.key = key
        self.flush_every = flush_every
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_torn_tail(self.path)
        self.done: set[str] = set()
        self.stale: list[str] = []
        self.removed: list[str] = []
        if self.path.exists():
            lines = _indexed_lines(self.path, key)
            if current_keys is not None:
                self.stale = [rid for rid, k in lines if rid in current_keys and k != current_keys[rid]]
                self.removed = [rid for rid, _ in lines if drop_unknown and rid not in current_keys]
                _drop_lines(self.path, key, set(self.stale) | set(self.removed))
            self.done = {rid for rid, _ in lines} - set(self.stale) - set(self.removed)
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


def _indexed_lines(path: Path, key: str) -> list[tuple[str, Any]]:
    """(id, stored key) of every record, read line by line; an id found twice is an error naming
    its lines (two processes wrote into one folder without the run lock, e.g. an older cai)."""
    out, seen = [], {}
    for lineno, rec in enumerate(read_jsonl(path), 1):
        rid = str(rec[key])
        seen.setdefault(rid, []).append(lineno)
        out.append((rid, rec.get("key")))
    twice = {rid: lines for rid, lines in seen.items() if len(lines) > 1}
    if twice:
        shown = "; ".join(f"{rid!r} on lines {', '.join(map(str, lines))}" for rid, lines in list(twice.items())[:5])
        more = f" (and {len(twice) - 5} more ids)" if len(twice) > 5 else ""
        raise ResumeError(
            f"{len(twice)} record id(s) appear more than once: {shown}{more}. Two processes wrote into this "
            "run at the same time",
            Location(str(path), next(iter(twice.values()))[1]),
            fix="keep the first line of each id and delete the later ones, or start again in a new --out folder",
        )
    return out


def stale_archive(path: Path) -> Path:
    """Where records dropped from `path` are kept: `records.jsonl` -> `records.jsonl.stale` (not
    `*.jsonl`, so nothing that globs a run folder's outputs reads them)."""
    return path.with_name(path.name + ".stale")


def _drop_lines(path: Path, key: str, gone: set[str]) -> None:
    """Rewrite `path` without the records of `gone`, the other lines byte for byte, line by line
    and atomically (a crash leaves the old file).

    The dropped lines are first appended (fsynced) to `stale_archive(path)`: a principle edited
    by mistake, or a mistaken --force, must not destroy hours of generations for good. A crash
    between the two steps can archive a line twice; the store itself is never wrong."""
    if not gone:
        return
    tmp = path.with_name(path.name + ".tmp")
    try:
        with path.open(encoding="utf-8") as src, tmp.open("w", encoding="utf-8") as f, \
                stale_archive(path).open("a", encoding="utf-8") as archive:
            if archive.tell() and not _ends_with_newline(archive.name):
                archive.write("\n")  # a crash cut the archive's last line: don't glue the next one to it
            for line in src:
                if not line.strip():
                    continue
                (archive if str(json.loads(line)[key]) in gone else f).write(line)
            for out in (archive, f):
                out.flush()
                os.fsync(out.fileno())
        tmp.replace(path)
    except OSError as e:
        # A full disk: the store is untouched; don't leave a partial copy of it taking the space.
        tmp.unlink(missing_ok=True)
        raise write_error(e.filename or path, e) from e


def _ends_with_newline(path: str) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


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
    n = 0
    with atomic_open(path) as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    return n


CONFIG_FILE = "config.yaml"
INPUTS_FILE = "inputs.json"
"""Run-wide inputs a config cannot show (model fingerprints, the cleaning version, ...)."""
LOCK_FILE = ".cai.lock"


def open_run_dir(out: Path, config: Any, force: bool = False, *, inputs: dict[str, Any] | None = None,
                 resumable: tuple[str, ...] = (), records: str | None = None) -> Path:
    """Create or resume a run folder. The resolved config is saved as config.yaml and `inputs`
    as inputs.json; resuming with a different config or different inputs is refused with each
    difference (field: old -> new) unless `force`, which accepts them (the stage then makes again
    every record whose key they change).

    `resumable`: config fields (prefixes, e.g. "export.") that change no record, so they may
    change freely. `records`: the stage's records file; while it is empty (a run that failed to
    start, e.g. on a mistyped model name) the folder takes any config."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / CONFIG_FILE
    new = cfg.to_jsonable(config)
    has_records = records is None or ((out / records).exists() and (out / records).stat().st_size > 0)
    if path.exists() and not force and has_records:
        old = cfg.with_new_defaults(yaml.safe_load(path.read_text()) or {}, config)
        changes = [c for c in cfg.diff(old, new) if not c.startswith(resumable)]
        if inputs is not None:
            old_inputs = _read_inputs(out)
            changes += (["inputs: this folder's records were made by an older cai version, which did not record "
                         "them"] if old_inputs is None else
                        [f"inputs.{c}" for c in cfg.diff(old_inputs, cfg.to_jsonable(inputs))])
        if changes:
            raise ResumeError(
                f"{out} holds a run made with a different config:\n    " + "\n    ".join(changes),
                fix="choose a new --out folder, or pass --force to continue there with the new config "
                    "(records it changes are made again; the others are kept)",
            )
    cfg.save(config, path)
    if inputs is not None:
        write_json_atomic(out / INPUTS_FILE, cfg.to_jsonable(inputs), sort_keys=True)
    return out


def _read_inputs(out: Path) -> dict[str, Any] | None:
    path = out / INPUTS_FILE
    return json.loads(path.read_text()) if path.exists() else None


# --- One writer per run folder ---------------------------------------------------------------------


class RunLockedError(ResumeError):
    """Another process is writing into the same run folder."""


class RunLockUnavailableWarning(UserWarning):
    """The run folder's filesystem does not support flock: the job runs without the run lock."""


class RunLock:
    """An exclusive, non-blocking `flock` on a lock file, held for a whole job.

    flock locks belong to an open file, so the OS drops them when the holder's process ends in
    any way (`kill -9` included): a crashed job never leaves its folder locked. The holder's pid is
    written into the file so that a refused process can name it."""

    def __init__(self, path: Path, what: str | None = None):
        self.path = Path(path)
        self.what = what or str(self.path.parent)
        self._f = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = self.path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            pid = f.read().strip()
            f.close()
            raise RunLockedError(
                f"{self.what} is in use by another cai process" + (f" (pid {pid})" if pid else "")
                + "; two jobs writing into one run would duplicate its records",
                fix="wait for that job to finish (or stop it), or use another --out",
            ) from None
        except OSError as e:
            # Some shared filesystems do not do flock (Lustre mounted without -o flock, some FUSE
            # mounts): run unlocked rather than not at all; the stores still refuse an id found
            # twice on disk.
            f.close()
            warnings.warn(f"{self.what}: the run lock cannot be taken on this filesystem ({e}); running "
                          "without it: make sure no other job writes into this folder",
                          RunLockUnavailableWarning, stacklevel=2)
            return self
        try:
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()}\n")
            f.flush()
        except OSError as e:  # a full disk: the first write of a job is this one
            with contextlib.suppress(OSError):
                f.close()  # closing flushes again, and fails again
            raise write_error(self.path, e) from None
        self._f = f
        return self

    def release(self) -> None:
        if self._f is not None:
            self._f.close()  # closing the file drops the lock
            self._f = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def lock_run_dir(folder: Path) -> RunLock:
    """The lock of a run folder (DIR/.cai.lock), not yet taken: use it in a `with`."""
    return RunLock(Path(folder) / LOCK_FILE, str(folder))


F = TypeVar("F", bound=Callable[..., Any])


def locked_run(fn: F) -> F:
    """Hold the run lock of `cfg.out` (the first argument's) while a stage function runs."""

    @functools.wraps(fn)
    def wrapper(cfg: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(cfg, "out", None) in (None, ""):
            return fn(cfg, *args, **kwargs)  # nothing is written (or the config check will say so)
        with lock_run_dir(Path(cfg.out)):
            return fn(cfg, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
