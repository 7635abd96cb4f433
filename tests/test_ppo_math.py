"""PPO's pure functions against plain-loop reference implementations (Python floats, one row
and one token at a time, padding skipped by hand). Every case has right padding holding
garbage, so a function that lets padding leak fails."""

from __future__ import annotations

import math

import pytest
import torch

from cai import ppo_math as pm

GARBAGE = 1e3  # what padded positions hold in the inputs: any leak shows up at once


def batch(rows: list[list[float]], width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad rows of different lengths with GARBAGE; returns (values, mask)."""
    width = width or max(len(r) for r in rows)
    x = torch.full((len(rows), width), GARBAGE, dtype=torch.float64)
    m = torch.zeros((len(rows), width), dtype=torch.float64)
    for i, r in enumerate(rows):
        x[i, :len(r)] = torch.tensor(r, dtype=torch.float64)
        m[i, :len(r)] = 1
    return x, m


def flat(rows: list[list[float]]) -> list[float]:
    return [v for r in rows for v in r]


def ref_mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def ref_var(xs: list[float]) -> float:
    mu = ref_mean(xs)
    return sum((v - mu) ** 2 for v in xs) / (len(xs) - 1)


# Ragged rows: one full row, shorter ones, a one-token row.
CASES = [
    [[1.0, 2.0, 3.0], [4.0, 5.0]],
    [[0.5], [-1.0, 2.0, -3.0, 4.0], [0.0, 0.0]],
    [[2.0, 2.0], [2.0, 2.5, 2.0]],
    [[-0.3, 0.7, 1.1, -2.0, 0.4]],
]


@pytest.mark.parametrize("rows", CASES)
def test_masked_mean_and_var_match_plain_loops(rows):
    x, m = batch(rows, width=6)
    assert pm.masked_mean(x, m).item() == pytest.approx(ref_mean(flat(rows)))
    assert pm.masked_var(x, m).item() == pytest.approx(ref_var(flat(rows)))
    n = len(flat(rows))
    assert pm.masked_var(x, m, unbiased=False).item() == pytest.approx(ref_var(flat(rows)) * (n - 1) / n)
    per_row = pm.masked_mean(x, m, dim=1)
    assert per_row.tolist() == pytest.approx([ref_mean(r) for r in rows])


@pytest.mark.parametrize("rows", CASES)
def test_masked_whiten_matches_plain_loop(rows):
    x, m = batch(rows, width=7)
    got = pm.masked_whiten(x, m)
    mu, sd = ref_mean(flat(rows)), math.sqrt(ref_var(flat(rows)) + 1e-8)
    for i, r in enumerate(rows):
        assert got[i, :len(r)].tolist() == pytest.approx([(v - mu) / sd for v in r])
        assert got[i, len(r):].abs().sum() == 0  # padding stays 0
    assert pm.masked_mean(got, m).item() == pytest.approx(0.0, abs=1e-9)
    assert pm.masked_var(got, m).item() == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("rows", CASES)
def test_scale_rewards_divides_by_the_std_without_shifting(rows):
    x, m = batch(rows, width=7)
    sd = math.sqrt(ref_var(flat(rows)) + 1e-8)
    got = pm.scale_rewards(x, m, "std")
    unscaled = pm.scale_rewards(x, m, "none")
    for i, r in enumerate(rows):
        assert got[i, :len(r)].tolist() == pytest.approx([v / sd for v in r])
        assert unscaled[i, :len(r)].tolist() == pytest.approx(r)
        assert got[i, len(r):].abs().sum() == 0 and unscaled[i, len(r):].abs().sum() == 0
    with pytest.raises(ValueError, match="reward scaling 'whiten' is not one of"):
        pm.scale_rewards(x, m, "whiten")


def monte_carlo_returns(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each response's return from its first token with gamma = 1 (GAE with lambda = 1 gives it
    whatever the values are; random values prove that)."""
    values = torch.randn(rewards.shape, dtype=rewards.dtype, generator=torch.Generator().manual_seed(0))
    _, returns = pm.gae(rewards, values, mask, gamma=1.0, lam=1.0)
    return returns[:, 0]


def test_equal_scores_at_different_lengths_give_equal_returns():
    """The issue's case: four responses all scored 0.8, of 4 and 16 tokens, no KL penalty. The
    old scaling, (x - mean) / std + mean, returned 2.29 and -0.69: a length penalty."""
    lengths = [4, 4, 16, 16]
    logprobs, mask = batch([[-1.0] * n for n in lengths], width=20)
    rewards = pm.per_token_rewards(logprobs, logprobs, torch.full((4,), 0.8, dtype=torch.float64), mask,
                                   kl_coef=0.0).rewards
    returns = monte_carlo_returns(pm.scale_rewards(rewards, mask, "std"), mask)
    assert returns.tolist() == pytest.approx([returns[0].item()] * 4, rel=1e-9)
    assert returns[0].item() > 0  # a positive score still has a positive return


def test_scaled_returns_are_the_unscaled_returns_times_one_factor():
    """With the KL penalty on and ragged lengths: scaling multiplies every response's return by
    the same positive factor, so it never reorders responses and never rewards length."""
    gen = torch.Generator().manual_seed(1)
    lengths = [2, 5, 9, 16, 3, 12]
    lp_rows = [(-torch.rand(n, generator=gen, dtype=torch.float64) * 3).tolist() for n in lengths]
    ref_rows = [(-torch.rand(n, generator=gen, dtype=torch.float64) * 3).tolist() for n in lengths]
    logprobs, mask = batch(lp_rows, width=18)
    ref_logprobs, _ = batch(ref_rows, width=18)
    scores = torch.tensor([0.8, 0.8, 0.8, -0.5, 1.5, -0.5], dtype=torch.float64)
    rewards = pm.per_token_rewards(logprobs, ref_logprobs, scores, mask, kl_coef=0.1).rewards
    unscaled = monte_carlo_returns(pm.scale_rewards(rewards, mask, "none"), mask)
    scaled = monte_carlo_returns(pm.scale_rewards(rewards, mask, "std"), mask)
    ratio = scaled / unscaled
    assert ratio.min().item() > 0
    assert ratio.tolist() == pytest.approx([ratio[0].item()] * len(lengths), rel=1e-9)
    want = [s - 0.1 * (sum(a) - sum(b)) for s, a, b in zip(scores.tolist(), lp_rows, ref_rows, strict=True)]
    assert unscaled.tolist() == pytest.approx(want)


def test_masked_var_needs_two_values():
    x, m = batch([[1.0]])
    with pytest.raises(ValueError, match="at least 2"):
        pm.masked_var(x, m)


def ref_gae(rewards: list[float], values: list[float], gamma: float, lam: float) -> tuple[list[float], list[float]]:
    """One response, the textbook recursion: the value after the last token is 0 (terminal)."""
    n = len(rewards)
    adv = [0.0] * n
    last = 0.0
    for t in reversed(range(n)):
        next_value = values[t + 1] if t + 1 < n else 0.0
        delta = rewards[t] + gamma * next_value - values[t]
        last = delta + gamma * lam * last
        adv[t] = last
    return adv, [a + v for a, v in zip(adv, values, strict=True)]


GAE_CASES = [
    # (rewards, values, gamma, lam)
    ([[0.0, 0.0, 1.0], [0.0, 2.0]], [[0.1, 0.2, 0.3], [0.5, -0.5]], 1.0, 0.95),
    ([[-0.1, 0.05, -0.02, 0.7], [1.0]], [[0.0, 0.3, -0.2, 0.4], [0.9]], 1.0, 0.95),
    ([[1.0, 1.0, 1.0], [0.0, 0.0]], [[0.0, 0.0, 0.0], [1.0, 1.0]], 0.9, 0.5),
    ([[0.2, -0.4, 0.6, -0.8, 1.0]], [[1.0, -1.0, 0.5, -0.5, 0.0]], 0.99, 1.0),
    ([[0.3, 0.3], [0.1, 0.2, 0.3]], [[0.2, 0.1], [0.0, 0.0, 0.0]], 1.0, 0.0),  # lambda 0: one-step TD
]


@pytest.mark.parametrize("rewards,values,gamma,lam", GAE_CASES)
def test_gae_matches_plain_loop(rewards, values, gamma, lam):
    r, m = batch(rewards, width=6)
    v, _ = batch(values, width=6)
    adv, ret = pm.gae(r, v, m, gamma, lam)
    for i in range(len(rewards)):
        want_adv, want_ret = ref_gae(rewards[i], values[i], gamma, lam)
        n = len(rewards[i])
        assert adv[i, :n].tolist() == pytest.approx(want_adv)
        assert ret[i, :n].tolist() == pytest.approx(want_ret)
        assert adv[i, n:].abs().sum() == 0 and ret[i, n:].abs().sum() == 0


def test_gae_with_gamma_and_lambda_one_is_reward_to_go_minus_value():
    r, m = batch([[0.1, 0.2, 0.3, 0.4]])
    v, _ = batch([[1.0, 2.0, 3.0, 4.0]])
    adv, ret = pm.gae(r, v, m, 1.0, 1.0)
    assert ret[0].tolist() == pytest.approx([1.0, 0.9, 0.7, 0.4])  # Monte-Carlo returns
    assert adv[0].tolist() == pytest.approx([0.0, -1.1, -2.3, -3.6])


def ref_policy_loss(new, old, adv, eps):
    losses, clipped, sq = [], [], []
    for n, o, a in zip(new, old, adv, strict=True):
        ratio = math.exp(n - o)
        l1, l2 = -a * ratio, -a * min(max(ratio, 1 - eps), 1 + eps)
        losses.append(max(l1, l2))
        clipped.append(1.0 if l2 > l1 else 0.0)
        sq.append((n - o) ** 2)
    return ref_mean(losses), ref_mean(clipped), 0.5 * ref_mean(sq)


POLICY_CASES = [
    # new logprobs, old logprobs, advantages, cliprange
    ([[-1.0, -2.0], [-0.5, -0.1, -3.0]], [[-1.1, -1.5], [-0.5, -0.4, -2.0]], [[1.0, -1.0], [0.5, 2.0, -0.3]], 0.2),
    ([[-0.2, -0.2, -0.2]], [[-0.2, -0.2, -0.2]], [[1.0, -2.0, 0.5]], 0.2),  # ratio 1: plain -A
    ([[-3.0], [-0.01, -5.0]], [[-1.0], [-2.0, -1.0]], [[0.7], [1.5, 1.5]], 0.1),  # far outside the clip
]


@pytest.mark.parametrize("new,old,adv,eps", POLICY_CASES)
def test_policy_loss_matches_plain_loop(new, old, adv, eps):
    n, m = batch(new, width=4)
    o, _ = batch(old, width=4)
    a, _ = batch(adv, width=4)
    n.requires_grad_(True)
    got = pm.policy_loss(n, o, a, m, eps)
    want_loss, want_clip, want_kl = ref_policy_loss(flat(new), flat(old), flat(adv), eps)
    assert got.pg_loss.item() == pytest.approx(want_loss)
    assert got.clipfrac.item() == pytest.approx(want_clip)
    assert got.approx_kl.item() == pytest.approx(want_kl)
    got.pg_loss.backward()
    assert n.grad[m == 0].abs().sum() == 0  # no gradient reaches padding


def test_policy_loss_gradient_vanishes_where_clipped():
    # ratio e^0.5 > 1.2 with a positive advantage: the clipped term is constant, no gradient.
    new = torch.tensor([[0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[-0.5, 0.0]], dtype=torch.float64)
    adv = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    pm.policy_loss(new, old, adv, torch.ones_like(adv), 0.2).pg_loss.backward()
    assert new.grad[0, 0] == 0 and new.grad[0, 1] != 0


def ref_value_loss(vpred, old, ret, eps):
    losses, clipped = [], []
    for v, o, r in zip(vpred, old, ret, strict=True):
        vc = o + min(max(v - o, -eps), eps)
        l1, l2 = (v - r) ** 2, (vc - r) ** 2
        losses.append(0.5 * max(l1, l2))
        clipped.append(1.0 if l2 > l1 else 0.0)
    return ref_mean(losses), ref_mean(clipped)


VALUE_CASES = [
    ([[0.5, 1.0], [0.0, -0.4, 2.0]], [[0.4, 0.2], [0.1, 0.0, 2.0]], [[1.0, 1.0], [0.3, -1.0, 1.0]], 0.2),
    ([[3.0]], [[0.0]], [[1.0]], 0.2),  # moved past the target and out of the clip range
    ([[0.1, 0.1, 0.1]], [[0.1, 0.1, 0.1]], [[0.1, 0.5, -0.5]], 0.5),
]


@pytest.mark.parametrize("vpred,old,ret,eps", VALUE_CASES)
def test_value_loss_matches_plain_loop(vpred, old, ret, eps):
    v, m = batch(vpred, width=4)
    o, _ = batch(old, width=4)
    r, _ = batch(ret, width=4)
    got = pm.value_loss(v, o, r, m, eps)
    want_loss, want_clip = ref_value_loss(flat(vpred), flat(old), flat(ret), eps)
    assert got.vf_loss.item() == pytest.approx(want_loss)
    assert got.vf_clipfrac.item() == pytest.approx(want_clip)


@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.0])
def test_entropy_and_logprobs_match_definitions(temperature):
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 11, dtype=torch.float64) * 3
    tokens = torch.randint(0, 11, (2, 3))
    ent = pm.entropy_from_logits(logits, temperature)
    lp = pm.logprobs_from_logits(logits, tokens, temperature)
    for b in range(2):
        for t in range(3):
            z = [v / temperature for v in logits[b, t].tolist()]
            log_z = math.log(sum(math.exp(v) for v in z))
            probs = [math.exp(v - log_z) for v in z]
            assert ent[b, t].item() == pytest.approx(-sum(p * math.log(p) for p in probs), rel=1e-5)
            assert lp[b, t].item() == pytest.approx(z[tokens[b, t]] - log_z, rel=1e-5)


def test_logprobs_need_a_positive_temperature():
    with pytest.raises(ValueError, match="temperature must be > 0"):
        pm.logprobs_from_logits(torch.zeros(1, 1, 3), torch.zeros(1, 1, dtype=torch.long), 0.0)


@pytest.mark.parametrize("rows_lp,rows_ref,scores,beta", [
    ([[-1.0, -2.0, -0.5], [-0.3]], [[-1.2, -1.0, -0.5], [-0.1]], [2.0, -1.0], 0.05),
    ([[-0.1, -0.2]], [[-0.1, -0.2]], [0.7], 0.1),  # same policy: only the score
    ([[-2.0, -2.0], [-1.0, -1.0, -1.0, -1.0]], [[-1.0, -3.0], [-2.0, -2.0, -2.0, -2.0]], [0.0, 1.5], 1.0),
])
def test_per_token_rewards_match_plain_loop(rows_lp, rows_ref, scores, beta):
    lp, m = batch(rows_lp, width=5)
    ref, _ = batch(rows_ref, width=5)
    got = pm.per_token_rewards(lp, ref, torch.tensor(scores, dtype=torch.float64), m, beta)
    for i, (a, b) in enumerate(zip(rows_lp, rows_ref, strict=True)):
        want = [-beta * (x - y) for x, y in zip(a, b, strict=True)]
        want[-1] += scores[i]  # the score lands on the last real token, not on padding
        assert got.rewards[i, :len(a)].tolist() == pytest.approx(want)
        assert got.kl[i, :len(a)].tolist() == pytest.approx([x - y for x, y in zip(a, b, strict=True)])
        assert got.rewards[i, len(a):].abs().sum() == 0 and got.kl[i, len(a):].abs().sum() == 0


def test_penalize_missing_eos():
    scores = torch.tensor([0.5, 1.5, -0.2])
    ended = torch.tensor([True, False, True])
    assert pm.penalize_missing_eos(scores, ended, -1.0).tolist() == pytest.approx([0.5, -1.0, -0.2])
    assert pm.penalize_missing_eos(scores, ended, None).tolist() == pytest.approx([0.5, 1.5, -0.2])


def test_last_index_refuses_an_empty_response():
    assert pm.last_index(torch.tensor([[1, 1, 0], [1, 0, 0]])).tolist() == [1, 0]
    with pytest.raises(ValueError, match="at least one token"):
        pm.last_index(torch.tensor([[1, 0], [0, 0]]))


@pytest.mark.parametrize("kls,n,want", [
    # (KL per step, responses per step): beta *= 1 + clip(kl/target - 1, -0.2, 0.2) * n / horizon
    ([6.0, 6.0], 64, [0.15, 0.15]),  # on target: no change
    ([12.0], 1000, [0.15 * (1 + 0.2 * 0.1)]),  # far above: error clipped at +0.2
    ([0.0], 1000, [0.15 * (1 - 0.2 * 0.1)]),  # far below: clipped at -0.2
    ([6.6, 5.4], 500, [0.15 * (1 + 0.1 * 0.05), 0.15 * (1 + 0.1 * 0.05) * (1 - 0.1 * 0.05)]),
])
def test_adaptive_kl_controller_matches_formula(kls, n, want):
    ctl = pm.AdaptiveKLController(0.15, 6.0, 10000)
    got = []
    for kl in kls:
        ctl.update(kl, n)
        got.append(ctl.value)
    assert got == pytest.approx(want)
    restored = pm.AdaptiveKLController(0.15, 6.0, 10000)
    restored.load_state_dict(ctl.state_dict())
    assert restored.value == ctl.value


def test_fixed_kl_controller_never_moves():
    ctl = pm.FixedKLController(0.05)
    ctl.update(100.0, 10**6)
    assert ctl.value == 0.05 and ctl.state_dict() == {"kind": "fixed", "value": 0.05}
