"""Which stage made a run folder, told by the files it holds, and those files read.

| kind | made by | files it is told by |
|---|---|---|
| `eval` | `cai eval` | report.json + rows.jsonl + answers.jsonl (judgments.jsonl where judged) |
| `judge_eval` | `cai judge eval` | report.json (with `calibration`) + judgments.jsonl |
| `revise` | `cai revise` | records.jsonl (summary.json once finished) |
| `label` | `cai label` | judgments.jsonl + summary.json or prefs.jsonl, no report.json |
| `ppo` | `cai ppo` | metrics.jsonl with `objective/` or `eval/reward` rows, or train_done.json of stage ppo |
| `training` | `cai sft`, `cai rm train` | metrics.jsonl with `train/` rows |

A folder that is none of these but holds run folders one level down (`runs/quickstart`) stands for
them. Anything else is an `InputError` naming the folder and the files looked for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cai.errors import InputError, Location
from cai.records import read_jsonl
from cai.schema import EvalAnswer, EvalJudgment, PairJudgment, ReviseRecord, read_records

EXPECTED = ("report.json + rows.jsonl + answers.jsonl (cai eval), report.json + judgments.jsonl (cai judge eval), "
            "records.jsonl (cai revise), judgments.jsonl + summary.json (cai label), metrics.jsonl (cai ppo, cai sft, "
            "cai rm train)")


@dataclass
class Run:
    """One run folder and what the report reads from it."""

    path: Path
    kind: str
    report: dict[str, Any] = field(default_factory=dict)
    """eval / judge_eval: report.json."""
    summary: dict[str, Any] = field(default_factory=dict)
    """summary.json or train_done.json, where there is one."""
    rows: list[dict[str, Any]] = field(default_factory=list)
    """eval: rows.jsonl; ppo / training: metrics.jsonl."""
    answers: list[EvalAnswer] = field(default_factory=list)
    records: list[ReviseRecord] = field(default_factory=list)
    judgments: list[Any] = field(default_factory=list)
    """label: PairJudgment; judge_eval: EvalJudgment."""

    @property
    def name(self) -> str:
        return str(self.path)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object file; a bad one is an InputError naming it."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"invalid JSON: {e.msg}", Location(str(path), e.lineno, e.colno),
                         fix="this file is written by cai: run the stage again to remake it") from e
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read: {e}", Location(str(path)), fix="check the file's permissions") from e
    if not isinstance(obj, dict):
        raise InputError(f"expected a JSON object, got {type(obj).__name__}", Location(str(path)),
                         fix="this file is written by cai: run the stage again to remake it")
    return obj


def _metric_kind(path: Path) -> str | None:
    """'ppo' or 'training' by the names in metrics.jsonl (or the stage in train_done.json)."""
    done = path / "train_done.json"
    if done.is_file() and read_json(done).get("stage") == "ppo":
        return "ppo"
    if not (path / "metrics.jsonl").is_file():
        return None
    keys = {k for row in read_jsonl(path / "metrics.jsonl") for k in row}
    if any(k.startswith("objective/") for k in keys) or "eval/reward" in keys:
        return "ppo"
    return "training" if any(k.startswith("train/") for k in keys) else None


def kind_of(path: Path) -> str | None:
    """The kind of run folder `path` is (the table above), or None."""
    has = {p.name for p in path.iterdir() if p.is_file()}
    if {"report.json", "rows.jsonl", "answers.jsonl"} <= has:
        return "eval"
    if {"report.json", "judgments.jsonl"} <= has and "calibration" in read_json(path / "report.json"):
        return "judge_eval"
    if "records.jsonl" in has:
        return "revise"
    if "judgments.jsonl" in has and "report.json" not in has and has & {"summary.json", "prefs.jsonl"}:
        return "label"
    return _metric_kind(path)


def _unknown(path: Path, why: str) -> InputError:
    return InputError(f"{why}; cai report reads the run folders of cai eval, judge eval, revise, label, ppo, sft "
                      f"and rm train, told by their files: {EXPECTED}", Location(str(path)),
                      fix="pass the output folder (--out) of one of those stages, or a folder that holds them")


def find_runs(paths: list[Path]) -> tuple[list[tuple[Path, str]], list[Path]]:
    """(run folder, kind) for each path, or for each run folder one level below a path that is not
    one itself; and the subfolders skipped there because they are no run folder."""
    found: list[tuple[Path, str]] = []
    skipped: list[Path] = []
    for path in paths:
        if not path.is_dir():
            raise _unknown(path, "not a folder" if path.exists() else "no such folder")
        kind = kind_of(path)
        if kind is not None:
            found.append((path, kind))
            continue
        children = [(c, kind_of(c)) for c in sorted(path.iterdir()) if c.is_dir() and not c.name.startswith(".")]
        inner = [(c, k) for c, k in children if k is not None]
        if not inner:
            files = ", ".join(sorted(p.name for p in path.iterdir())[:12]) or "nothing"
            raise _unknown(path, f"not a run folder (it holds: {files})")
        found += inner
        skipped += [c for c, k in children if k is None]
    # A folder named twice (`runs/quickstart runs/quickstart/ppo`) is read once.
    unique: dict[Path, tuple[Path, str]] = {}
    for p, k in found:
        unique.setdefault(p.resolve(), (p, k))
    return list(unique.values()), skipped


def load(path: Path, kind: str) -> Run:
    """Read what the report draws from one run folder of `kind`."""
    run = Run(path, kind)
    if kind == "eval":
        run.report = read_json(path / "report.json")
        if "results" not in run.report:
            raise InputError("report.json has no `results`", Location(str(path / "report.json")),
                             fix="this is not the report of `cai eval`: run `cai eval --out` on the folder again")
        run.rows = list(read_jsonl(path / "rows.jsonl"))
        run.answers = list(read_records(path / "answers.jsonl", EvalAnswer))
    elif kind == "judge_eval":
        run.report = read_json(path / "report.json")
        run.judgments = list(read_records(path / "judgments.jsonl", EvalJudgment))
    elif kind == "revise":
        run.records = list(read_records(path / "records.jsonl", ReviseRecord))
        run.summary = read_json(path / "summary.json") if (path / "summary.json").is_file() else {}
    elif kind == "label":
        run.judgments = list(read_records(path / "judgments.jsonl", PairJudgment))
        run.summary = read_json(path / "summary.json") if (path / "summary.json").is_file() else {}
    else:  # ppo, training
        run.rows = list(read_jsonl(path / "metrics.jsonl")) if (path / "metrics.jsonl").is_file() else []
        done = path / "train_done.json"
        run.summary = read_json(done) if done.is_file() else {}
    return run


def load_runs(paths: list[Path]) -> tuple[list[Run], list[Path]]:
    """Every run folder under `paths`, read; and the subfolders skipped. A file the system will
    not let us read is an InputError naming it."""
    try:
        found, skipped = find_runs(paths)
        return [load(p, k) for p, k in found], skipped
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror or e}", Location(str(e.filename or "")),
                         fix="check that the folder and its files are readable") from e
