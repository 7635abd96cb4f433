"""PPO's arithmetic as pure functions: no models, no I/O, no global state.

Shapes: every per-token tensor is [batch, response_length] over the *response* tokens only.
`mask` is 1 on real response tokens and 0 on the right padding after them; each row is a run of
ones followed by zeros (a response never has holes). Every function leaves padded positions at
0 in what it returns, so padding can never leak into a sum or a mean.

Sources: Ziegler et al. 2019 (arXiv 1909.08593, the adaptive KL controller); Schulman et al.
2016 (arXiv 1506.02438, GAE); Huang et al., "The N+ Implementation Details of RLHF with PPO"
(arXiv 2403.17031) for the whitening, the EOS trick and the clipped value loss (and
`scale_rewards` for where cai departs from their reward whitening, and why). See
docs/method.md §4 and docs/ppo.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

# ---------------------------------------------------------------------------------------------
# Masked statistics
# ---------------------------------------------------------------------------------------------


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    return (x * mask).sum() if dim is None else (x * mask).sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over the positions where mask is 1 (over all of them, or along `dim`)."""
    mask = mask.to(x.dtype)
    return masked_sum(x, mask, dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of x over the masked positions (Bessel-corrected by default, as in the N+ code)."""
    mask = mask.to(x.dtype)
    n = mask.sum()
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        if n < 2:
            raise ValueError(f"the unbiased variance needs at least 2 unmasked values, got {int(n)}")
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked positions (advantage whitening)."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask.to(x.dtype)


REWARD_SCALINGS = ("std", "none")
"""The choices of `scale_rewards` (and of PPOConfig.reward_scaling)."""


def scale_rewards(rewards: torch.Tensor, mask: torch.Tensor, how: str = "std", eps: float = 1e-8) -> torch.Tensor:
    """Reward scaling before GAE: "std" divides every per-token reward by their standard
    deviation over the batch's response tokens, without shifting them; "none" keeps them.

    Why no shift. OpenAI's lm-human-preferences (train_policy.py) and the N+ code
    (summarize_from_feedback_details) call `whiten(rewards, shift_mean=False)`, which computes
    (x - mean) / std + mean: it adds mean * (1 - 1/std) to *every* token's reward. There every
    response has the same length (a fixed response_length, whitened without a mask), so that is
    one constant added to every response's return and changes nothing. cai's responses end at
    EOS with different lengths, and a per-token constant then becomes a bonus (or penalty)
    proportional to length: with gamma = 1 four responses scored 0.8 returned 2.29 at 4 tokens
    and -0.69 at 16. (TRL's PPOTrainer applies the same formula under a padding mask and so
    has the same defect.) Full whitening, (x - mean) / std, shifts every token too. So cai only
    divides by the std: every response's return is its unscaled return times one positive
    factor, which keeps the order of the responses and the sign of every reward."""
    return rewards * reward_scale(rewards, mask, how, eps) * mask.to(rewards.dtype)


def reward_scale(rewards: torch.Tensor, mask: torch.Tensor, how: str = "std", eps: float = 1e-8) -> torch.Tensor:
    """The one factor `scale_rewards` multiplies a batch's rewards by: 1 / their std ("std") or 1.
    The value model's predictions are multiplied by the same factor before GAE and the value
    loss (cai.ppo.compute_advantages), so the model itself stays in the reward model's units."""
    if how == "none":
        return torch.ones((), dtype=rewards.dtype, device=rewards.device)
    if how != "std":
        raise ValueError(f"reward scaling {how!r} is not one of {REWARD_SCALINGS}")
    return torch.rsqrt(masked_var(rewards, mask) + eps)


# ---------------------------------------------------------------------------------------------
# Log-probabilities and entropy
# ---------------------------------------------------------------------------------------------


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(token) under softmax(logits / temperature): [B, T, V], [B, T] -> [B, T] (fp32).

    PPO's ratio compares the policy that *sampled* the tokens; sampling at T means that policy
    is softmax(logits / T), so the log-probs must be taken at the same T (N+ detail)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 for log-probs, got {temperature}")
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of softmax(logits / T) at each position: logsumexp(z) - sum softmax(z) * z."""
    z = logits.float() / temperature
    return torch.logsumexp(z, dim=-1) - (torch.softmax(z, dim=-1) * z).sum(-1)


# ---------------------------------------------------------------------------------------------
# Rewards: the score at the last token, the EOS trick, the per-token KL penalty
# ---------------------------------------------------------------------------------------------


def last_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row: [B, T] -> [B]. A row needs at least one."""
    lengths = mask.long().sum(-1)
    if bool((lengths == 0).any()):
        raise ValueError("every response needs at least one token (a row of the mask is all zeros)")
    return lengths - 1


def penalize_missing_eos(scores: torch.Tensor, ended_with_eos: torch.Tensor,
                         penalty: float | None) -> torch.Tensor:
    """The EOS trick: a response cut off by the token budget gets the fixed `penalty` instead of
    its score (a reward model scores a truncated answer as if it were complete, which rewards
    rambling). penalty None keeps every score."""
    if penalty is None:
        return scores
    return torch.where(ended_with_eos, scores, torch.full_like(scores, penalty))


@dataclass(frozen=True)
class Rewards:
    rewards: torch.Tensor
    """[B, T] per-token reward: -kl_coef * kl everywhere, plus the score at the last token."""
    kl: torch.Tensor
    """[B, T] per-token log p_policy - log p_ref (the k1 estimator; its sum over a response is
    an unbiased estimate of the sequence KL)."""
    non_score_reward: torch.Tensor
    """[B, T] the KL part alone: -kl_coef * kl."""


def per_token_rewards(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, scores: torch.Tensor,
                      mask: torch.Tensor, kl_coef: float) -> Rewards:
    """r_t = -beta * (log pi(a_t) - log pi_ref(a_t)) for every token, + score at the last one
    (method.md §4; Ziegler et al. 2019)."""
    m = mask.to(logprobs.dtype)
    kl = (logprobs - ref_logprobs) * m
    non_score = -kl_coef * kl
    rewards = non_score.clone()
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last_index(mask)] += scores.to(rewards.dtype)
    return Rewards(rewards=rewards * m, kl=kl, non_score_reward=non_score)


# ---------------------------------------------------------------------------------------------
# Advantages: GAE
# ---------------------------------------------------------------------------------------------


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation, backwards over time, batched over rows.

        delta_t = r_t + gamma * V_{t+1} - V_t        (V past the last real token is 0: terminal)
        A_t     = delta_t + gamma * lam * A_{t+1}
        returns = A + V                               (the value target)

    Returns (advantages, returns), both 0 on padding."""
    m = mask.to(values.dtype)
    rewards, values = rewards * m, values * m
    advantages = torch.zeros_like(values)
    next_advantage = torch.zeros_like(values[:, 0])
    length = values.shape[1]
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(values[:, t])
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * m[:, t]
        advantages[:, t] = next_advantage
    return advantages, (advantages + values) * m


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyLoss:
    pg_loss: torch.Tensor
    """max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)), masked mean (scalar, with grad)."""
    clipfrac: torch.Tensor
    """Fraction of tokens where the clipped term was the larger (the update was clipped)."""
    approx_kl: torch.Tensor
    """0.5 * mean (log ratio)^2: how far this minibatch moved the policy (k2 estimator)."""
    ratio: torch.Tensor
    """Mean probability ratio pi_new / pi_old over the tokens (1 at the first minibatch)."""


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, cliprange: float = 0.2) -> PolicyLoss:
    """The clipped surrogate objective of PPO (Schulman et al. 2017, eq. 7), negated."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    pg_losses = -advantages * ratio
    pg_losses_clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    pg_loss = masked_mean(torch.maximum(pg_losses, pg_losses_clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((pg_losses_clipped > pg_losses).to(logprobs.dtype), mask)
        approx_kl = 0.5 * masked_mean(log_ratio**2, mask)
        mean_ratio = masked_mean(ratio, mask)
    return PolicyLoss(pg_loss, clipfrac, approx_kl, mean_ratio)


@dataclass(frozen=True)
class ValueLoss:
    vf_loss: torch.Tensor
    """0.5 * max((V - R)^2, (V_clipped - R)^2), masked mean (scalar, with grad)."""
    vf_clipfrac: torch.Tensor
    """Fraction of tokens where the clipped error was the larger."""


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               cliprange_value: float = 0.2) -> ValueLoss:
    """Clipped value loss: the new value may move at most cliprange_value from the rollout's
    value before the error stops shrinking (N+ detail; as in OpenAI's lm-human-preferences)."""
    values_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    vf_losses = (values - returns) ** 2
    vf_losses_clipped = (values_clipped - returns) ** 2
    vf_loss = 0.5 * masked_mean(torch.maximum(vf_losses, vf_losses_clipped), mask)
    with torch.no_grad():
        vf_clipfrac = masked_mean((vf_losses_clipped > vf_losses).to(values.dtype), mask)
    return ValueLoss(vf_loss, vf_clipfrac)


# ---------------------------------------------------------------------------------------------
# KL coefficient: fixed, or Ziegler et al.'s adaptive controller
# ---------------------------------------------------------------------------------------------


class FixedKLController:
    """beta stays where it started."""

    def __init__(self, value: float):
        self.value = float(value)

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "fixed", "value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Proportional control of beta toward a target KL (Ziegler et al. 2019, §2.2):

        e = clip(KL / target - 1, -0.2, 0.2)
        beta <- beta * (1 + e * n_steps / horizon)

    where KL is the mean per-response KL of the batch and n_steps the responses in it. The
    defaults of method.md §4 are init 0.15, target 6 nats, horizon 10000 responses."""

    def __init__(self, init: float, target: float, horizon: int):
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be > 0, got {target} and {horizon}")
        self.value = float(init)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "adaptive", "value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])
