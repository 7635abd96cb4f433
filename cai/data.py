"""Reading user inputs into typed records, with located errors and a rejects list.

Accepted inputs: JSONL, JSON (a list of objects), CSV, or a Hugging Face dataset folder
(`save_to_disk`; a DatasetDict uses its first split unless one is named). A row holds either a
prompt string (column `prompt` by default) or a conversation (a list of {role, content}, in the
same column or in `messages`). Ids come from an `id` column, else from the content (so the same
prompt keeps its id across runs and files).

Rows with problems are never dropped silently: they become `Reject`s with the reason, which the
stage writes to a rejects file and counts in its summary.

Training data (`cai sft`, `cai rm train`, `cai rm eval`) is read by `read_rows`: a JSONL file, a
dataset folder with `train_<kind>` / `test_<kind>` splits, or a stage output folder; its rows
keep their location for the stage's own checks (`check_columns`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from cai.conversation import parse_messages
from cai.errors import InputError, Location
from cai.records import read_jsonl

T = TypeVar("T")


@dataclass(frozen=True)
class PromptRecord:
    """One input prompt, as a conversation that ends with a user turn."""

    id: str
    messages: tuple[tuple[str, str], ...]  # ((role, content), ...): hashable and frozen
    source: str  # "file:line" (or "file:row N") for messages about this record

    @property
    def conversation(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]

    @property
    def text(self) -> str:
        """The last user turn (what a summary shows)."""
        return self.messages[-1][1]


@dataclass(frozen=True)
class Reject:
    id: str | None
    source: str
    reason: str
    fix: str

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "source": self.source, "reason": self.reason, "fix": self.fix}


def content_id(messages: tuple[tuple[str, str], ...]) -> str:
    blob = json.dumps(messages, ensure_ascii=False, separators=(",", ":"))
    return "p-" + hashlib.sha256(blob.encode()).hexdigest()[:16]


def iter_rows(path: Path, split: str | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (source, row) pairs from any supported file; errors name the file and line."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"input {path} does not exist", Location(str(path)), fix="check the path")
    if path.is_dir():
        yield from _iter_hf(path, split)
        return
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        with path.open("rb") as f:
            for line, raw_bytes in enumerate(f, 1):
                raw = _decode(raw_bytes, path, line)
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw)
                except json.JSONDecodeError as e:
                    raise InputError(f"invalid JSON: {e.msg}", Location(str(path), line, e.colno),
                                     fix="each line must be one JSON object; fix or delete this line") from e
                yield f"{path}:{line}", obj
    elif suffix == ".json":
        raw_bytes = path.read_bytes()
        try:
            data = json.loads(_decode(raw_bytes, path, None))
        except json.JSONDecodeError as e:
            raise InputError(f"invalid JSON: {e.msg}", Location(str(path), e.lineno, e.colno),
                             fix="the file must be one JSON list of objects") from e
        if isinstance(data, dict):
            data = data.get("data", data.get("rows"))
        if not isinstance(data, list):
            raise InputError("expected a JSON list of objects (or {\"data\": [...]})", Location(str(path)),
                             fix="write the rows as a JSON list, or use JSONL")
        for i, obj in enumerate(data):
            yield f"{path}:item {i}", obj
    elif suffix in (".csv", ".tsv"):
        text = _decode(path.read_bytes(), path, None)
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if suffix == ".tsv" else ",")
        for row in reader:
            yield f"{path}:{reader.line_num}", row
    else:
        raise InputError(f"unsupported input format {suffix!r}", Location(str(path)),
                         fix="use .jsonl, .json, .csv or a Hugging Face dataset folder")


_UTF8_FIX = "save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 FILE > NEW`)"


def _decode(raw: bytes, path: Path, line: int | None) -> str:
    """UTF-8 text of a line (or a whole file), or an error naming the line."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        if line is None:  # whole file: find the line of the bad byte
            line = raw[: e.start].count(b"\n") + 1
        raise InputError(f"not UTF-8 text ({e.reason}, byte {raw[e.start]:#04x})", Location(str(path), line),
                         fix=_UTF8_FIX) from e


def _iter_hf(path: Path, split: str | None) -> Iterator[tuple[str, dict[str, Any]]]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises FileNotFoundError or its own types
        raise InputError(f"{path} is not a Hugging Face dataset folder ({e})", Location(str(path)),
                         fix="pass a folder written by save_to_disk, or a .jsonl/.json/.csv file") from e
    if isinstance(ds, datasets.DatasetDict):
        if split is None:
            split = next(iter(ds))
        if split not in ds:
            raise InputError(f"split {split!r} not in {path}", Location(str(path)),
                             fix=f"use one of: {', '.join(ds)}")
        ds = ds[split]
    for i, row in enumerate(ds):
        yield f"{path}:row {i}", row


def row_prompt(row: dict[str, Any], source: str, prompt_column: str, id_column: str,
               parse: Callable[[Any], T | str]) -> tuple[str | None, T | Reject]:
    """A row's id (None when absent or empty) and its prompt: the value of `prompt_column` (for the
    default column, else of `messages` / `conversation`) read by `parse`, which returns the reason
    as a string when it cannot. A row without a prompt or with a bad one gives a Reject instead."""
    rid = row.get(id_column)
    rid = None if rid in (None, "") else str(rid)
    value = row.get(prompt_column)
    if value is None and prompt_column == "prompt":
        value = row.get("messages", row.get("conversation"))
    if value is None:
        return rid, Reject(rid, source, f"no {prompt_column!r} column",
                           f"add a {prompt_column!r} field or pass --prompt-column")
    parsed = parse(value)
    if isinstance(parsed, str):
        return rid, Reject(rid, source, f"{prompt_column!r}: {parsed}", "fix the row's prompt")
    return rid, parsed


def read_prompts(path: Path, prompt_column: str = "prompt", id_column: str = "id",
                 split: str | None = None) -> tuple[list[PromptRecord], list[Reject]]:
    """Read prompts. Returns the good records and the rejects (never silently dropped).

    A missing prompt column on every row is an input error (the whole file is wrong); a problem
    in one row makes that row a reject. Duplicate ids keep the first row and reject the others.
    """
    records: list[PromptRecord] = []
    rejects: list[Reject] = []
    seen: dict[str, str] = {}
    any_row = False
    columns_seen: set[str] = set()
    for source, row in iter_rows(path, split):
        any_row = True
        if not isinstance(row, dict):
            rejects.append(Reject(None, source, f"row is {type(row).__name__}, not an object",
                                  "each row must be a JSON object"))
            continue
        columns_seen.update(row)
        rid, msgs = row_prompt(row, source, prompt_column, id_column, parse_messages)
        if isinstance(msgs, Reject):
            rejects.append(msgs)
            continue
        if any(not c.strip() for r, c in msgs if r == "user"):
            rejects.append(Reject(rid, source, "empty prompt", "give the row a non-empty prompt or delete it"))
            continue
        rid = rid or content_id(msgs)
        if rid in seen:
            rejects.append(Reject(rid, source, f"duplicate id (first at {seen[rid]})",
                                  "give every row a unique id"))
            continue
        seen[rid] = source
        records.append(PromptRecord(rid, msgs, source))
    if any_row and not records and all(r.reason.startswith("no ") for r in rejects):
        raise InputError(f"no row has a {prompt_column!r} column (columns found: {', '.join(sorted(columns_seen))})",
                         Location(str(path)), fix="pass --prompt-column with the right column name")
    if not any_row:
        raise InputError(f"{path} holds no prompts", Location(str(path)), fix="add rows, or pass another file")
    if not records:
        first = rejects[0]
        raise InputError(f"no usable prompt: all {len(rejects)} row(s) rejected; the first at {first.source}: "
                         f"{first.reason}", Location(str(path)), fix=first.fix)
    return records, rejects


def reject_too_long(records: list[PromptRecord], engine, budget: int) -> tuple[list[PromptRecord], list[Reject]]:
    """Split off prompts whose rendered length leaves fewer than `budget` tokens of context."""
    lengths = engine.count_tokens([engine.render(r.conversation) for r in records])
    keep, rejects = [], []
    for r, n in zip(records, lengths, strict=True):
        if n + budget > engine.max_model_len:
            rejects.append(Reject(r.id, r.source,
                                  f"prompt is {n} tokens; with {budget} tokens for the work it exceeds "
                                  f"the model context of {engine.max_model_len}",
                                  "shorten the prompt, lower the token budgets, or raise --max-model-len"))
        else:
            keep.append(r)
    return keep, rejects


# ---------------------------------------------------------------------------------------------
# Training data: a JSONL file, a Hugging Face dataset folder, or a stage output folder
# ---------------------------------------------------------------------------------------------

SPLITS = {"sft": ("train_sft", "test_sft"), "prefs": ("train_prefs", "test_prefs")}
STAGE_FILES = {"sft": "sft.jsonl", "prefs": "prefs.jsonl"}


@dataclass(frozen=True)
class SourceRow:
    """One raw row and where it came from (for error messages)."""

    data: dict[str, Any]
    where: Location


def _jsonl_rows(path: Path) -> list[SourceRow]:
    # read_jsonl skips blank lines and reports bad JSON with its line; number the rest here.
    with path.open(encoding="utf-8") as f:
        linenos = [i for i, line in enumerate(f, 1) if line.strip()]
    return [SourceRow(obj, Location(str(path), lineno, record=_rid(obj)))
            for lineno, obj in zip(linenos, read_jsonl(path), strict=True)]


def _rid(obj: dict[str, Any]) -> str | None:
    rid = obj.get("id")
    return None if rid is None else str(rid)


def _dataset_rows(folder: Path, kind: str, split: Literal["train", "test"]) -> list[SourceRow] | None:
    from datasets import Dataset, DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(folder))
    except Exception as e:  # datasets raises FileNotFoundError or its own errors
        raise InputError(f"cannot read the dataset folder: {e}", Location(str(folder)),
                         fix="pass a folder written by DatasetDict.save_to_disk, or a JSONL file") from e
    if isinstance(ds, Dataset):
        if split == "test":
            return None
        name, table = "", ds
    else:
        assert isinstance(ds, DatasetDict)
        wanted = SPLITS[kind][0 if split == "train" else 1]
        name = next((s for s in (wanted, split) if s in ds), None)
        if name is None:
            if split == "test":
                return None
            raise InputError(f"the dataset has no split {wanted!r} (its splits: {', '.join(ds)})",
                             Location(str(folder)), fix=f"save the training rows as split {wanted!r}")
        table = ds[name]
    if split == "test" and len(table) == 0:
        return None  # the stages keep an empty test split (with its columns) when nothing fell in it
    label = f"{folder}[{name}]" if name else str(folder)
    return [SourceRow(row, Location(label, record=_rid(row) or f"#{i}")) for i, row in enumerate(table)]


def read_rows(source: str | Path, kind: Literal["sft", "prefs"],
              split: Literal["train", "test"] = "train") -> list[SourceRow] | None:
    """Rows of `source` for a split. `source` is a JSONL file (all rows are `train`; it has no
    `test`), a dataset folder (`train_<kind>` / `test_<kind>`, or `train` / `test`), or a stage
    output folder holding `dataset/` (preferred: it has both splits) or `<kind>.jsonl`.
    Returns None for a missing or empty test split; a missing train split is an error."""
    path = Path(source).expanduser()
    if not path.exists():
        raise InputError(f"{path} does not exist", fix="check the path")
    if path.is_file():
        return _jsonl_rows(path) if split == "train" else None
    if (path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists():
        return _dataset_rows(path, kind, split)
    if (path / "dataset").is_dir():
        return _dataset_rows(path / "dataset", kind, split)
    if (path / STAGE_FILES[kind]).is_file():
        return _jsonl_rows(path / STAGE_FILES[kind]) if split == "train" else None
    have = ", ".join(sorted(p.name for p in path.iterdir())[:20]) or "nothing"
    raise InputError(
        f"{path} holds no training data (looked for dataset/, {STAGE_FILES[kind]}, or a saved dataset); "
        f"it has: {have}",
        fix="pass the output folder of the previous stage, a JSONL file or a dataset folder")


def check_columns(rows: Sequence[SourceRow], needed: Sequence[str], source: str | Path) -> None:
    """Every row must have the `needed` keys; the error names the file, the missing columns and
    the columns the row does have."""
    if not rows:
        raise InputError(f"{source} has no rows", fix="check that the previous stage wrote data")
    problems = []
    for row in rows:
        missing = [c for c in needed if c not in row.data]
        if missing:
            problems.append(f"{row.where}: missing column(s) {', '.join(map(repr, missing))} "
                            f"(it has: {', '.join(row.data) or 'nothing'})")
    if problems:
        shown = problems[:10] + ([f"... and {len(problems) - 10} more rows"] if len(problems) > 10 else [])
        raise InputError(f"{len(problems)} row(s) of {source} lack required columns "
                         f"({', '.join(needed)}):\n  " + "\n  ".join(shown),
                         fix=f"every row needs {', '.join(needed)}")
