"""The principles panel, from `cai revise` records: how often each principle was drawn, and which
ones changed the answers most. A round's change is measured between the answer it critiqued (the
initial response, or the previous round's revision) and its revision: the share of words edited
(1 - difflib's similarity ratio over the two word sequences: 0 = unchanged, 1 = rewritten) and
the difference in words."""

from __future__ import annotations

import difflib
import math
from collections import defaultdict
from dataclasses import dataclass

from cai.report import svg
from cai.report.folders import Run
from cai.report.page import charts, figure, how, table
from cai.schema import ReviseRecord

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Change:
    """One revision round under one principle."""

    principle: str
    edited: float
    """1 - similarity of the word sequences before and after."""
    words: int
    """Words after minus words before."""


def edited_share(before: str, after: str) -> float:
    a, b = before.split(), after.split()
    if not a and not b:
        return 0.0
    return 1.0 - difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def changes(records: list[ReviseRecord]) -> list[Change]:
    out = []
    for r in records:
        before = r.initial.text
        for rnd in r.rounds:
            after = rnd.revision.text
            out.append(Change(rnd.principle, edited_share(before, after), len(after.split()) - len(before.split())))
            before = after
    return out


@dataclass(frozen=True)
class PrincipleStats:
    principle: str
    uses: int
    edited: float
    unchanged: float
    words: float
    words_half_width: float | None
    """Half the normal 95% interval of the mean word difference (None for one use)."""


def stats(all_changes: list[Change]) -> list[PrincipleStats]:
    """Per principle, most edited first."""
    by: dict[str, list[Change]] = defaultdict(list)
    for c in all_changes:
        by[c.principle].append(c)
    out = []
    for pid, cs in by.items():
        n = len(cs)
        words = [c.words for c in cs]
        mean = sum(words) / n
        half = Z95 * math.sqrt(sum((w - mean) ** 2 for w in words) / (n - 1) / n) if n > 1 else None
        out.append(PrincipleStats(pid, n, sum(c.edited for c in cs) / n, sum(c.edited == 0 for c in cs) / n, mean,
                                  half))
    return sorted(out, key=lambda s: (-s.edited, s.principle))


def _words(s: PrincipleStats) -> svg.Interval:
    if s.words_half_width is None:
        return svg.Interval(s.principle, s.words, n=s.uses)
    return svg.Interval(s.principle, s.words, s.words - s.words_half_width, s.words + s.words_half_width, s.uses)


def section(runs: list[Run]) -> str:
    body = [how("Which principles the revise rounds drew, and how much a revision under each one changed the answer "
                "it critiqued: the share of words edited (0 = the revision repeated the answer, 1 = rewrote all of "
                "it) and the change in length. A principle that never changes anything is not steering the model; "
                "one that mostly adds words teaches the policy to be longer.")]
    for run in runs:
        st = stats(changes(run.records))
        if not st:
            body.append(f'<h3>{svg.esc(run.name)}</h3><p class="note">No revision rounds yet.</p>')
            continue
        rows = [[s.principle, str(s.uses), svg.pct(s.edited), svg.pct(s.unchanged), f"{s.words:+.1f}"] for s in st]
        figures = [
            figure("Rounds per principle", svg.bar_chart([(s.principle, float(s.uses)) for s in st],
                                                         "principle usage")),
            figure("Words edited by a revision, mean per principle",
                   svg.bar_chart([(s.principle, s.edited) for s in st], "edited share", fmt=svg.pct)),
            figure("Words added by a revision (mean, 95% interval)", svg.interval_chart(
                [_words(s) for s in st], "length change", domain=None, reference=0.0, fmt=lambda v: f"{v:+.3g}")),
        ]
        body += [f"<h3>{svg.esc(run.name)} <span class=\"tag\">{len(run.records)} records</span></h3>",
                 table(["principle", "rounds", "words edited", "unchanged", "Δ words"], rows), charts(figures)]
    return "".join(body)
