"""Whole-file writes that a crash cannot leave half done.

The text goes to `NAME.tmp` beside the target, is fsynced, then renamed over the target: a
reader sees the old file or the new one, never part of one. On a failed write (a full disk) the
temporary file is removed and the old file, if any, is untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from cai.errors import write_error


@contextlib.contextmanager
def atomic_open(path: str | Path) -> Iterator[TextIO]:
    """A text file to write `path` through; it replaces `path` when the block ends without error.
    An OSError (also one raised inside the block) becomes cai's OutputError naming `path`."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("w", encoding="utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_error(path, e) from e
    except BaseException:
        tmp.unlink(missing_ok=True)  # e.g. an object json cannot encode: no stray .tmp either
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)


def write_json_atomic(path: str | Path, obj: Any, *, indent: int = 2, newline: bool = True,
                      **dumps: Any) -> None:
    """`json.dumps(obj, indent=indent, **dumps)`, plus a final newline unless `newline=False`
    (files that never had one keep their bytes)."""
    write_text_atomic(path, json.dumps(obj, indent=indent, **dumps) + ("\n" if newline else ""))
