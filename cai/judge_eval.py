"""`cai judge eval`: how well an AI judge agrees with human preference labels.

On a file of human-labeled pairs (prompt / chosen / rejected, e.g. Anthropic hh-rlhf), the judge
scores every pair exactly as `cai label` would (same prompts, both orders, same principles), and
the report gives:

- agreement with the human label: hard (the judge's pick, p > 0.5, is the human's choice) with a
  95% Wilson score interval, and soft (mean p on the human's choice) with a 95% percentile
  bootstrap interval;
- position consistency (both orders pick the same response), with a Wilson interval, and the
  share of single-order verdicts that picked (A);
- length: how often the judge picks the longer response against how often humans did, and the
  length-only baselines ("the shorter wins", "the longer wins") on the same pairs;
- calibration: pairs binned by the judge's confidence in its pick, max(p, 1 - p), against the
  observed agreement in each bin, and the expected calibration error.

With `out`, judgments are appended to DIR/judgments.jsonl as they finish (a rerun resumes, and a
larger --limit extends; a stored judgment whose key differs from today's inputs, e.g. an edited
pair or comparison question, is judged again) and the report is written to DIR/report.json.
"""

from __future__ import annotations

import math
import random
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cai import models
from cai.atomic import write_json_atomic
from cai.config import EngineConfig, to_jsonable
from cai.constitution import DEFAULT_PATH, load_constitution
from cai.data import Reject
from cai.engine import Engine, make_engine
from cai.errors import ConfigError, InputError, Location
from cai.judge import (
    JudgeOptions,
    check_options,
    draw_principles,
    judge_pairs,
    judge_prompts,
    judgment_key,
    resolve_judge_engine,
)
from cai.label_inputs import Group, form_pairs, read_response_groups
from cai.progress import make_progress
from cai.records import JsonlStore, locked_run, open_run_dir
from cai.schema import EvalJudgment, read_records

Z95 = 1.959963984540054
"""The standard normal quantile of a two-sided 95% interval."""
JUDGMENTS_FILE = "judgments.jsonl"
REPORT_FILE = "report.json"
RESUMABLE_CHANGES = ("limit:", "bins:", "bootstrap_samples:", "chunk_size:")
"""Config fields that change no judgment: a different --limit resumes (and extends) the same
judgments, and the report's statistics are recomputed from them."""


@dataclass(frozen=True)
class JudgeEvalConfig:
    """Settings of `cai judge eval`."""

    pairs: Path
    """Human-labeled pairs: rows with prompt (text, hh-rlhf dialogue or conversation), chosen and
    rejected (the human's choice is `chosen`)."""
    judge: EngineConfig = field(default_factory=EngineConfig)
    """The judge model and backend."""
    constitution: Path = Path(DEFAULT_PATH)
    """Principle file: comparison principles, judge template and few-shot comparisons."""
    judging: JudgeOptions = field(default_factory=JudgeOptions)
    """Principles per pair, chain of thought, clamping: as in `cai label`."""
    limit: int | None = None
    """Judge only the first N pairs of the file."""
    out: Path | None = None
    """Folder for judgments.jsonl (resumable) and report.json. Unset: nothing is written."""
    bins: tuple[float, ...] = (0.5, 0.55, 0.6, 0.7, 0.8, 0.9, 1.0)
    """Calibration bin edges over the judge's confidence max(p, 1 - p). Fine near 0.5, where a
    small judge's labels sit."""
    bootstrap_samples: int = 2000
    """Resamples for the bootstrap interval of the soft agreement."""
    seed: int = 0
    """Principle draws (and CoT rationales) as in `cai label`; also seeds the bootstrap."""
    chunk_size: int = 64
    """Pairs per engine call."""

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be >= 1, got {self.limit}")
        edges = list(self.bins)
        if len(edges) < 2 or edges[0] != 0.5 or edges[-1] != 1.0 or edges != sorted(set(edges)):
            raise ConfigError(f"bins must rise strictly from 0.5 to 1.0, got {self.bins}")


# --- Statistics (pure) ---------------------------------------------------------------------------


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (good at small n and near 0 or 1, unlike the normal
    approximation). Half-successes (ties counted 0.5) are allowed."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, center - half), min(1.0, center + half))


def bootstrap_mean(values: Sequence[float], samples: int, seed: int) -> tuple[float, float]:
    """95% percentile bootstrap interval of a mean."""
    if not values:
        return (0.0, 1.0)
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(samples))
    return (means[int(0.025 * (samples - 1))], means[int(math.ceil(0.975 * (samples - 1)))])


def credit(p: float) -> float:
    """Hard agreement of one pair whose human choice has probability p: 1 if the judge picks it,
    0 if it picks the other, 0.5 for no preference."""
    return 1.0 if p > 0.5 else 0.0 if p < 0.5 else 0.5


def proportion(successes: float, n: int) -> dict[str, Any]:
    return {"rate": successes / n if n else None, "ci95": list(wilson(successes, n)), "n": n}


def evaluate(rows: Sequence[EvalJudgment], bins: Sequence[float] = JudgeEvalConfig.bins,
             bootstrap_samples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """The report from judged pairs: p (P(human's choice is better)), agree, p_xy and p_yx (the
    chosen side is x), principles, and the characters of chosen and rejected."""
    n = len(rows)
    ps = [r.verdict.p for r in rows]
    hard = sum(credit(p) for p in ps)
    soft = sum(ps) / n if n else None
    verdicts = [q for r in rows for q in r.verdict.p_xy + r.verdict.p_yx]

    # Length: characters of the two responses.
    differ = [r for r in rows if r.chosen_chars != r.rejected_chars]
    decided = [r for r in differ if r.verdict.p != 0.5]
    judge_longer = sum((r.verdict.p > 0.5) == (r.chosen_chars > r.rejected_chars) for r in decided)
    human_longer = sum(r.chosen_chars > r.rejected_chars for r in differ)
    shorter_wins = sum(1.0 if r.chosen_chars < r.rejected_chars else
                       0.0 if r.chosen_chars > r.rejected_chars else 0.5 for r in rows)

    # Calibration: confidence in the judge's own pick against how often that pick is the human's.
    table = []
    for lo, hi in zip(bins[:-1], bins[1:], strict=True):
        last = hi == bins[-1]
        members = [p for p in ps if lo <= max(p, 1 - p) < hi or (last and max(p, 1 - p) == hi)]
        conf = sum(max(p, 1 - p) for p in members) / len(members) if members else None
        acc = sum(credit(p) for p in members) / len(members) if members else None
        table.append({"bin": [lo, hi], "n": len(members), "mean_confidence": conf, "agreement": acc})
    ece = sum(b["n"] / n * abs(b["agreement"] - b["mean_confidence"]) for b in table if b["n"]) if n else None

    by_principle: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        for pid in set(r.verdict.principles):
            by_principle[pid].append(credit(r.verdict.p))

    return {
        "pairs": n,
        "agreement": {**proportion(hard, n), "interval": "Wilson score, 95%"},
        "soft_agreement": {"mean_p_human_choice": soft, "ci95": list(bootstrap_mean(ps, bootstrap_samples, seed)),
                           "interval": f"percentile bootstrap, {bootstrap_samples} resamples, 95%"},
        "position_consistency": proportion(sum(bool(r.verdict.agree) for r in rows), n),
        "first_position_rate": sum(q > 0.5 for q in verdicts) / len(verdicts) if verdicts else None,
        "mean_margin": sum(abs(p - 0.5) for p in ps) / n if n else None,
        "length": {
            "unit": "characters",
            "judge_picks_longer": proportion(judge_longer, len(decided)),
            "humans_pick_longer": proportion(human_longer, len(differ)),
        },
        "length_baseline": {
            "shorter_wins": proportion(shorter_wins, n),
            "longer_wins": proportion(n - shorter_wins, n),
        },
        "calibration": {"bins": table, "ece": ece},
        "by_principle": {pid: proportion(sum(v), len(v)) for pid, v in sorted(by_principle.items())},
    }


# --- The job -------------------------------------------------------------------------------------


def read_labeled_groups(path: Path) -> tuple[list[Group], list[Reject]]:
    """The human-labeled pairs of `path` (each row a prompt, `chosen` and `rejected`) and the
    unreadable rows; a file with no usable pair, or with a row that is not labeled, is an error."""
    groups, rejects = read_response_groups(path)
    if not groups:
        where = f" (first problem: {rejects[0].source}: {rejects[0].reason})" if rejects else ""
        raise InputError(f"no usable pairs in {path}{where}", Location(str(path)),
                         fix="rows need prompt, chosen and rejected")
    labeled = [g for g in groups if [c.ref.rsplit("#", 1)[1] for c in g.candidates] == ["chosen", "rejected"]]
    if len(labeled) != len(groups):
        raise InputError(f"{len(groups) - len(labeled)} rows of {path} have no chosen/rejected label",
                         Location(str(path)), fix="judge eval needs human-labeled chosen/rejected columns")
    return groups, rejects


@locked_run
def run_judge_eval(cfg: JudgeEvalConfig, engine: Engine | None = None, force: bool = False) -> dict[str, Any]:
    """Judge the human-labeled pairs and return the report (also written to DIR/report.json)."""
    constitution = load_constitution(cfg.constitution)
    check_options(constitution, cfg.judging)
    groups, rejects = read_labeled_groups(cfg.pairs)
    groups = groups[: cfg.limit] if cfg.limit else groups
    pairs, pair_rejects, identical = form_pairs(groups)
    judge = models.identity(resolve_judge_engine(cfg.judge), engine, context=True)
    keys = {p.id: judgment_key(p, draw_principles(constitution, cfg.judging, cfg.seed, p.id), judge, constitution,
                               cfg.judging, cfg.seed) for p, _, _, _ in pairs}

    store = None
    done: dict[str, EvalJudgment] = {}
    if cfg.out is not None:
        open_run_dir(cfg.out, cfg, force, resumable=RESUMABLE_CHANGES, records=JUDGMENTS_FILE,
                     inputs={"judge_fingerprint": judge["fingerprint"], "judge_prompts": judge_prompts(constitution)})
        # A stored judgment whose key differs from today's is dropped and judged again.
        store = JsonlStore(Path(cfg.out) / JUDGMENTS_FILE, current_keys=keys)
        done = {r.id: r for r in read_records(store.path, EvalJudgment)}
    pending = [p for p, _, _, _ in pairs if p.id not in done]

    t0 = time.perf_counter()
    owned = engine is None and bool(pending)
    if pending:
        engine = engine or make_engine(resolve_judge_engine(cfg.judge))
    n_tokens = 0
    try:
        with make_progress("pairs") as progress:
            task = progress.add_task("judge eval", total=len(pending), tokens=0)
            for start in range(0, len(pending), cfg.chunk_size):
                chunk = pending[start:start + cfg.chunk_size]
                for pair, jd in zip(chunk, judge_pairs(engine, constitution, chunk, cfg.judging, cfg.seed),
                                    strict=True):
                    row = EvalJudgment(id=pair.id, verdict=jd.verdict(), chosen_chars=len(pair.x.strip()),
                                       rejected_chars=len(pair.y.strip()), judge_model=judge["model"],
                                       judge_fingerprint=judge["fingerprint"], constitution_hash=constitution.hash,
                                       key=keys[pair.id])
                    done[pair.id] = row
                    n_tokens += jd.prompt_tokens
                    if store is not None:
                        store.append(row.to_dict())
                if store is not None:
                    store.flush()
                progress.update(task, advance=len(chunk), tokens=n_tokens)
    finally:
        if store is not None:
            store.close()
        if owned:
            engine.close()

    rows = [done[p.id] for p, _, _, _ in pairs]
    judged = [r for r in rows if r.verdict.status == "judged"]
    report = {
        "pairs_file": str(cfg.pairs),
        "judge_model": judged[0].judge_model if judged else cfg.judge.model,
        "judge_engine": {k: v for k, v in to_jsonable(resolve_judge_engine(cfg.judge)).items()
                         if k in ("backend", "dtype", "max_model_len")},
        "constitution_hash": constitution.hash,
        "judging": to_jsonable(cfg.judging),
        "rows": len(groups),
        "skipped": {"unreadable_rows": len(rejects), "empty_response": len(pair_rejects), "identical": identical,
                    "too_long": len(rows) - len(judged)},
        **evaluate(judged, cfg.bins, cfg.bootstrap_samples, cfg.seed),
        # This run only (a resumed run judges only the pairs not yet in DIR/judgments.jsonl).
        # stale: judgments of an earlier run whose key no longer matched (judged again, in `judged`).
        "run": {"judged": len(pending), "stale": len(store.stale) if store is not None else 0,
                "seconds": time.perf_counter() - t0, "judge_prompt_tokens": n_tokens},
    }
    if cfg.out is not None:
        write_json_atomic(Path(cfg.out) / REPORT_FILE, report)
    return report
