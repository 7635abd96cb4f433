"""Preference pairs, as `cai rm train` and `cai rm eval` read them, and the Bradley–Terry math on
them (method.md §3): the soft-label loss and whether a reward model agrees with a label.

A row holds `prompt`, `chosen` and `rejected` (each a string, one {role, content} message or a
list of them; an hh-rlhf dialogue string for the prompt), optionally `p_chosen` (the labeler's
P(chosen is better), default 1.0: a hard label), `margin` and `id`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from cai.conversation import as_messages
from cai.data import SourceRow, check_columns, read_rows
from cai.engine.base import Message
from cai.errors import InputError, Location, MultiError

# ---------------------------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------------------------


def preference_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, p: torch.Tensor | None = None,
                    margin: torch.Tensor | None = None) -> torch.Tensor:
    """Per-pair BCE(sigmoid(r_c - r_r - margin), p); p = None means hard labels (p = 1)."""
    logits = r_chosen - r_rejected
    if margin is not None:
        logits = logits - margin
    target = torch.ones_like(logits) if p is None else p.to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none")


def label_agreement(r_chosen: torch.Tensor, r_rejected: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """1 where the model prefers the labeled side (chosen if p > 0.5, rejected if p < 0.5),
    0 where it prefers the other, 0.5 for a tie in either."""
    pred = torch.sign(r_chosen - r_rejected)
    label = torch.sign(p - 0.5)
    return torch.where((pred == 0) | (label == 0), 0.5, (pred == label).to(r_chosen.dtype))


# ---------------------------------------------------------------------------------------------
# Preference rows
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreferencePair:
    """One preference: the prompt conversation and the two continuations that follow it."""

    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]
    p: float = 1.0
    """P(chosen is better) from the labeler; 1.0 for a hard label."""
    margin: float = 0.0
    id: str | None = None
    where: Location | None = None

    def content(self) -> tuple:
        """What a model trains on: everything but where the row was read (a file path), so a
        data folder that moved is not taken for one whose data changed."""
        return (self.id, self.prompt, self.chosen, self.rejected, self.p, self.margin)


def _number(value: Any, column: str, default: float, where: Location | None) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"column {column!r} must be a number, got {value!r}", where,
                         fix=f"write {column} as a number, or leave it out")
    return float(value)


def pair_from_row(row: SourceRow) -> PreferencePair:
    d, where = row.data, row.where
    p = _number(d.get("p_chosen"), "p_chosen", 1.0, where)
    if not 0.0 <= p <= 1.0:
        raise InputError(f"p_chosen must be in [0, 1], got {p}", where,
                         fix="p_chosen is the probability that `chosen` is the better response")
    return PreferencePair(prompt=as_messages(d["prompt"], "prompt", where, is_prompt=True),
                chosen=as_messages(d["chosen"], "chosen", where, is_prompt=False),
                rejected=as_messages(d["rejected"], "rejected", where, is_prompt=False),
                p=p, margin=_number(d.get("margin"), "margin", 0.0, where),
                id=None if d.get("id") is None else str(d["id"]), where=where)


def pairs_from_rows(rows: list[SourceRow], source: Any) -> list[PreferencePair]:
    """Check and convert preference rows; every bad row is reported, not only the first."""
    check_columns(rows, ["prompt", "chosen", "rejected"], source)
    pairs, errors, same = [], [], []
    for row in rows:
        try:
            pair = pair_from_row(row)
        except InputError as e:
            errors.append(e)
            continue
        if pair.chosen == pair.rejected:
            same.append(str(row.where))
            continue
        pairs.append(pair)
    if same:
        shown = same[:20] + ([f"... and {len(same) - 20} more"] if len(same) > 20 else [])
        errors.append(InputError(f"{len(same)} row(s) have chosen equal to rejected, which teaches "
                                 "nothing:\n    " + "\n    ".join(shown),
                                 fix="remove these rows (the label stage never writes them)"))
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise MultiError(f"{len(errors)} problems in {source}:", errors=errors[:20])
    return pairs


def read_pairs(source: str | Path, split: Literal["train", "test"] = "train") -> list[PreferencePair] | None:
    rows = read_rows(source, "prefs", split)
    return None if rows is None else pairs_from_rows(rows, source)
