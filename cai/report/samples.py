"""Side-by-side samples: a prompt, the base model's first answer, each round's critique and
revision (from `cai revise` records), and every policy's answer to the same prompt (from `cai eval`
answers.jsonl, with its rows.jsonl verdicts). A revise record and an eval answer are the same
prompt when their user turns have the same text (whitespace aside): the two stages name prompts
by their own files' ids. Prompts found in both come first, then eval prompts (taking the suites in
turn), then revise records."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cai.report import svg
from cai.report.folders import Run
from cai.report.page import how
from cai.schema import EvalAnswer, Message, ReviseRecord


def prompt_key(turns: Sequence[Message]) -> str:
    return "\n".join(" ".join(m.get("content", "").split()) for m in turns if m.get("role") == "user")


@dataclass
class Sample:
    key: str
    turns: Sequence[Message]
    revise: tuple[str, ReviseRecord] | None = None
    answers: list[tuple[str, EvalAnswer, dict[str, Any]]] = field(default_factory=list)
    """(policy label, answer, its row in rows.jsonl)."""
    suite: str = ""


def collect(revise_runs: list[Run], eval_runs: list[Run], limit: int) -> list[Sample]:
    """Up to `limit` samples, matched prompts first."""
    samples: dict[str, Sample] = {}
    for run in eval_runs:
        rows = {r.get("id"): r for r in run.rows}
        for a in run.answers:
            key = prompt_key(a.prompt)
            s = samples.setdefault(key, Sample(key, a.prompt, suite=a.suite))
            label = a.policy if len(eval_runs) == 1 else f"{a.policy} ({run.name})"
            s.answers.append((label, a, rows.get(a.id, {})))
    for run in revise_runs:
        for r in run.records:
            key = prompt_key(r.input)
            s = samples.setdefault(key, Sample(key, r.input))
            if s.revise is None:
                s.revise = (run.name, r)
    both = [s for s in samples.values() if s.revise and s.answers]
    by_suite: dict[str, list[Sample]] = {}
    for s in samples.values():
        if s.answers and not s.revise:
            by_suite.setdefault(s.suite, []).append(s)
    eval_only = [s for group in itertools.zip_longest(*by_suite.values()) for s in group if s is not None]
    revise_only = [s for s in samples.values() if s.revise and not s.answers]
    return (both + eval_only + revise_only)[:limit]


def _box(title: str, text: str, tags: Sequence[str] = ()) -> str:
    tag_html = "".join(f'<span class="tag">{svg.esc(t)}</span>' for t in tags)
    return f'<div class="box"><h4>{svg.esc(title)}{tag_html}</h4><div class="text">{svg.esc(text)}</div></div>'


def _answer_tags(a: EvalAnswer, row: dict[str, Any]) -> list[str]:
    tags = [f"{a.completion_tokens} tokens"]
    if a.finish_reason == "length":
        tags.append("cut off")
    if row.get("refused") is True:
        tags.append(f"refused: {row.get('refusal_match')}")
    if isinstance(row.get("score"), int | float):
        tags.append(f"judge score vs baseline {row['score']:.2f}")
    return tags


def render(s: Sample) -> str:
    turns = "\n\n".join(f"[{m.get('role')}] {m.get('content', '')}" for m in s.turns)
    ids = []
    if s.answers:
        ids.append(f"{s.suite}/{s.answers[0][1].prompt_id}")
    if s.revise:
        ids.append(f"revise {s.revise[1].id}")
    out = [f'<div class="sample">{_box("Prompt", turns, ids)}']
    if s.revise:
        name, r = s.revise
        chain = [_box("Initial answer (base model)", r.initial.text)]
        for rnd in r.rounds:
            if rnd.critique is not None:
                chain.append(_box(f"Critique, round {rnd.round}", rnd.critique.text, [rnd.principle]))
            chain.append(_box(f"Revision, round {rnd.round}", rnd.revision.text, [rnd.principle]))
        out.append(f'<h4>Self-revision <span class="tag">{svg.esc(name)}</span></h4><div class="cols">'
                   + "".join(chain) + "</div>")
    if s.answers:
        out.append("<h4>Policies' answers</h4><div class=\"cols\">"
                   + "".join(_box(label, a.answer, _answer_tags(a, row)) for label, a, row in s.answers) + "</div>")
    return "".join(out) + "</div>"


def section(revise_runs: list[Run], eval_runs: list[Run], limit: int) -> str:
    chosen = collect(revise_runs, eval_runs, limit)
    if not chosen:
        return ""
    return how("The same prompt through every stage: the base model's first answer, the critiques and revisions it "
               "learned from, and each policy's answer in the eval (its tokens, whether it was cut off, the refusal "
               "phrase matched, the judge's score against the baseline: 1 = preferred in both orders). Figures "
               "summarize; these show what they summarize.") + "".join(render(s) for s in chosen)
