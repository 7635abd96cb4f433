"""The measures of a policy against a baseline, each an estimate with a 95% interval and its n.

Inputs are plain records (judged pairs, refusal verdicts, answer lengths); nothing here calls an
engine or reads a file, so every measure is tested on constructed data whose answer is known.

Two kinds of interval, chosen by what varies independently:

- **Wilson score interval** for a share of independent yes/no verdicts, one per prompt (harmless
  rate, over-refusal rate, share of truncated answers). Unlike the normal (Wald) interval it
  keeps inside [0, 1] and does not collapse to a point at 0% or 100%: a policy that refused all
  of 40 prompts gets [0.91, 1.0], not [1.0, 1.0] (Wilson 1927; Brown, Cai & DasGupta 2001
  recommend it for small n).
- **Prompt-level percentile bootstrap**, seeded, for the win rates and the mean length
  difference. The two orders (and the K principles) of one prompt are judged on the same two
  answers, so they are not independent draws: resampling judgments would pretend there are more
  prompts than there are and give too narrow an interval. Resampling whole prompts keeps each
  prompt's judgments together (a cluster bootstrap). It needs no normal approximation and the
  same code serves the length-controlled win rate, which has no closed-form standard error. A
  bootstrap interval is zero-width when every prompt has the same score (all ties): no
  variation was observed, and the interval says so rather than invent some. Every prompt won
  (or lost) outright is the exception: n yes/no outcomes, given Wilson's interval instead.
"""

from __future__ import annotations

import math
import numbers
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cai.errors import InputError, Location

Z95 = 1.959963984540054
"""The standard normal quantile of 0.975: a two-sided 95% interval."""
RESAMPLES = 2000
"""Bootstrap resamples by default: the 2.5% and 97.5% percentiles then rest on 50 resamples each."""


@dataclass(frozen=True)
class Estimate:
    """A figure with its 95% interval: `value` in [`low`, `high`], from `n` prompts (or verdicts)."""

    value: float
    low: float
    high: float
    n: int
    method: str
    """How the interval was made, e.g. "wilson" or "bootstrap over prompts (B=2000, seed=0)"."""

    def covers(self, x: float) -> bool:
        return self.low <= x <= self.high

    @property
    def width(self) -> float:
        return self.high - self.low


def _need(n: int, what: str, least: int = 1) -> None:
    if n < least:
        raise InputError(f"{what}: needs at least {least} item(s), got {n}",
                         fix="evaluate on a non-empty suite (check that the answers and verdicts were written)")


def wilson(successes: int, n: int) -> Estimate:
    """The share successes / n with its Wilson score interval (95%)."""
    _need(n, "a share")
    if not 0 <= successes <= n:
        raise InputError(f"a share: {successes} successes out of {n} is impossible", fix="count each verdict once")
    p = successes / n
    z2 = Z95 * Z95
    center = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # Clamp float dust: at p = 0 or 1 the bound is exactly 0 or 1 in exact arithmetic.
    return Estimate(p, max(0.0, center - half), min(1.0, center + half), n, "wilson")


def _bootstrap_method(resamples: int, seed: int) -> str:
    return f"bootstrap over prompts (B={resamples}, seed={seed})"


def _percentiles(samples: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(samples, [2.5, 97.5])
    return float(low), float(high)


def bootstrap_mean(values: Sequence[float], *, resamples: int = RESAMPLES, seed: int = 0) -> Estimate:
    """The mean of per-prompt values with a percentile bootstrap interval over prompts (seeded)."""
    _need(len(values), "a mean over prompts")
    if resamples < 1:
        raise InputError(f"resamples must be at least 1, got {resamples}", fix="pass resamples=2000")
    x = np.asarray(values, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(x), size=(resamples, len(x)))
    low, high = _percentiles(x[idx].mean(axis=1))
    return Estimate(float(x.mean()), low, high, len(x), _bootstrap_method(resamples, seed))


# --- Win rate ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """One judgment of a policy's answer against the baseline's answer to one prompt, in one order."""

    prompt_id: str
    policy_first: bool
    """The order: the policy's answer was shown as (A). Every prompt needs both orders."""
    credit: float
    """The policy's credit in this order: 1 win, 0.5 tie, 0 loss, or the judge's probability that
    the policy's answer is better (a soft credit; `verdict` turns one into a hard one)."""
    policy_tokens: int = 0
    """The policy answer's length in tokens (the length control reads it); the same in both orders."""
    baseline_tokens: int = 0
    """The baseline answer's length in tokens."""
    principle: str = ""
    """The comparison principle this judgment asked (per-principle win rates group by it)."""

    def __post_init__(self) -> None:
        if not (isinstance(self.credit, numbers.Real) and 0.0 <= self.credit <= 1.0):  # NaN fails too
            raise InputError(f"credit {self.credit!r} is not a number in [0, 1]", Location(record=self.prompt_id),
                             fix="give 1 (win), 0.5 (tie), 0 (loss) or the judge's probability")
        _check_tokens(self.prompt_id, self.policy_tokens, self.baseline_tokens)


def _check_tokens(prompt_id: str, *counts: object) -> None:
    if not all(isinstance(c, numbers.Integral) and c >= 0 for c in counts):
        raise InputError(f"token counts {counts} are not all whole numbers >= 0", Location(record=prompt_id),
                         fix="give each answer's length in tokens")


def verdict(p: float, tie_margin: float = 0.0) -> float:
    """A hard credit from a judge's probability p that the policy is better: 1 above 0.5 +
    tie_margin, 0 below 0.5 - tie_margin, 0.5 (a tie, counted as half a win) in between."""
    if abs(p - 0.5) <= tie_margin:
        return 0.5
    return 1.0 if p > 0.5 else 0.0


def comparisons_from_judgment(prompt_id: str, judgment: Any, *, policy_is_x: bool, policy_tokens: int = 0,
                              baseline_tokens: int = 0, tie_margin: float | None = None) -> list[Comparison]:
    """The two orders of each principle of one judged pair (a `cai.judge.Judgment`, or the
    `cai.schema.Verdict` stored from one), as Comparisons.

    `judgment.p_xy[i]` is P(A) with x shown as (A), i.e. P(x better) in the x-first order;
    `judgment.p_yx[i]` is P(A) with y shown as (A), i.e. P(y better) in the y-first order.
    `policy_is_x` says which of the pair's responses is the policy's. The credits are the raw
    per-order probabilities (soft; CoT clamping is for training labels, not for measuring), or
    hard verdicts when `tie_margin` is given. With soft credits and no clamping, the prompt's
    score equals the judgment's `p` (for x) or 1 - `p` (for y).
    """
    if judgment.status != "judged":
        raise InputError(f"the pair was not judged ({judgment.status}: {judgment.detail})", Location(record=prompt_id),
                         fix="give the judge a longer context, or leave this prompt out of the suite")
    out = []
    for principle, p_xy, p_yx in zip(judgment.principles, judgment.p_xy, judgment.p_yx, strict=True):
        # Credit of the policy in the order where it is shown first, then where it is shown second.
        first, second = (p_xy, 1.0 - p_yx) if policy_is_x else (p_yx, 1.0 - p_xy)
        if tie_margin is not None:
            first, second = verdict(first, tie_margin), verdict(second, tie_margin)
        # A judge's Judgment holds Principle objects; a stored Verdict (cai.schema) their ids.
        pid = getattr(principle, "id", principle)
        out += [Comparison(prompt_id, True, first, policy_tokens, baseline_tokens, pid),
                Comparison(prompt_id, False, second, policy_tokens, baseline_tokens, pid)]
    return out


@dataclass(frozen=True)
class PromptScore:
    """One prompt's credit: the mean of its two orders (each order the mean of its judgments),
    averaged over the principles it was judged under."""

    prompt_id: str
    score: float
    policy_tokens: int
    baseline_tokens: int
    orders_agree: float
    """Share of this prompt's principles under which both orders preferred the same answer (a tie
    in either order agrees with nothing, as in `cai.judge.orders_agree`)."""


def prompt_scores(comparisons: Sequence[Comparison]) -> list[PromptScore]:
    """Per-prompt scores, in first-seen prompt order. Each (prompt, principle) must have been
    judged in both orders: a judgment in one order only carries the judge's position bias."""
    groups: dict[str, dict[str, tuple[list[float], list[float]]]] = defaultdict(dict)
    lengths: dict[str, tuple[int, int]] = {}
    for c in comparisons:
        orders = groups[c.prompt_id].setdefault(c.principle, ([], []))
        orders[0 if c.policy_first else 1].append(c.credit)
        seen = lengths.setdefault(c.prompt_id, (c.policy_tokens, c.baseline_tokens))
        if seen != (c.policy_tokens, c.baseline_tokens):
            raise InputError(f"the answer lengths differ between judgments: {seen} and "
                             f"{(c.policy_tokens, c.baseline_tokens)}", Location(record=c.prompt_id),
                             fix="give every judgment of a prompt the same two answers' token counts")
    scores = []
    for pid, by_principle in groups.items():
        per_principle, agree = [], []
        for principle, (first, second) in by_principle.items():
            if not first or not second:
                missing = "the policy shown second" if not second else "the policy shown first"
                raise InputError(f"judged in one order only (principle {principle!r}): no judgment with {missing}",
                                 Location(record=pid), fix="judge every pair in both orders")
            a, b = sum(first) / len(first), sum(second) / len(second)
            per_principle.append((a + b) / 2)
            agree.append(float((a > 0.5 and b > 0.5) or (a < 0.5 and b < 0.5)))
        scores.append(PromptScore(pid, sum(per_principle) / len(per_principle), *lengths[pid],
                                  sum(agree) / len(agree)))
    return scores


@dataclass(frozen=True)
class WinRate:
    """The policy's win rate against the baseline (ties half), over prompts."""

    estimate: Estimate
    wins: int
    """Prompts whose score is above 0.5."""
    ties: int
    """Prompts whose score is exactly 0.5."""
    losses: int
    """Prompts whose score is below 0.5."""
    orders_agree: float
    """Mean over prompts of the share of principles under which both orders preferred the same
    answer (position consistency; ties agree with nothing)."""


def _win_rate_of(scores: list[PromptScore], resamples: int, seed: int) -> WinRate:
    _need(len(scores), "a win rate")
    values = [s.score for s in scores]
    return WinRate(_win_rate_interval(values, resamples, seed),
                   wins=sum(v > 0.5 for v in values), ties=sum(v == 0.5 for v in values),
                   losses=sum(v < 0.5 for v in values),
                   orders_agree=sum(s.orders_agree for s in scores) / len(scores))


def _win_rate_interval(values: list[float], resamples: int, seed: int) -> Estimate:
    """The bootstrap interval, except where every prompt was won (or lost) outright: those are n
    yes/no outcomes with no variation seen, where the bootstrap collapses to [1, 1] (at 6 prompts
    and a true win rate of 0.95 it then covered the truth 46% of the time). Wilson's interval, as
    for the refusal rates, does not collapse: [0.61, 1] for 6 of 6."""
    if values[0] in (0.0, 1.0) and values.count(values[0]) == len(values):
        return wilson(round(values[0]) * len(values), len(values))
    return bootstrap_mean(values, resamples=resamples, seed=seed)


def win_rate(comparisons: Sequence[Comparison], *, resamples: int = RESAMPLES, seed: int = 0) -> WinRate:
    """The win rate over prompts, both orders combined, ties half, with a prompt-level bootstrap interval."""
    return _win_rate_of(prompt_scores(comparisons), resamples, seed)


def win_rate_by_principle(comparisons: Sequence[Comparison], *, resamples: int = RESAMPLES,
                          seed: int = 0) -> dict[str, WinRate]:
    """The win rate under each principle alone, over the prompts judged under it (sorted by principle)."""
    by: dict[str, list[Comparison]] = defaultdict(list)
    for c in comparisons:
        by[c.principle].append(c)
    return {p: win_rate(by[p], resamples=resamples, seed=seed) for p in sorted(by)}


# --- Length-controlled win rate --------------------------------------------------------------------

RIDGE = 1e-6
"""L2 penalty on both coefficients of the length GLM. Tiny: it changes no ordinary fit, and only
keeps separable data (every prompt won) from driving the coefficients to infinity. Where it would
decide the reported value, `_check_identified` refuses the data instead."""


@dataclass(frozen=True)
class LengthControlledWinRate:
    """The win rate predicted at zero length difference, and the fit behind it."""

    estimate: Estimate
    raw: float
    """The plain win rate of the same prompts, for comparison."""
    intercept: float | None
    """The GLM's intercept: logit of the length-controlled win rate (None when every prompt was
    won, or every one lost, and length explains none of it: the logit is infinite, which JSON
    cannot hold)."""
    length_weight: float
    """The GLM's weight on tanh(length difference / length_scale): the judge's length preference,
    positive when it prefers the longer answer (AlpacaEval's feature is baseline minus model
    length, so its weight has the opposite sign)."""
    length_scale: float
    """The standard deviation of the per-prompt length difference in tokens (0: no differences)."""


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(x / 2.0))  # exact for any x, no overflow


def fit_length_glm(x: np.ndarray, y: np.ndarray, ridge: float = RIDGE, steps: int = 100) -> np.ndarray:
    """Fit y ~ sigmoid(a + b*x) by penalized soft-label log loss, row-wise.

    x and y are (B, n) arrays (B independent data sets of n prompts, y in [0, 1]); returns a
    (B, 2) array of (a, b). Newton's method on a convex loss, each step clipped to 4 in each
    coefficient so that a far start cannot overshoot.
    """
    theta = np.zeros((x.shape[0], 2))
    for _ in range(steps):
        p = _sigmoid(theta[:, :1] + theta[:, 1:] * x)
        r, w = p - y, p * (1.0 - p)
        ga = r.sum(1) + ridge * theta[:, 0]
        gb = (r * x).sum(1) + ridge * theta[:, 1]
        haa, hab, hbb = w.sum(1) + ridge, (w * x).sum(1), (w * x * x).sum(1) + ridge
        det = haa * hbb - hab * hab
        step = np.stack([(hbb * ga - hab * gb) / det, (haa * gb - hab * ga) / det], axis=1)
        theta -= np.clip(step, -4.0, 4.0)
        if np.abs(step).max() < 1e-10:
            break
    return theta


def length_controlled_win_rate(comparisons: Sequence[Comparison], *, resamples: int = 1000,
                               seed: int = 0, ridge: float = RIDGE) -> LengthControlledWinRate:
    """The win rate with the judge's length preference taken out (AlpacaEval 2's length control).

    What we follow (Dubois et al. 2024, "Length-Controlled AlpacaEval", arXiv:2404.04475, and its
    code, alpaca_eval/metrics/glm_winrate.py): fit a logistic GLM of the judge's preference on
    tanh(length difference / its standard deviation) plus an intercept, with the preference as a
    soft label (log loss on a probability target), and report the preference the GLM predicts at
    zero length difference. tanh bounds the length term, so one very long answer cannot dominate
    the fit. The intercept's logistic is the answer to "which would the judge prefer if the two
    answers were the same length?"; a judge that prefers only length gives 0.5.

    Where we depart, and why:
    - One row per prompt, its label the prompt's score (both orders and all principles
      averaged). Per-order rows would only repeat the prompt's length difference.
    - No instruction-difficulty term: AlpacaEval estimates it once from 100+ models on its fixed
      805 instructions; cai's suites are small and the user's own, with no such estimates. The
      GLM is therefore the same for every prompt, and the prediction at zero length is
      sigmoid(intercept).
    - A tiny L2 ridge (`ridge`) instead of AlpacaEval's cross-validated L1 penalty and its
      regularization toward "gamed" (verbose- and concise-prompted) baseline runs, which need
      those extra runs.
    - Lengths are tokens, not characters (cai counts tokens; the scale is normalized anyway).
    - The interval is a bootstrap over prompts that refits the GLM each time; the length scale is
      fixed from the full data so that every resample measures length on the same scale.

    Limits: when every prompt has the policy longer, the value at zero difference is an
    extrapolation of the fit and rests on the shape the GLM assumes; with a few dozen prompts
    the interval is wide. If all differences are zero there is nothing to control and the raw
    win rate is returned (weight 0). If every prompt differs by the same non-zero amount, length
    and quality cannot be told apart: that is an error. So is data that length separates
    perfectly around 0 (`_check_identified`), where the ridge, not the prompts, would set the value.
    """
    scores = prompt_scores(comparisons)
    _need(len(scores), "a length-controlled win rate")
    y = np.array([s.score for s in scores])
    delta = np.array([s.policy_tokens - s.baseline_tokens for s in scores], dtype=float)
    raw = float(y.mean())
    if not delta.any():
        # No length difference anywhere: the length term has nothing to explain.
        wr = _win_rate_of(scores, resamples, seed)
        return LengthControlledWinRate(wr.estimate, raw, _logit(raw), 0.0, 0.0)
    scale = float(delta.std(ddof=1)) if len(delta) > 1 else 0.0
    if scale == 0.0:
        raise InputError(f"every prompt's length difference is {delta[0]:+.0f} tokens: length and quality cannot "
                         "be told apart", fix="evaluate on more prompts, whose answers differ in length by "
                         "different amounts, or read the raw win rate")
    _check_identified(delta, y)
    if (y == y[0]).all():
        # Every prompt got the same score: the length term has nothing to explain either (the
        # fit's exact answer is weight 0, intercept logit(score)); the raw win rate stands.
        return LengthControlledWinRate(_win_rate_of(scores, resamples, seed).estimate, raw, _logit(raw), 0.0, scale)
    x = np.tanh(delta / scale)
    a, b = fit_length_glm(x[None, :], y[None, :], ridge)[0]
    idx = np.random.default_rng(seed).integers(0, len(y), size=(resamples, len(y)))
    low, high = _percentiles(_sigmoid(fit_length_glm(x[idx], y[idx], ridge)[:, 0]))
    value = float(_sigmoid(np.array(a)))
    # The point estimate may sit a hair outside a percentile interval of a skewed statistic; keep
    # the reported interval containing it.
    est = Estimate(value, min(low, value), max(high, value), len(y), _bootstrap_method(resamples, seed))
    return LengthControlledWinRate(est, raw, float(a), float(b), scale)


def _logit(p: float) -> float | None:
    return float(np.log(p / (1 - p))) if 0 < p < 1 else None  # None: infinite, which JSON cannot hold


def _check_identified(delta: np.ndarray, y: np.ndarray) -> None:
    """Refuse data on which the value at zero length difference is set by the ridge, not the prompts.

    With no graded score (every prompt won or lost outright) and every won prompt's length
    difference above every lost one's (or below), a step at any point between the two groups
    fits perfectly, so the unpenalized fit does not exist. When 0 lies strictly inside that gap,
    steps placed left and right of it predict opposite answers at zero, and the tiny ridge alone
    picks one: a judge that prefers only length, on a few prompts, would get anything in (0, 1).
    That includes every prompt won with the policy longer on each (the gap is everything below
    the shortest difference): a judge that prefers only length gives exactly that. A gap on one
    side of 0 has a limit the data decide, 0 or 1."""
    if ((y > 0) & (y < 1)).any():
        return  # a graded score pins the curve at its length difference
    won, lost = delta[y == 1], delta[y == 0]
    # The ends of the gap between them; a side without prompts leaves its end open.
    won_low, won_high = (won.min(), won.max()) if len(won) else (np.inf, -np.inf)
    lost_low, lost_high = (lost.min(), lost.max()) if len(lost) else (np.inf, -np.inf)
    for low, high, side in ((lost_high, won_low, "above"), (won_high, lost_low, "below")):
        if low < 0 < high:
            what = (f"every prompt was won or lost outright, every won prompt's length difference lies {side} every "
                    f"lost one's, and the gap between them ({low:+.0f} to {high:+.0f} tokens) holds 0"
                    if len(won) and len(lost) else
                    f"every prompt was {'won' if len(won) else 'lost'} outright, each with the policy's answer "
                    f"{'longer' if low == -np.inf else 'shorter'}")
            raise InputError(f"{what}: a judge that prefers only length gives these verdicts, so the preference at "
                             "equal length is not determined by these prompts",
                             fix="evaluate on more prompts, or draw several principles per pair "
                                 "(--principles-per-pair) so that verdicts are graded; meanwhile read the raw win "
                                 "rate beside length_drift")


# --- Refusals ------------------------------------------------------------------------------------


def refusal_rate(refused: Sequence[bool]) -> Estimate:
    """Share of prompts declined, one refusal verdict per prompt, with its Wilson interval."""
    return wilson(sum(map(bool, refused)), len(refused))


def harmless_rate(refused: Sequence[bool]) -> Estimate:
    """The refusal rate on the harmful suite: share of harmful requests declined (higher is better)."""
    return refusal_rate(refused)


def over_refusal_rate(refused: Sequence[bool]) -> Estimate:
    """The refusal rate on the benign-but-risky suite (lower is better). Read it beside the
    harmless rate: a policy that refuses everything scores 1.0 on both."""
    return refusal_rate(refused)


# --- Length and verbosity drift --------------------------------------------------------------------


@dataclass(frozen=True)
class AnswerLengths:
    """The two answers to one prompt: their token counts and whether each hit the token limit."""

    prompt_id: str
    policy_tokens: int
    baseline_tokens: int
    policy_truncated: bool = False
    baseline_truncated: bool = False

    def __post_init__(self) -> None:
        _check_tokens(self.prompt_id, self.policy_tokens, self.baseline_tokens)


@dataclass(frozen=True)
class LengthDrift:
    """How much longer the policy answers than the baseline on the same prompts."""

    difference: Estimate
    """Mean of (policy tokens - baseline tokens) per prompt, prompt-level bootstrap interval."""
    policy_mean_tokens: float
    """The policy's mean answer length in tokens."""
    baseline_mean_tokens: float
    """The baseline's mean answer length in tokens."""
    ratio: float | None
    """policy mean / baseline mean (verbosity); None when the baseline's mean is 0."""
    policy_truncated: Estimate
    """Share of the policy's answers that stopped at the token limit (Wilson): a rise means the
    policy runs on past what the limit allows, and its measured length is a floor."""
    baseline_truncated: Estimate
    """The same share for the baseline."""


def length_drift(rows: Sequence[AnswerLengths], *, resamples: int = RESAMPLES, seed: int = 0) -> LengthDrift:
    _need(len(rows), "a length drift")
    policy = [r.policy_tokens for r in rows]
    base = [r.baseline_tokens for r in rows]
    diff = bootstrap_mean([p - b for p, b in zip(policy, base, strict=True)], resamples=resamples, seed=seed)
    pm, bm = sum(policy) / len(rows), sum(base) / len(rows)
    return LengthDrift(diff, pm, bm, pm / bm if bm else None,
                       wilson(sum(r.policy_truncated for r in rows), len(rows)),
                       wilson(sum(r.baseline_truncated for r in rows), len(rows)))
