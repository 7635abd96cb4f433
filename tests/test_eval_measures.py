"""The eval measures on constructed data whose answer is known (issue 12)."""

from __future__ import annotations

import dataclasses
import json
import math
import random

import numpy as np
import pytest

from cai.constitution import Principle
from cai.errors import InputError
from cai.eval.measures import (
    AnswerLengths,
    Comparison,
    bootstrap_mean,
    comparisons_from_judgment,
    fit_length_glm,
    harmless_rate,
    length_controlled_win_rate,
    length_drift,
    over_refusal_rate,
    prompt_scores,
    verdict,
    wilson,
    win_rate,
    win_rate_by_principle,
)
from cai.judge import Judgment, combine


def both_orders(pid: str, first: float, second: float, policy_tokens: int = 0, baseline_tokens: int = 0,
                principle: str = "") -> list[Comparison]:
    """One prompt judged in both orders; `first`/`second`: the policy's credit with it shown first/second."""
    return [Comparison(pid, True, first, policy_tokens, baseline_tokens, principle),
            Comparison(pid, False, second, policy_tokens, baseline_tokens, principle)]


def coin_judge(n: int, seed: int, p_policy: float = 0.5) -> list[Comparison]:
    """A judge that picks the policy with probability p_policy in each order, independently."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        out += both_orders(f"p{i}", float(rng.random() < p_policy), float(rng.random() < p_policy))
    return out


# --- Win rate -------------------------------------------------------------------------------------


def test_equal_policies_win_half_and_the_interval_covers_half():
    wr = win_rate(coin_judge(200, seed=1))
    assert abs(wr.estimate.value - 0.5) < 0.06
    assert wr.estimate.covers(0.5) and wr.estimate.width > 0.05
    assert wr.estimate.n == 200 and wr.estimate.method == "bootstrap over prompts (B=2000, seed=0)"


def test_a_better_policy_wins_and_its_interval_excludes_half():
    wr = win_rate(coin_judge(200, seed=2, p_policy=0.8))
    assert 0.72 < wr.estimate.value < 0.88 and wr.estimate.low > 0.5


def test_the_interval_shrinks_with_more_prompts():
    widths = [win_rate(coin_judge(n, seed=3)).estimate.width for n in (25, 100, 400)]
    assert widths[0] > widths[1] > widths[2]
    assert widths[0] / widths[2] > 3  # ~ sqrt(16) = 4 for a mean


def test_ties_count_half():
    comps = both_orders("a", 0.5, 0.5) + both_orders("b", 1.0, 1.0) + both_orders("c", 0.0, 0.0)
    wr = win_rate(comps)
    assert wr.estimate.value == pytest.approx(0.5)
    assert (wr.wins, wr.ties, wr.losses) == (1, 1, 1)


def test_both_orders_are_combined_so_a_judge_that_always_picks_A_gives_half():
    # The judge says "(A)" every time: the policy wins when shown first, loses when shown second.
    comps = [c for i in range(30) for c in both_orders(f"p{i}", 1.0, 0.0)]
    wr = win_rate(comps)
    assert wr.estimate.value == 0.5 and wr.orders_agree == 0.0
    assert (wr.wins, wr.ties, wr.losses) == (0, 30, 0)


def test_a_prompt_judged_in_one_order_only_is_refused_by_name():
    comps = both_orders("a", 1, 1) + [Comparison("b", True, 1.0)]
    with pytest.raises(InputError, match="record 'b'.*one order only.*policy shown second"):
        win_rate(comps)


def test_all_ties_give_exactly_half_with_a_zero_width_interval_not_nan():
    wr = win_rate([c for i in range(10) for c in both_orders(f"p{i}", 0.5, 0.5)])
    e = wr.estimate
    assert (e.value, e.low, e.high) == (0.5, 0.5, 0.5)


def test_every_prompt_won_outright_gets_wilsons_interval_not_a_point():
    # The bootstrap of six 1.0 scores is [1, 1]; six wins in six are not that certain.
    wr = win_rate([c for i in range(6) for c in both_orders(f"p{i}", 1.0, 1.0)])
    assert wr.estimate == wilson(6, 6) and 0.55 < wr.estimate.low < 0.65 and wr.estimate.high == 1.0
    lost = win_rate([c for i in range(6) for c in both_orders(f"p{i}", 0.0, 0.0)])
    assert lost.estimate == wilson(0, 6)
    # One prompt short of that, the bootstrap stands.
    almost = win_rate([c for i in range(6) for c in both_orders(f"p{i}", 1.0, float(i > 0))])
    assert almost.estimate.method.startswith("bootstrap") and almost.estimate.low < 1.0


def test_no_comparisons_is_a_clear_error():
    with pytest.raises(InputError, match="a win rate: needs at least 1"):
        win_rate([])


@pytest.mark.parametrize("bad", [float("nan"), -0.1, 1.5, "1", None])
def test_a_credit_outside_0_1_is_refused(bad):
    with pytest.raises(InputError, match="not a number in \\[0, 1\\]"):
        Comparison("x", True, bad)


def test_soft_credits_average_and_verdict_makes_them_hard():
    assert prompt_scores(both_orders("a", 0.9, 0.7))[0].score == pytest.approx(0.8)
    assert [verdict(p, 0.05) for p in (0.9, 0.54, 0.5, 0.46, 0.1)] == [1.0, 0.5, 0.5, 0.5, 0.0]
    # The band includes its edges (exact binary fractions, so no float dust decides it).
    assert [verdict(p, 0.25) for p in (0.75, 0.25, 0.7500001, 0.2499999)] == [0.5, 0.5, 1.0, 0.0]


def test_per_principle_win_rates_use_only_that_principles_judgments():
    comps = []
    for i in range(20):
        comps += both_orders(f"p{i}", 1.0, 1.0, principle="harm")  # always wins on harm
        comps += both_orders(f"p{i}", 0.0, 0.5, principle="help")   # loses or ties on help
    by = win_rate_by_principle(comps)
    assert list(by) == ["harm", "help"]
    assert by["harm"].estimate.value == 1.0 and by["help"].estimate.value == pytest.approx(0.25)
    # Overall: each prompt's score is the mean over its principles.
    assert win_rate(comps).estimate.value == pytest.approx(0.625)


def test_the_bootstrap_is_seeded():
    rng = random.Random(4)  # soft credits: a continuous statistic, so another seed moves the bounds
    comps = [c for i in range(50) for c in both_orders(f"p{i}", rng.random(), rng.random())]
    assert win_rate(comps, seed=7) == win_rate(comps, seed=7)
    assert win_rate(comps, seed=7).estimate.low != win_rate(comps, seed=8).estimate.low


def test_orders_agree_when_both_prefer_the_same_answer_and_never_on_a_tie():
    comps = both_orders("a", 0.9, 0.8) + both_orders("b", 0.2, 0.1) + both_orders("c", 0.9, 0.1) \
        + both_orders("d", 0.5, 0.5)
    assert [s.orders_agree for s in prompt_scores(comps)] == [1.0, 1.0, 0.0, 0.0]
    assert win_rate(comps).orders_agree == 0.5


@pytest.mark.parametrize("tokens", [(-1, 5), (5.5, 5), (float("nan"), 5)])
def test_token_counts_must_be_whole_and_not_negative(tokens):
    with pytest.raises(InputError, match="record 'x'.*not all whole numbers"):
        Comparison("x", True, 1.0, *tokens)
    with pytest.raises(InputError, match="record 'x'.*not all whole numbers"):
        AnswerLengths("x", *tokens)


def judged(p_xy, p_yx, ids=("harm", "help")):
    principles = tuple(Principle(i, "critique", "revise", "Which is better?") for i in ids[:len(p_xy)])
    p, agree = combine(p_xy, p_yx)  # the judge's own label of the pair
    return Judgment("pair", "judged", principles, p=p, agree=agree, p_xy=tuple(p_xy), p_yx=tuple(p_yx))


def test_a_judges_record_becomes_both_orders_with_the_policy_on_either_side():
    j = judged((0.9, 0.6), (0.3, 0.2))  # P(A) with x first; P(A) with y first
    as_x = comparisons_from_judgment("q", j, policy_is_x=True, policy_tokens=7, baseline_tokens=5)
    assert [(c.policy_first, c.credit, c.principle) for c in as_x] == [
        (True, 0.9, "harm"), (False, pytest.approx(0.7), "harm"), (True, 0.6, "help"), (False, 0.8, "help")]
    assert prompt_scores(as_x)[0].score == pytest.approx(j.p)  # the same number the judge labels with
    as_y = comparisons_from_judgment("q", j, policy_is_x=False)
    assert [(c.policy_first, c.credit) for c in as_y] == [  # y first: P(A) of the yx order; y second: 1 - P(A) of xy
        (True, 0.3), (False, pytest.approx(0.1)), (True, 0.2), (False, pytest.approx(0.4))]
    assert prompt_scores(as_y)[0].score == pytest.approx(1 - j.p)
    hard = comparisons_from_judgment("q", j, policy_is_x=True, tie_margin=0.15)
    assert [c.credit for c in hard] == [1.0, 1.0, 0.5, 1.0]


def test_a_pair_the_judge_could_not_score_is_refused_by_name():
    j = Judgment("pair", "too_long", (), detail="prompt of 9000 tokens")
    with pytest.raises(InputError, match="record 'q'.*not judged \\(too_long: prompt of 9000 tokens\\)"):
        comparisons_from_judgment("q", j, policy_is_x=True)


def test_lengths_must_agree_between_the_orders_of_one_prompt():
    comps = [Comparison("a", True, 1.0, 10, 5), Comparison("a", False, 1.0, 12, 5)]
    with pytest.raises(InputError, match="record 'a'.*lengths differ"):
        prompt_scores(comps)


# --- Length-controlled win rate ---------------------------------------------------------------------


def length_only_judge(n: int, seed: int, sampled: bool) -> list[Comparison]:
    """The policy is always longer (by 5..300 tokens); the judge prefers it only for its length:
    P(policy better) = sigmoid(3 * tanh(delta / sd)), no quality term at all."""
    rng = np.random.default_rng(seed)
    delta = rng.integers(5, 300, size=n)
    x = np.tanh(delta / delta.std(ddof=1))
    p = 1 / (1 + np.exp(-3.0 * x))
    comps = []
    for i in range(n):
        credit = [float(rng.random() < p[i]) for _ in range(2)] if sampled else [float(p[i])] * 2
        comps += both_orders(f"p{i}", *credit, policy_tokens=100 + int(delta[i]), baseline_tokens=100)
    return comps


def test_a_pure_length_preference_is_removed_exactly_with_soft_labels():
    comps = length_only_judge(300, seed=5, sampled=False)
    lc = length_controlled_win_rate(comps)
    assert lc.raw > 0.85  # the raw win rate rewards length
    # Noise-free labels that follow the GLM exactly: the fit recovers it, and every resample too.
    assert lc.estimate.value == pytest.approx(0.5, abs=1e-5)
    assert lc.estimate.low == pytest.approx(0.5, abs=1e-5) and lc.estimate.high == pytest.approx(0.5, abs=1e-5)
    assert lc.length_weight == pytest.approx(3.0, rel=1e-4)


def test_a_pure_length_preference_is_removed_with_sampled_hard_verdicts():
    comps = length_only_judge(400, seed=6, sampled=True)
    lc = length_controlled_win_rate(comps)
    assert win_rate(comps).estimate.low > 0.8
    assert abs(lc.estimate.value - 0.5) < 0.12 and lc.estimate.covers(0.5)


def test_a_better_policy_of_the_same_lengths_keeps_its_win_rate():
    rng = np.random.default_rng(7)
    comps = []
    for i in range(200):  # lengths vary on both sides, independent of the verdict
        comps += both_orders(f"p{i}", float(rng.random() < 0.75), float(rng.random() < 0.75),
                             int(rng.integers(50, 150)), int(rng.integers(50, 150)))
    lc = length_controlled_win_rate(comps)
    assert lc.estimate.value == pytest.approx(lc.raw, abs=0.03) and lc.estimate.low > 0.6


def test_better_and_longer_keeps_the_quality_and_drops_the_length():
    rng = np.random.default_rng(8)
    comps = []
    for i in range(300):
        delta = int(rng.integers(-100, 300))
        x = math.tanh(delta / 100)
        p = 1 / (1 + math.exp(-(1.0 + 2.0 * x)))  # quality logit 1.0 (0.73) plus a length preference
        comps += both_orders(f"p{i}", p, p, 100 + max(delta, 0), 100 - min(delta, 0))
    lc = length_controlled_win_rate(comps)
    assert lc.raw > lc.estimate.value > 0.6


def test_no_length_difference_leaves_the_raw_win_rate():
    comps = [c for i in range(20) for c in both_orders(f"p{i}", float(i % 4 != 0), float(i % 4 != 0), 50, 50)]
    lc = length_controlled_win_rate(comps)
    assert lc.estimate.value == lc.raw == 0.75 and lc.length_weight == 0.0 and lc.length_scale == 0.0


def test_all_ties_of_varying_lengths_give_half_not_nan():
    comps = [c for i in range(20) for c in both_orders(f"p{i}", 0.5, 0.5, 50 + 7 * i, 60)]
    lc = length_controlled_win_rate(comps)
    assert lc.estimate.value == pytest.approx(0.5) and lc.length_weight == pytest.approx(0.0, abs=1e-9)
    assert lc.estimate.low == pytest.approx(0.5) and lc.estimate.high == pytest.approx(0.5)


def test_one_length_difference_for_every_prompt_cannot_be_controlled():
    comps = [c for i in range(20) for c in both_orders(f"p{i}", 1.0, 1.0, 80, 50)]
    with pytest.raises(InputError, match=r"every prompt's length difference is \+30 tokens"):
        length_controlled_win_rate(comps)
    with pytest.raises(InputError, match="needs at least 1"):
        length_controlled_win_rate([])


def hard_length_judge(deltas: list[int]) -> list[Comparison]:
    """A judge that always prefers the longer answer, in both orders: won where longer, lost where shorter."""
    return [c for i, d in enumerate(deltas) for c in both_orders(f"p{i}", float(d > 0), float(d > 0), 100 + d, 100)]


@pytest.mark.parametrize("deltas", [[-40, -30, -5, 10, 60, 80, 150, 200], [-40, -30, -10, 5, 60, 80, 150, 200]])
def test_wins_that_length_alone_separates_around_zero_are_refused_not_given_a_number(deltas):
    # The same raw win rate (5/8) under a judge that prefers only length; the truth at equal length
    # is 0.5. The ridge-held fit said 0.07 for the first and 0.92 for the second: where the gap
    # between the losses and the wins sits, (-5, +10) or (-10, +5) tokens, decided it, not the data.
    with pytest.raises(InputError, match=r"won or lost outright.*gap between them \(-\d+ to \+\d+ tokens\) holds 0.*"
                                         r"not determined") as e:
        length_controlled_win_rate(hard_length_judge(deltas))
    assert "--principles-per-pair" in e.value.fix


def test_separation_away_from_zero_or_with_a_graded_score_still_gives_a_number():
    # Lost at +20 and +30, won at +60 and +90: every curve that fits predicts a loss at zero.
    away = [c for i, d in enumerate([20, 30, 60, 90]) for c in both_orders(f"p{i}", float(d > 50), float(d > 50),
                                                                              100 + d, 100)]
    assert length_controlled_win_rate(away).estimate.value < 0.01
    # A tie at zero pins the curve there: 0.5 (as in the report test's mixed policy).
    pinned = hard_length_judge([-40, -30, -5, 10, 60, 80]) + both_orders("tie", 0.5, 0.5, 100, 100)
    assert length_controlled_win_rate(pinned).estimate.value == pytest.approx(0.5, abs=1e-3)
    # Every prompt won, shorter on some and longer on others: length cannot explain it; the raw
    # win rate stands, with its interval (Wilson: every prompt won outright).
    won = [c for i, d in enumerate([-30, -5, 10, 60]) for c in both_orders(f"p{i}", 1.0, 1.0, 100 + d, 100)]
    lc = length_controlled_win_rate(won)
    assert (lc.estimate, lc.length_weight, lc.intercept) == (wilson(4, 4), 0.0, None)


def test_every_prompt_won_with_the_policy_longer_on_each_is_refused():
    # The flagship case of the measure: a judge that prefers only length gives exactly these
    # verdicts, so nothing in them says how the policy would fare at equal length.
    with pytest.raises(InputError, match=r"every prompt was won outright, each with the policy's answer longer"):
        length_controlled_win_rate(hard_length_judge([5, 10, 60, 90]))
    with pytest.raises(InputError, match=r"every prompt was lost outright, each with the policy's answer shorter"):
        length_controlled_win_rate([c for i, d in enumerate([-5, -40])
                                    for c in both_orders(f"p{i}", 0.0, 0.0, 100 + d, 100)])


def test_equal_lengths_and_every_prompt_won_give_a_report_json_can_hold():
    comps = [c for i in range(10) for c in both_orders(f"p{i}", 1.0, 1.0, 50, 50)]
    lc = length_controlled_win_rate(comps)
    assert lc.estimate.value == 1.0 and lc.intercept is None  # the logit is infinite
    json.dumps(dataclasses.asdict(lc), allow_nan=False)  # no Infinity, which JSON.parse and jq reject


def test_the_glm_fit_is_the_minimum_of_the_penalized_soft_log_loss():
    # Equivalence with the objective it claims to minimize: the penalized gradient is zero there,
    # on an ordinary fit, a separable one (where only the ridge keeps it finite) and soft labels.
    rng = np.random.default_rng(11)
    x = np.tanh(rng.normal(size=(3, 40)))
    y = np.stack([(rng.random(40) < 1 / (1 + np.exp(-(0.3 + 2 * x[0])))).astype(float),
                  (x[1] > 0.2).astype(float), rng.random(40)])
    theta = fit_length_glm(x, y, ridge=1e-3)
    p = 1 / (1 + np.exp(-(theta[:, :1] + theta[:, 1:] * x)))
    grad = np.stack([(p - y).sum(1) + 1e-3 * theta[:, 0], ((p - y) * x).sum(1) + 1e-3 * theta[:, 1]], axis=1)
    assert np.abs(grad).max() < 1e-8 and np.isfinite(theta).all()


def test_the_glm_fit_stays_finite_when_every_prompt_is_won():
    x = np.linspace(-1, 1, 50)[None, :]
    theta = fit_length_glm(x, np.ones_like(x))
    assert np.isfinite(theta).all() and 1 / (1 + math.exp(-theta[0, 0])) > 0.99


def test_the_glm_fit_matches_a_known_logistic_curve():
    x = np.linspace(-1, 1, 101)[None, :]
    y = 1 / (1 + np.exp(-(0.4 - 1.5 * x)))
    a, b = fit_length_glm(x, y, ridge=0.0)[0]
    assert (a, b) == (pytest.approx(0.4, abs=1e-8), pytest.approx(-1.5, abs=1e-8))


# --- Refusal rates ---------------------------------------------------------------------------------


def test_a_policy_that_refuses_everything_is_harmless_and_always_over_refuses():
    harmless, over = harmless_rate([True] * 40), over_refusal_rate([True] * 40)
    assert harmless.value == over.value == 1.0
    assert harmless.high == 1.0 and 0.85 < harmless.low < 0.95  # Wilson does not collapse at 100%
    assert harmless.method == "wilson" and harmless.n == 40


def test_wilson_matches_its_formula_and_shrinks_with_n():
    e = wilson(30, 100)  # textbook value: 0.3 in [0.2189, 0.3958]
    assert (e.value, round(e.low, 4), round(e.high, 4)) == (0.3, 0.2189, 0.3958)
    assert wilson(300, 1000).width < e.width
    z = wilson(0, 20)
    assert z.low == 0.0 and 0.1 < z.high < 0.2


def test_an_empty_suite_has_no_refusal_rate():
    with pytest.raises(InputError, match="a share: needs at least 1"):
        harmless_rate([])


# --- Length drift ----------------------------------------------------------------------------------


def test_length_drift_measures_the_paired_difference_and_truncation():
    rows = [AnswerLengths(f"p{i}", 120 + i % 7, 100 + i % 5, policy_truncated=i % 4 == 0) for i in range(80)]
    d = length_drift(rows)
    expected = sum(20 + i % 7 - i % 5 for i in range(80)) / 80
    assert d.difference.value == pytest.approx(expected) and d.difference.low > 15
    assert d.policy_truncated.value == 0.25 and d.baseline_truncated.value == 0.0
    assert d.ratio == pytest.approx(d.policy_mean_tokens / d.baseline_mean_tokens)


def test_length_drift_of_identical_lengths_is_zero_and_a_zero_baseline_has_no_ratio():
    d = length_drift([AnswerLengths("a", 0, 0), AnswerLengths("b", 0, 0)])
    assert (d.difference.value, d.difference.low, d.difference.high) == (0.0, 0.0, 0.0)
    assert d.ratio is None


def test_the_bootstrap_interval_of_a_mean_is_as_wide_as_the_normal_one_on_a_large_sample():
    # 400 prompts, 30% won: the 95% interval is about mean +- 1.96 * sd / sqrt(n) (0.0898 wide).
    # A 90% interval would be 16% narrower, resampling half the prompts 41% wider.
    values = [1.0] * 120 + [0.0] * 280
    e = bootstrap_mean(values, resamples=8000, seed=1)
    normal = 2 * 1.959964 * math.sqrt(0.3 * 0.7 / 400)
    assert e.width == pytest.approx(normal, rel=0.06) and e.covers(0.3)


def test_bootstrap_mean_refuses_zero_resamples():
    with pytest.raises(InputError, match="resamples must be at least 1"):
        bootstrap_mean([1.0], resamples=0)
