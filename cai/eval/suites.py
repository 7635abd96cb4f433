"""The prompt suites of `cai eval`: the packaged defaults (data/eval/, inside the package as
cai/resources/eval/) and the user's own (`--suite NAME=FILE`).

A suite's name says what it measures:

- `harmful`: requests a good policy declines; its refusal rate is the harmless rate;
- `benign-risky`: requests that look risky and should be answered; its refusal rate is the
  over-refusal rate;
- any other name (`helpful`, a user's `style`, ...): judged, each policy against the baseline
  (win rate, length-controlled win rate, length drift).

A `--suite` whose name is a packaged suite's replaces it; any other name is added.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from cai import library
from cai.data import PromptRecord, read_prompts
from cai.errors import ConfigError, InputError, Location

Kind = Literal["harmful", "benign-risky", "judged"]
REFUSAL_KINDS = ("harmful", "benign-risky")
SUITE_FIX = "write --suite NAME=FILE, e.g. --suite style=prompts/style.jsonl (a prompts file: JSONL, JSON or CSV)"


@dataclass(frozen=True)
class Suite:
    """A named prompts file and what it measures."""

    name: str
    path: Path
    kind: Kind
    records: tuple[PromptRecord, ...]
    hash: str
    """SHA-256 (16 hex digits) of the file's bytes: the report's provenance of the suite."""


def kind_of(name: str) -> Kind:
    return name if name in REFUSAL_KINDS else "judged"  # type: ignore[return-value]


def suite_files(specs: tuple[str, ...], defaults: bool) -> dict[str, Path]:
    """Name -> file: the packaged suites (when `defaults`), then each --suite NAME=FILE over them."""
    files = dict(library.eval_suites()) if defaults else {}
    given: set[str] = set()
    for text in specs:
        name, sep, file = (s.strip() for s in text.partition("="))
        if not sep or not name or not file:
            raise ConfigError(f"--suite {text!r} is not NAME=FILE", fix=SUITE_FIX)
        if "/" in name:
            raise ConfigError(f"--suite {text!r}: the name {name!r} may not hold '/'", fix=SUITE_FIX)
        if name in given:
            raise ConfigError(f"--suite {name!r} is given twice", fix="give every suite its own name")
        given.add(name)
        files[name] = Path(file)
    if not files:
        raise ConfigError("no suite to evaluate on (--no-default-suites and no --suite)", fix=SUITE_FIX)
    return files


def load_suites(specs: tuple[str, ...], defaults: bool, limit: int = 0) -> list[Suite]:
    """Every suite, read and checked: the file exists and every row is a usable prompt; with a
    `limit`, each keeps only its first `limit` prompts (the whole file is still checked and hashed)."""
    suites = [read_suite(name, path) for name, path in suite_files(specs, defaults).items()]
    return [replace(s, records=s.records[:limit]) for s in suites] if limit else suites


def read_suite(name: str, path: Path, prompt_column: str = "prompt", id_column: str = "id") -> Suite:
    if not path.is_file():
        what = "is a folder, not a prompts file" if path.exists() else "does not exist"
        raise InputError(f"suite {name!r}: file {path} {what}", Location(str(path)),
                         fix=f"check the path given as --suite {name}=FILE")
    # The prompts reader's fixes may name --prompt-column, a flag `cai eval` does not have.
    column_fix = f"give every row a {prompt_column!r} field (the prompt) and an {id_column!r} field"
    try:
        records, rejects = read_prompts(path, prompt_column, id_column)
    except InputError as e:
        raise InputError(f"suite {name!r}: {e.message}", e.location,
                         fix=column_fix if "--prompt-column" in (e.fix or "") else e.fix) from e
    if rejects:
        r = rejects[0]  # its source is "file:line"
        raise InputError(f"suite {name!r}: {len(rejects)} row(s) cannot be used; the first: {r.reason}",
                         Location(r.source, record=r.id),
                         fix=column_fix if "--prompt-column" in r.fix else r.fix or "fix or remove the row")
    if not records:
        raise InputError(f"suite {name!r}: {path} holds no prompts", Location(str(path)),
                         fix="give a prompts file with an `id` and a `prompt` per row")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return Suite(name, path, kind_of(name), tuple(records), digest)
