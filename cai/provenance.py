"""What every output record says about how it was made."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

import cai


def stamp(model: dict[str, Any], sampling: dict[str, Any], seed: int) -> dict[str, Any]:
    """The provenance fields of a record. `model` is `cai.models.identity`: the model's name, its
    folder's fingerprint and the engine settings that change outputs."""
    return {"model": model["model"], "model_fingerprint": model["fingerprint"],
            "engine": {k: v for k, v in model.items() if k not in ("model", "fingerprint")},
            "sampling": sampling, "seed": seed, "cai_version": cai.__version__}


def key(*parts: Any) -> str:
    """A stable hash of a record's inputs: equal keys mean the record would be made the same way,
    so a later pipeline can tell which records an edit (to a prompt, a principle, a setting)
    makes stale."""
    return hashlib.sha256(_dumps(parts).encode()).hexdigest()[:16]


def rows_key(rows: Iterable[Any]) -> str:
    """`key(list(rows))`, computed row by row: the hash of a training set (a million tokenized
    rows) without building its whole JSON text in memory (gigabytes) first."""
    h = hashlib.sha256(b"[[")
    for i, row in enumerate(rows):
        h.update((b"," if i else b"") + _dumps(row).encode())
    h.update(b"]]")
    return h.hexdigest()[:16]


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def derive_seed(run_seed: int, *parts: Any) -> int:
    """A seed for one record (and step) from the run seed: stable across processes and Python
    versions (unlike hash()), and independent of batch size and order."""
    blob = json.dumps([run_seed, *parts], ensure_ascii=False, separators=(",", ":"), default=str)
    return int.from_bytes(hashlib.sha256(blob.encode()).digest()[:4], "big") & 0x7FFFFFFF
