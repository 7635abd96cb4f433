"""What `cai label` compares, read from its inputs: a revise folder or a file of responses,
as `Group`s of candidate responses to one conversation, and the `ResponsePair`s formed from
them. No engine here; sampling responses from prompts is the label job's (cai.label)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cai.conversation import prompt_conversation, response_text
from cai.data import Reject, content_id, iter_rows, row_prompt
from cai.engine import Conversation
from cai.engine.base import FINISHED
from cai.errors import InputError, Location, RecordError
from cai.judge import ResponsePair
from cai.records import read_jsonl_numbered
from cai.schema import ReviseRecord

RESPONSE_COLUMNS = (("responses",), ("chosen", "rejected"), ("response_a", "response_b"))
"""The ways a responses file may hold its responses, in the order they are looked for."""


@dataclass(frozen=True)
class Candidate:
    """One response that takes part in pairs, and where it came from."""

    text: str
    ref: str
    """Source record id and which response, e.g. "p-1a2b#2", "rec7#initial", "rec7#round2"."""
    finish_reason: str = "stop"
    """prompts input: how the policy's sample ended; a pair with an unfinished side is a reject."""


@dataclass(frozen=True)
class Group:
    """One conversation and the responses to compare, with the pairs to form from them."""

    id: str
    conversation: Conversation
    candidates: tuple[Candidate, ...]
    pairs: tuple[tuple[int, int], ...]
    source: str
    """"file:line" of the input row (or record)."""


def detect_kind(path: Path, prompt_column: str = "prompt") -> Literal["prompts", "revise", "responses"]:
    path = Path(path)
    if path.is_dir() and (path / "records.jsonl").exists():
        return "revise"
    for _, row in iter_rows(path):
        if isinstance(row, dict) and any(all(c in row for c in cols) for cols in RESPONSE_COLUMNS):
            return "responses"
        return "prompts"
    raise InputError(f"{path} has no rows", Location(str(path)), fix="pass a non-empty input")


def pair_indices(k: int, pairing: str) -> tuple[tuple[int, int], ...]:
    if pairing == "adjacent":
        return tuple((i, i + 1) for i in range(k - 1))
    return tuple(itertools.combinations(range(k), 2))


def read_response_groups(path: Path, prompt_column: str = "prompt", id_column: str = "id",
                         pairing: str = "all") -> tuple[list[Group], list[Reject]]:
    """Rows with a prompt and two or more responses; bad rows become rejects with the reason."""
    groups: list[Group] = []
    rejects: list[Reject] = []
    seen: dict[str, str] = {}
    for source, row in iter_rows(path):
        if not isinstance(row, dict):
            rejects.append(Reject(None, source, "row is not an object", "each row must be a JSON object"))
            continue
        rid, conv = row_prompt(row, source, prompt_column, id_column, prompt_conversation)
        if isinstance(conv, Reject):
            rejects.append(conv)
            continue
        cols = next((c for c in RESPONSE_COLUMNS if all(k in row for k in c)), None)
        if cols is None:
            rejects.append(Reject(rid, source, "no responses", "give the row a `responses` list, "
                                  "`chosen` and `rejected`, or `response_a` and `response_b`"))
            continue
        values = row["responses"] if cols == ("responses",) else [row[c] for c in cols]
        names = [str(i) for i in range(len(values))] if cols == ("responses",) else list(cols)
        if not isinstance(values, list) or len(values) < 2:
            rejects.append(Reject(rid, source, "`responses` must be a list of two or more responses",
                                  "give every row at least two responses"))
            continue
        texts = [response_text(v) for v in values]
        if any(t is None for t in texts):
            rejects.append(Reject(rid, source, "a response is neither text nor an assistant message",
                                  "write each response as a string or [{role: assistant, content: ...}]"))
            continue
        rid = rid or content_id(tuple((m["role"], m["content"]) for m in conv))
        if rid in seen:
            rejects.append(Reject(rid, source, f"duplicate id (first at {seen[rid]})", "give every row a unique id"))
            continue
        seen[rid] = source
        cands = tuple(Candidate(t, f"{rid}#{n}") for t, n in zip(texts, names, strict=True))
        pairs = pair_indices(len(cands), pairing) if cols == ("responses",) else ((0, 1),)
        groups.append(Group(rid, conv, cands, pairs, source))
    return groups, rejects


def read_revise_groups(folder: Path, mode: str, skip_flags: tuple[str, ...]) -> tuple[list[Group], list[Reject]]:
    """Pairs from a `cai revise` folder: initial vs final revision, or each round vs the next."""
    path = Path(folder) / "records.jsonl"
    groups, rejects = [], []
    for line, obj in read_jsonl_numbered(path):
        try:
            rec = ReviseRecord.from_dict(obj, Location(str(path), line))
        except RecordError as e:  # the folder was taken for a revise run by its records.jsonl
            raise RecordError(e.message, e.location, fix=f"{e.fix}; or pass --input-kind responses") from None
        rid, source = rec.id, f"{path}:{line}"
        texts = [(name, step.text, step.flags) for name, step in rec.chain()]
        if not rec.rounds:
            rejects.append(Reject(rid, source, "record has no revision rounds", "revise it with --rounds >= 1"))
            continue
        if mode == "final":
            texts = [texts[0], texts[-1]]
        flagged = [f"{name} is flagged {f}" for name, _, flags in texts for f in flags if f in skip_flags]
        cands = tuple(Candidate(t.strip(), f"{rid}#{name}") for name, t, _ in texts)
        if flagged and mode == "final":
            rejects.append(Reject(rid, source, "; ".join(flagged), "judge flagged texts with --skip-flags ''"))
            continue
        pairs = pair_indices(len(cands), "adjacent")
        if flagged:  # rounds: drop only the pairs that touch a flagged step
            bad = {i for i, (_, _, flags) in enumerate(texts) if any(f in skip_flags for f in flags)}
            for i, j in pairs:
                if i in bad or j in bad:
                    rejects.append(Reject(f"{rid}/{i}-{j}", source, "; ".join(flagged),
                                          "judge flagged texts with --skip-flags ''"))
            pairs = tuple((i, j) for i, j in pairs if i not in bad and j not in bad)
        groups.append(Group(rid, list(rec.input), cands, pairs, source))
    return groups, rejects


def form_pairs(groups: list[Group]) -> tuple[list[tuple[ResponsePair, Group, int, int]], list[Reject], int]:
    """The pairs to judge, in input order. Identical responses (after trimming) are skipped and
    counted, so chosen and rejected can never be the same text; empty ones are rejects."""
    pairs, rejects, identical = [], [], 0
    for g in groups:
        for i, j in g.pairs:
            a, b = g.candidates[i], g.candidates[j]
            pid = f"{g.id}/{i}-{j}"
            unfinished = [c for c in (a, b) if c.finish_reason not in FINISHED]
            if unfinished:
                rejects.append(Reject(pid, g.source, f"response {unfinished[0].ref} ended with finish reason "
                                      f"{unfinished[0].finish_reason!r}, not a finished answer",
                                      "delete its line from responses.jsonl to sample it again"))
            elif not a.text.strip() or not b.text.strip():
                rejects.append(Reject(pid, g.source, "empty response", "empty responses cannot be compared"))
            elif a.text.strip() == b.text.strip():
                identical += 1
            else:
                pairs.append((ResponsePair(pid, g.conversation, a.text, b.text), g, i, j))
    return pairs, rejects, identical
