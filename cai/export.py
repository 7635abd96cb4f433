"""Training data out of a stage's records: SFT conversations and preference pairs, as JSONL files
and as one Hugging Face DatasetDict.

The formats are TRL's conversational ones, so `trl`'s SFTTrainer / DPOTrainer / RewardTrainer
and cai's own trainers read them as they are:

- SFT rows: `messages` = the prompt turns, then the assistant's answer to train on.
- Preference rows: `prompt` = the prompt turns, `chosen` and `rejected` = one assistant turn each
  ([{"role": "assistant", "content": ...}]).

Every row also carries its record `id` and the provenance columns of the stage. The train/test
split is decided per record id by a seeded hash, so a prompt lands in the same split in every run
and in every kind of data (its SFT rows and its preference pairs are never on opposite sides).

The revise stage exports its revisions here (`export_revisions`); the label stage reuses
`split_rows` and `write_dataset` for its judged pairs. The rows are the typed records of
cai.schema (`SftRow`, `RevisionPreference`), written by their `to_dict`.
docs/revise.md documents the columns and splits.
"""

from __future__ import annotations

import hashlib
import shutil
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cai.clean import FLAGS, check_skip_flags
from cai.errors import ConfigError
from cai.records import write_jsonl_atomic
from cai.schema import ReviseRecord, RevisionPreference, SftRow, Step, assistant

SFT_FILE = "sft.jsonl"
PREFS_FILE = "prefs.jsonl"
DATASET_DIR = "dataset"


@dataclass(frozen=True)
class ExportConfig:
    """What goes into the exported datasets, and how it is split."""

    sft_all_rounds: bool = False
    """SFT on every round's revision (one row per round, as the paper trained) instead of only
    the final one. All rows of a record share its split."""
    skip_flags: tuple[str, ...] = FLAGS
    """Texts with any of these flags are left out of the exports (counted in the summary).
    An empty list exports everything. Flags: empty, degenerate, truncated, wrong_role,
    fewshot_copy (cai.clean)."""
    test_fraction: float = 0.1
    """Share of record ids in the test splits (test_sft / test_prefs)."""
    split_seed: int = 0
    """Seed of the id-hash split: the same seed and fraction put every id in the same split in
    every run, whatever else the run holds."""

    def __post_init__(self) -> None:
        if not 0 <= self.test_fraction < 1:
            raise ConfigError(f"export.test_fraction must be in [0, 1), got {self.test_fraction}",
                              fix="use e.g. 0.1 for 10% test, or 0 for no test split")
        check_skip_flags(self.skip_flags, "export.skip_flags", "export everything")


@dataclass(frozen=True)
class ExportSummary:
    """What an export wrote and what it left out, and why."""

    sft_rows: int
    prefs_rows: int
    splits: dict[str, int]
    """Rows per DatasetDict split (train_sft, test_sft, train_prefs, test_prefs)."""
    sft_skipped: dict[str, int] = field(default_factory=dict)
    """Texts left out of the SFT data, by reason ("flagged: truncated", ...)."""
    prefs_skipped: dict[str, int] = field(default_factory=dict)
    """Pairs left out, by reason (a flagged side, or "unchanged": chosen equals rejected)."""
    paths: dict[str, str] = field(default_factory=dict)


# --- Rows --------------------------------------------------------------------------------------


def _flag_reason(step: Step, skip: Sequence[str]) -> str | None:
    bad = [f for f in step.flags if f in skip]
    return f"flagged: {bad[0]}" if bad else None


def revision_sft_rows(records: Iterable[ReviseRecord], cfg: ExportConfig) -> tuple[list[dict], Counter]:
    """SFT rows from revise records: prompt turns + the final revision (or every round's
    revision with `sft_all_rounds`). A flagged revision is left out, with its reason counted."""
    rows, skipped = [], Counter()
    for rec in records:
        rounds = rec.rounds if cfg.sft_all_rounds else rec.rounds[-1:]
        for rnd in rounds:
            reason = _flag_reason(rnd.revision, cfg.skip_flags)
            if reason:
                skipped[reason] += 1
                continue
            rows.append(SftRow(
                id=rec.id, messages=rec.input + tuple(assistant(rnd.revision.text)), round=rnd.round,
                principle=rnd.principle, principle_hash=rnd.principle_hash,
                constitution_hash=rec.constitution.hash, key=rec.key,
            ).to_dict())
    return rows, skipped


def revision_pref_rows(records: Iterable[ReviseRecord], cfg: ExportConfig) -> tuple[list[dict], Counter]:
    """Preference pairs from revise records: the final revision (chosen) over the initial
    response (rejected), as Hugging Face's CAI recipe built its pairs (no judge). Left out: a
    pair with a flagged side, and a pair whose revision is the original unchanged (no signal)."""
    rows, skipped = [], Counter()
    for rec in records:
        initial, final = rec.initial, rec.rounds[-1].revision
        reason = _flag_reason(final, cfg.skip_flags) or _flag_reason(initial, cfg.skip_flags)
        if reason is None and final.text.strip() == initial.text.strip():
            reason = "unchanged"
        if reason:
            skipped[reason] += 1
            continue
        rows.append(RevisionPreference(
            id=rec.id, prompt=rec.input, chosen=final.text, rejected=initial.text,
            principles=tuple(r.principle for r in rec.rounds),
            principle_hashes=tuple(r.principle_hash for r in rec.rounds),
            constitution_hash=rec.constitution.hash, key=rec.key,
        ).to_dict())
    return rows, skipped


# --- Splits and the DatasetDict ----------------------------------------------------------------


def split_of(record_id: str, split_seed: int, test_fraction: float) -> str:
    """"train" or "test" for a record id: a seeded hash, so it never depends on the other rows,
    their order or their number (a resumed or extended run keeps every id where it was)."""
    digest = hashlib.sha256(f"cai-split\x00{int(split_seed)}\x00{record_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return "test" if u < test_fraction else "train"


def split_rows(rows: Iterable[dict[str, Any]], kind: str, split_seed: int,
               test_fraction: float) -> dict[str, list[dict[str, Any]]]:
    """{"train_<kind>": [...], "test_<kind>": [...]}, by `split_of` each row's `id`."""
    out: dict[str, list[dict[str, Any]]] = {f"train_{kind}": [], f"test_{kind}": []}
    for row in rows:
        out[f"{split_of(str(row['id']), split_seed, test_fraction)}_{kind}"].append(row)
    return out


def write_dataset(folder: Path, splits: dict[str, list[dict[str, Any]]],
                  features: dict[str, Any] | None = None) -> Path:
    """Save the splits as one DatasetDict (`save_to_disk`), replacing `folder` as a whole.

    `features` maps a kind ("sft", "prefs": the part of a split name after "train_"/"test_")
    to its `datasets.Features`; without it the columns are inferred from the rows, and an empty
    split borrows those of its kind's other split. Every split of a kind has the same schema.

    The new folder is written beside the old one and swapped in by renames, so a crash leaves
    the old dataset or the new one (and a `.tmp`/`.old` folder the next call removes), never a
    half-written one."""
    import datasets

    folder = Path(folder)
    tmp, old = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
    for leftover in (tmp, old):
        if leftover.exists():
            shutil.rmtree(leftover)
    kind_of = {name: name.split("_", 1)[-1] for name in splits}
    schema = dict(features or {})
    for name, rows in splits.items():
        if rows and kind_of[name] not in schema:
            schema[kind_of[name]] = datasets.Dataset.from_list(rows[:1]).features
    tables = {}
    for name, rows in splits.items():
        f = schema.get(kind_of[name])
        if f is None:
            raise ValueError(f"split {name!r} has no rows and no features to give it a schema")
        tables[name] = datasets.Dataset.from_list(rows, features=f) if rows else \
            datasets.Dataset.from_dict({c: [] for c in f}, features=f)
    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # cai shows its own progress; these bars are noise
    try:
        # One shard per split, also for an empty one (0 shards cannot be loaded back).
        datasets.DatasetDict(tables).save_to_disk(str(tmp), num_shards={name: 1 for name in tables})
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    if old.exists():
        shutil.rmtree(old)
    return folder


def revision_features() -> dict[str, Any]:
    """The column types of the revise exports (fixed, so an empty split still loads)."""
    from datasets import Features, List, Value

    turn = {"role": Value("string"), "content": Value("string")}
    provenance = {"constitution_hash": Value("string"), "key": Value("string")}
    return {
        "sft": Features({"id": Value("string"), "messages": List(turn), "round": Value("int64"),
                         "principle": Value("string"), "principle_hash": Value("string"), **provenance}),
        "prefs": Features({"id": Value("string"), "prompt": List(turn), "chosen": List(turn),
                           "rejected": List(turn), "principles": List(Value("string")),
                           "principle_hashes": List(Value("string")), **provenance}),
    }


def export_revisions(records: Sequence[ReviseRecord], out_dir: Path, cfg: ExportConfig) -> ExportSummary:
    """Write sft.jsonl, prefs.jsonl and dataset/ (train_sft, test_sft, train_prefs, test_prefs)
    into `out_dir` from revise records, each file replaced atomically."""
    out_dir = Path(out_dir)
    sft, sft_skipped = revision_sft_rows(records, cfg)
    prefs, prefs_skipped = revision_pref_rows(records, cfg)
    paths = {"sft": str(out_dir / SFT_FILE), "prefs": str(out_dir / PREFS_FILE)}
    write_jsonl_atomic(out_dir / SFT_FILE, sft)
    write_jsonl_atomic(out_dir / PREFS_FILE, prefs)
    splits = {**split_rows(sft, "sft", cfg.split_seed, cfg.test_fraction),
              **split_rows(prefs, "prefs", cfg.split_seed, cfg.test_fraction)}
    paths["dataset"] = str(write_dataset(out_dir / DATASET_DIR, splits, revision_features()))
    return ExportSummary(
        sft_rows=len(sft), prefs_rows=len(prefs), splits={k: len(v) for k, v in splits.items()},
        sft_skipped=dict(sorted(sft_skipped.items())), prefs_skipped=dict(sorted(prefs_skipped.items())),
        paths=paths,
    )
