"""The guard rails of `cai ppo`: what stops a run (a reward that is not finite, a KL to the
reference past max_kl, a loss that turned NaN) and what warns (the response length drifting far
from where it started, a classic sign of reward hacking)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from cai.errors import CaiError
from cai.ppo_config import PPOConfig


class TrainingStopped(CaiError):
    """A guard rail stopped the run (the KL ran away, or a loss turned NaN)."""


class LengthDriftWarning(UserWarning):
    """The mean response length moved far from where it started (often reward hacking)."""


def check_scores(scores: torch.Tensor, raw: list[float], step: int) -> None:
    """Stop on a reward that is not finite: one NaN would poison the whole update."""
    if not bool(torch.isfinite(scores).all()):
        raise TrainingStopped(f"the reward at step {step + 1} is not finite ({raw})",
                              fix="check the reward model (cai rm eval) or the judge engine")


def kl_ran_away(cfg: PPOConfig, mean_kl: float) -> bool:
    """The mean per-response KL to the reference is past max_kl (0: never)."""
    return bool(cfg.max_kl and mean_kl > cfg.max_kl)


def kl_stopped(cfg: PPOConfig, mean_kl: float, step: int, saved_at: int) -> TrainingStopped:
    """The error that stops a run whose KL ran away at (0-based) `step`, with a checkpoint kept
    at `saved_at`."""
    return TrainingStopped(
        f"the KL to the reference reached {mean_kl:.2f} nats per response at step {step + 1}, "
        f"past max_kl={cfg.max_kl:g}: the policy has drifted far from where it started "
        f"(over-optimization of the reward). Checkpoint kept at step {saved_at}",
        fix="lower learning_rate, raise kl_coef or use kl_control: adaptive; to go on anyway, "
            "raise max_kl and rerun with --force")


def check_losses(stats: dict[str, float], step: int, epoch: int, minibatch: int) -> None:
    """Stop before a minibatch's optimizer step if its policy or value loss is not finite."""
    for name in ("losses/policy", "losses/value"):
        if not math.isfinite(stats[name]):
            raise TrainingStopped(
                f"{name} became {stats[name]} at step {step + 1}, epoch {epoch + 1}, "
                f"minibatch {minibatch + 1}; the update was not applied",
                fix="lower learning_rate, use precision fp32, or check the rewards; the run "
                    "resumes from the last checkpoint")


@dataclass(frozen=True)
class LengthDrift:
    """This step's mean response length against the first step's."""

    length: float
    """Mean response length of this step, in tokens."""
    first: float
    """Mean response length of the first step."""
    drift: float
    """length / first - 1."""
    warn: bool
    """Past length_drift_warn for the first time: warn now (once per run)."""


def length_drift(cfg: PPOConfig, response_mask: torch.Tensor, first: float | None, warned: bool) -> LengthDrift:
    length = float(response_mask.sum(-1).float().mean())
    first = first or length
    drift = length / first - 1.0
    warn = bool(cfg.length_drift_warn and abs(drift) > cfg.length_drift_warn and not warned)
    return LengthDrift(length, first, drift, warn)


def warn_length_drift(cfg: PPOConfig, d: LengthDrift, step: int) -> None:
    """Warn (LengthDriftWarning) if `d` says so; `step` is the finished step's number (1-based)."""
    if d.warn:
        warnings.warn(
            f"step {step}: the mean response length is {d.length:.1f} tokens, {d.drift:+.0%} from "
            f"{d.first:.1f} at the first step (past length_drift_warn="
            f"{cfg.length_drift_warn:g}); the policy may be exploiting a length bias of the reward. "
            "Read samples.jsonl", LengthDriftWarning, stacklevel=3)
