"""Cleaning a model's output, and flagging outputs that must not be kept as good data.

Small models echo the transcript's role labels ("Revision: ...", "Assistant: ...") and sometimes
run on into the next turn ("Human: ..."); both are cut here, so the text stored and trained on is
the answer itself. What cannot be cleaned is flagged instead of silently kept:

- `empty`: nothing left after cleaning.
- `degenerate`: the text loops (a phrase repeated over and over, or one character run on and on).
- `truncated`: a response or revision hit max_tokens before it ended. Its text stops mid-answer,
  and SFT trains the end-of-turn token after it: training on it teaches the model to stop
  mid-sentence. (A critique is only context for the revision, so its token cap is a budget, not
  a flaw, and it is not flagged for it.)
- `wrong_role`: a revision that is labeled as a critique (the model confused its roles, the
  failure the few-shot transcripts are there to prevent, CAI §1).
- `fewshot_copy`: the text reproduces one of the few-shot examples' answers (small models copy
  "Pull weeds by hand after rain..." as the revision of an unrelated prompt).
- `unfinished`: the engine ended the text for another reason than a stop or max_tokens ("abort",
  "error", none given): whatever text came back is not a finished answer.

The revise stage stores the flags with each step; the exports skip flagged texts by default.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from cai.engine.base import FINISHED
from cai.errors import ConfigError

Step = Literal["response", "critique", "revision"]
FLAGS = ("empty", "degenerate", "truncated", "wrong_role", "fewshot_copy", "unfinished")
"""Every flag `clean` can raise (docs/revise.md explains each)."""
CLEAN_VERSION = 2
"""Bumped whenever `clean` changes what it keeps or flags: it is part of the keys of the records
made from cleaned texts, so a resume makes them again with the new cleaning (docs/architecture.md)."""


def check_skip_flags(skip_flags: Sequence[str], field: str, empty_means: str) -> None:
    """Raise ConfigError when a config's `skip_flags` (YAML key `field`) names no flag in FLAGS;
    `empty_means` ends the fix: what `[]` does in that stage ("export everything")."""
    unknown = [f for f in skip_flags if f not in FLAGS]
    if unknown:
        raise ConfigError(f"{field}: unknown flag(s) {', '.join(map(repr, unknown))}",
                          fix=f"use some of: {', '.join(FLAGS)} (or [] to {empty_means})")

# Labels a model writes in front of its answer. Checked case-insensitively at the start of the
# text, optionally in markdown bold ("**Revision:**"), repeatedly ("Assistant: Revision: ...").
_ANSWER_LABELS = ("assistant", "ai", "response", "answer", "final answer")
_LABELS: dict[str, tuple[str, ...]] = {
    "response": _ANSWER_LABELS,
    "critique": _ANSWER_LABELS + ("critique",),
    "revision": _ANSWER_LABELS + ("revision", "revised response", "rewritten response", "rewrite",
                                  "revised answer", "new response"),
}
_CRITIQUE_LABEL = re.compile(r"^[*_#>\s]*(critique|criticism)\s*[*_]*\s*:", re.IGNORECASE)
# "Here is the revised response:" on a line of its own before a revision.
_PREAMBLE = re.compile(r"^(here is|here's) (the|a|my) (revised|rewritten|new|improved)[^:\n]{0,40}:\s*",
                       re.IGNORECASE)

# A line that starts the next turn of the transcript (the paper's Human/Assistant format, and
# its CritiqueRequest/RevisionRequest turns): everything from there on is not this answer.
_NEXT_TURN = re.compile(
    r"^\W{0,3}(human|user|critique ?request|revision ?request)\W{0,3}:",
    re.IGNORECASE | re.MULTILINE,
)

MIN_WORDS_FOR_NGRAM_CHECK = 24
"""Shorter texts cannot be judged by their n-gram statistics (a short list repeats words)."""
NGRAM = 4
MIN_DISTINCT_NGRAM_RATIO = 0.5
"""Below this share of distinct word 4-grams, a text mostly repeats itself. Fluent prose,
lists and code score above 0.9; a looping output falls to 0.1-0.3."""
MAX_LOOP_PERIOD = 32
"""Longest repeated unit (in words) that the tail-loop check looks for."""
MIN_LOOP_WORDS = 12
"""A tail counts as a loop when at least this many words (and at least twice the unit)
repeat the unit before them: the unit appears three times or more in a row."""
MIN_COPY_CHARS = 20
"""Few-shot texts shorter than this are not looked for (a short phrase may recur by chance)."""
MAX_CHAR_RUN = 40
"""One character repeated this often in a row ("!!!!...", "aaaa...") is a loop, not prose."""
_CHAR_RUN = re.compile(r"(\S)\1{" + str(MAX_CHAR_RUN - 1) + ",}")


@dataclass(frozen=True)
class Cleaned:
    """A cleaned output and its flags (empty tuple: good)."""

    text: str
    flags: tuple[str, ...]


def clean(text: str, step: Step, finish_reason: str = "stop", fewshot: tuple[str, ...] = ()) -> Cleaned:
    """Clean one output of a revise step and flag what is wrong with it. `fewshot`: the texts of
    the few-shot examples the prompt showed (a copy of one is flagged)."""
    raw = text.replace("\r\n", "\n").strip()
    flags = []
    if step == "revision" and _CRITIQUE_LABEL.match(raw):
        flags.append("wrong_role")
    out = strip_labels(raw, _LABELS[step])
    if step == "revision":
        out = _PREAMBLE.sub("", out, count=1)
    out = cut_next_turn(out)
    out = re.sub(r"\n{3,}", "\n\n", out).strip()
    if not out:
        flags.append("empty")
    elif is_degenerate(out):
        flags.append("degenerate")
    if out and copies(out, fewshot):
        flags.append("fewshot_copy")
    if finish_reason == "length" and step != "critique":
        flags.append("truncated")
    if finish_reason not in FINISHED:
        flags.append("unfinished")
    return Cleaned(out, tuple(flags))


def strip_labels(text: str, labels: tuple[str, ...]) -> str:
    """Remove role labels at the start ("Revision:", "**Assistant:**", "Assistant: Revision:")."""
    pattern = re.compile(
        r"^[*_#>\s]*(?:" + "|".join(re.escape(x) for x in labels) + r")\s*[*_]*\s*:[*_]*\s*",
        re.IGNORECASE,
    )
    while True:
        stripped = pattern.sub("", text, count=1)
        if stripped == text:
            return text.strip()
        text = stripped


def cut_next_turn(text: str) -> str:
    """Cut the text where the model starts writing the next turn of the transcript."""
    m = _NEXT_TURN.search(text)
    return text[: m.start()].strip() if m else text


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def copies(text: str, examples: tuple[str, ...]) -> bool:
    """True when `text` contains one of the example texts (case and spacing ignored)."""
    t = _norm(text)
    return any(len(e) >= MIN_COPY_CHARS and _norm(e) in t for e in examples)


def is_degenerate(text: str) -> bool:
    """True when the text loops: one character repeated on and on, few distinct word 4-grams,
    or a unit of words repeated at its end."""
    for run in _CHAR_RUN.finditer(text):
        if run.group(1) not in "-=_*#~":  # long "-----" or "=====" lines are markdown rules
            return True
    words = text.lower().split()
    if len(words) >= MIN_WORDS_FOR_NGRAM_CHECK:
        grams = [tuple(words[i : i + NGRAM]) for i in range(len(words) - NGRAM + 1)]
        if len(set(grams)) / len(grams) < MIN_DISTINCT_NGRAM_RATIO:
            return True
    return _tail_loop(words)


def _tail_loop(words: list[str]) -> bool:
    for period in range(1, min(MAX_LOOP_PERIOD, len(words) // 3) + 1):
        run = 0
        for i in range(len(words) - 1, period - 1, -1):
            if words[i] != words[i - period]:
                break
            run += 1
        if run >= max(2 * period, MIN_LOOP_WORDS):
            return True
    return False
