"""`cai rm eval` and `cai rm score`: measuring a reward model on labeled pairs, and scoring files.

Evaluation (all from the raw rewards r_c, r_r of each pair and its label p = P(chosen better)):

- accuracy: the model prefers the labeled side (chosen when p > 0.5, rejected when p < 0.5);
  pairs labeled exactly 0.5 are left out, a tie in reward counts one half. 95% Wilson interval.
- mean_prob_label: the Bradley–Terry probability sigmoid(r_label - r_other), averaged.
- loss: the training loss, BCE(sigmoid(r_c - r_r), p), averaged over all pairs.
- calibration: pairs binned by the model's confidence max(q, 1 - q), q = sigmoid(r_c - r_r);
  per bin the mean confidence against the observed rate at which the model's pick is the
  labeled one (with soft labels: the label's probability of the pick). ECE is the
  pair-weighted mean |observed - confidence| (Guo et al. 2017, "On Calibration of Modern
  Neural Networks").
- by_length: accuracy per bucket of len(labeled) - len(other) in response tokens, beside the
  "shorter reply wins" baseline (method.md §3: it alone reaches ~56% on hh-rlhf harmless).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from cai.conversation import as_messages
from cai.data import SourceRow, read_rows
from cai.errors import ConfigError, InputError, MultiError
from cai.preferences import PreferencePair, label_agreement, pairs_from_rows, preference_loss
from cai.records import write_jsonl_atomic

if TYPE_CHECKING:  # annotations only: training (cai.reward) evaluates through this module
    from cai.reward import RewardModel

# (label, lowest, highest) of len(labeled) - len(other), in tokens
LENGTH_BUCKETS = [("<= -64", -math.inf, -64), ("-63..-16", -63, -16), ("-15..-4", -15, -4),
                  ("-3..3", -3, 3), ("4..15", 4, 15), ("16..63", 16, 63), (">= 64", 64, math.inf)]


@dataclass(frozen=True)
class RMEvalConfig:
    """`cai rm eval`: accuracy and calibration of a reward model on labeled pairs."""

    model: str = ""
    """The reward model folder (the --out of `cai rm train`)."""
    pairs: str = ""
    """Labeled pairs: a JSONL file (all rows), a dataset folder or a label-stage folder (the
    split below). Same columns as for training; hh-rlhf style strings work."""
    split: str = "test"
    """Split of a dataset folder to evaluate (test_prefs, or train_prefs with `train`)."""
    out: str | None = None
    """Write the JSON report here (else only the table is printed)."""
    batch_size: int = 16
    """Sequences per forward pass."""
    device: str = "auto"
    """auto (cuda when available, else cpu), cpu, cuda or cuda:N."""
    calibration_bins: int = 5
    """Equal-width confidence bins over [0.5, 1]."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Weights dtype for scoring: fp32, or bf16 (about 2x faster on a GPU)."""

    def __post_init__(self) -> None:
        if not self.model or not self.pairs:
            raise ConfigError("cai rm eval needs --model (a reward model folder) and --pairs FILE|DIR")
        if self.split not in ("train", "test"):
            raise ConfigError(f"split must be train or test, got {self.split!r}")
        if self.batch_size < 1 or self.calibration_bins < 1:
            raise ConfigError("batch_size and calibration_bins must be >= 1")


@dataclass(frozen=True)
class RMScoreConfig:
    """`cai rm score`: add reward columns to a JSONL file."""

    model: str = ""
    """The reward model folder (the --out of `cai rm train`)."""
    input: str = ""
    """A JSONL file. Rows with prompt + response get `reward`; rows with prompt + chosen +
    rejected get `reward_chosen` and `reward_rejected`; rows with `messages` ending in an
    assistant turn get `reward` for that turn."""
    out: str = ""
    """The JSONL file to write: every input row and column, plus the reward columns."""
    batch_size: int = 16
    """Sequences per forward pass."""
    device: str = "auto"
    """auto (cuda when available, else cpu), cpu, cuda or cuda:N."""
    raw: bool = False
    """Also write the unnormalized rewards (reward_raw, reward_chosen_raw, ...)."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Weights dtype for scoring: fp32, or bf16 (about 2x faster on a GPU)."""

    def __post_init__(self) -> None:
        if not (self.model and self.input and self.out):
            raise ConfigError("cai rm score needs --model, --input FILE and --out FILE")
        if Path(self.input).resolve() == Path(self.out).resolve():
            raise ConfigError(f"--out {self.out} is the input file", fix="write to a new file")
        if self.batch_size < 1:
            raise ConfigError("batch_size must be >= 1")


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


def wilson_interval(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (float("nan"), float("nan"))
    phat = k / n
    center = (phat + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (center - half, center + half)


def pair_report(r_chosen: Sequence[float], r_rejected: Sequence[float], p: Sequence[float],
                len_chosen: Sequence[int], len_rejected: Sequence[int], n_bins: int = 5) -> dict[str, Any]:
    """All evaluation figures from raw rewards, labels and response lengths (a pure function)."""
    rc, rr = torch.tensor(r_chosen, dtype=torch.float64), torch.tensor(r_rejected, dtype=torch.float64)
    pt = torch.tensor(p, dtype=torch.float64)
    lc, lr = torch.tensor(len_chosen, dtype=torch.float64), torch.tensor(len_rejected, dtype=torch.float64)
    n = len(rc)
    q = torch.sigmoid(rc - rr)  # the model's P(chosen better)
    labeled = pt != 0.5
    chosen_is_label = pt > 0.5
    agree = label_agreement(rc, rr, pt)
    k = int(labeled.sum())
    accuracy = agree[labeled].mean().item() if k else float("nan")
    prob_label = torch.where(chosen_is_label, q, 1 - q)[labeled]

    # calibration of the model's pick against the label's probability of that pick
    conf = torch.maximum(q, 1 - q)
    observed = torch.where(q > 0.5, pt, torch.where(q < 0.5, 1 - pt, torch.full_like(pt, 0.5)))
    bins, ece = [], 0.0
    for b in range(n_bins):
        lo, hi = 0.5 + 0.5 * b / n_bins, 0.5 + 0.5 * (b + 1) / n_bins
        inside = (conf >= lo) & ((conf < hi) if b < n_bins - 1 else (conf <= hi))
        m = int(inside.sum())
        row = {"lo": lo, "hi": hi, "n": m, "confidence": None, "observed": None}
        if m:
            row["confidence"], row["observed"] = conf[inside].mean().item(), observed[inside].mean().item()
            ece += m / n * abs(row["observed"] - row["confidence"])
        bins.append(row)

    # accuracy by length difference (labeled minus other) and the "shorter wins" baseline
    diff = torch.where(chosen_is_label, lc - lr, lr - lc)
    by_length = []
    for name, lo, hi in LENGTH_BUCKETS:
        inside = labeled & (diff >= lo) & (diff <= hi)
        m = int(inside.sum())
        by_length.append({"bucket": name, "n": m, "accuracy": agree[inside].mean().item() if m else None})
    shorter = torch.where(diff < 0, 1.0, torch.where(diff > 0, 0.0, 0.5))[labeled]
    picks_longer = torch.where((rc > rr) == (lc > lr), 1.0, 0.0)[(lc != lr) & (rc != rr)]

    lo95, hi95 = wilson_interval(agree[labeled].sum().item(), k)
    return {
        "n": n, "n_labeled": k, "n_ties": n - k,
        "accuracy": accuracy, "accuracy_ci95": [lo95, hi95],
        "mean_prob_label": prob_label.mean().item() if k else float("nan"),
        "loss": preference_loss(rc, rr, pt).mean().item(),
        "ece": ece, "calibration": bins,
        "by_length": by_length,
        "shorter_wins_accuracy": shorter.mean().item() if k else float("nan"),
        "model_prefers_longer": picks_longer.mean().item() if len(picks_longer) else float("nan"),
        "mean_raw_margin": (rc - rr).mean().item(),
    }


def response_length(tokenizer, response: list[dict[str, str]]) -> int:
    """Tokens of the response's content, counted as the reward model reads it (special-token
    strings are text, cai/engine/tokens.py)."""
    return sum(len(tokenizer(m["content"], add_special_tokens=False, split_special_tokens=True)["input_ids"])
               for m in response)


def evaluate_pairs(rm: RewardModel, pairs: list[PreferencePair], batch_size: int = 16,
                   n_bins: int = 5) -> dict[str, Any]:
    """Score both sides of every pair with `rm` and build the report (see the module docstring)."""
    if not pairs:
        raise InputError("there are no pairs to evaluate")
    seqs = [rm.encode(pr.prompt, side) for pr in pairs for side in (pr.chosen, pr.rejected)]
    raw = rm.score_ids(seqs, batch_size)
    report = pair_report(raw[0::2], raw[1::2], [pr.p for pr in pairs],
                         [response_length(rm.tokenizer, pr.chosen) for pr in pairs],
                         [response_length(rm.tokenizer, pr.rejected) for pr in pairs], n_bins)
    report["reward_chosen_mean"] = sum(rm.gain * r + rm.bias for r in raw[0::2]) / len(pairs)
    report["reward_rejected_mean"] = sum(rm.gain * r + rm.bias for r in raw[1::2]) / len(pairs)
    return report


def read_eval_pairs(source: str, split: str) -> list[PreferencePair]:
    """A JSONL file is read whole; a dataset or stage folder gives the asked split."""
    path = Path(source)
    rows = read_rows(path, "prefs", "train" if path.is_file() else split)  # type: ignore[arg-type]
    if rows is None:
        raise InputError(f"{source} has no {split} split of preference pairs",
                         fix="pass --split train, or a JSONL file")
    return pairs_from_rows(rows, source)


# ---------------------------------------------------------------------------------------------
# Scoring a file
# ---------------------------------------------------------------------------------------------


def _plan(row: SourceRow) -> list[tuple[str, list[dict[str, str]], list[dict[str, str]]]]:
    """(column to write, prompt, response) for each reward a row asks for."""
    d, where = row.data, row.where
    if "messages" in d and "prompt" not in d:
        msgs = d["messages"]
        if not (isinstance(msgs, list) and len(msgs) >= 2 and isinstance(msgs[-1], dict)
                and msgs[-1].get("role") == "assistant"):
            raise InputError("`messages` must be a conversation ending in an assistant turn", where)
        conv = as_messages(msgs, "messages", where, is_prompt=True)
        return [("reward", conv[:-1], conv[-1:])]
    if "prompt" not in d:
        raise InputError(f"no `prompt` or `messages` column (it has: {', '.join(d) or 'nothing'})", where,
                         fix="rows need prompt + response, prompt + chosen + rejected, or messages")
    prompt = as_messages(d["prompt"], "prompt", where, is_prompt=True)
    plan = []
    if "response" in d:
        plan.append(("reward", prompt, as_messages(d["response"], "response", where, is_prompt=False)))
    if "chosen" in d and "rejected" in d:
        for col in ("chosen", "rejected"):
            plan.append((f"reward_{col}", prompt, as_messages(d[col], col, where, is_prompt=False)))
    if not plan:
        raise InputError("a `prompt` but no `response`, nor `chosen` and `rejected` "
                         f"(it has: {', '.join(d)})", where, fix="add the response(s) to score")
    return plan


def score_rows(rm: RewardModel, rows: list[SourceRow], batch_size: int = 16,
               raw: bool = False) -> list[dict[str, Any]]:
    """The rows with reward columns added (normalized; with raw=True also the raw values)."""
    plans, errors = [], []
    for row in rows:
        try:
            plans.append(_plan(row))
        except InputError as e:
            errors.append(e)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise MultiError(f"{len(errors)} rows cannot be scored:", errors=errors[:20])
    seqs = [rm.encode(prompt, resp) for plan in plans for _, prompt, resp in plan]
    values = iter(rm.score_ids(seqs, batch_size))
    out = []
    for row, plan in zip(rows, plans, strict=True):
        new = dict(row.data)
        for col, _, _ in plan:
            r = next(values)
            new[col] = rm.gain * r + rm.bias
            if raw:
                new[f"{col}_raw"] = r
        out.append(new)
    return out


def score_file(rm: RewardModel, input: str | Path, out: str | Path, batch_size: int = 16,
               raw: bool = False) -> int:
    """Score a JSONL file into another; returns the number of rows written."""
    path = Path(input)
    if not path.is_file():
        raise InputError(f"{path} is not a file", fix="cai rm score reads one JSONL file")
    rows = read_rows(path, "prefs", "train") or []
    if not rows:
        raise InputError(f"{path} has no rows")
    return write_jsonl_atomic(Path(out), score_rows(rm, rows, batch_size, raw))

