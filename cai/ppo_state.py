"""What a `cai ppo` run carries from step to step, and how it is saved and resumed.

`PPOState` is the typed state beyond the weights (the step, the length-drift reference, the
evaluation before training, the token count); `Optimizers` holds the two optimizers, their
schedulers and the KL controller. A checkpoint (cai.checkpoint) holds both models, both
optimizers, both schedulers, the RNG states and state.json: the state, the KL controller's
beta and the data position. A resumed run therefore continues exactly where it stopped.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cai import models
from cai.checkpoint import Part, latest_checkpoint, rng_state, save_checkpoint, training_inputs
from cai.data import read_prompts
from cai.errors import ResumeError
from cai.ppo_config import PPOConfig
from cai.ppo_guards import LengthDrift
from cai.ppo_math import AdaptiveKLController, FixedKLController


@dataclass(frozen=True)
class PPOState:
    """The run's state between steps, besides the models and optimizers."""

    step: int = 0
    """PPO steps finished."""
    first_length: float | None = None
    """The first step's mean response length (the length-drift reference)."""
    length_warned: bool = False
    """The length-drift warning was given (it is given once per run)."""
    eval_start: float | None = None
    """eval/reward before training (None without eval_prompts)."""
    tokens: int = 0
    """Response tokens sampled so far (the progress bar's tokens/s)."""

    def advance(self, drift: LengthDrift, tokens: int) -> PPOState:
        """The state after one more finished step that sampled `tokens` response tokens."""
        return dataclasses.replace(self, step=self.step + 1, first_length=drift.first,
                                   length_warned=self.length_warned or drift.warn, tokens=self.tokens + tokens)


# state.json's fields besides the step (which leads it), in the order they are written.
_SAVED = tuple(f.name for f in dataclasses.fields(PPOState) if f.name != "step")


@dataclass(frozen=True)
class Optimizers:
    """The policy's and the value model's optimizers (separate, so there is no value-loss
    coefficient), their learning-rate schedulers and the KL controller (beta)."""

    policy: torch.optim.Optimizer
    value: torch.optim.Optimizer
    schedulers: dict[str, Any]
    """{"policy": ..., "value": ...}"""
    kl_ctl: AdaptiveKLController | FixedKLController

    def step_schedulers(self) -> None:
        for s in self.schedulers.values():
            s.step()


def _optimizer(model, lr: float, eps: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, eps=eps, weight_decay=0.0)


def _scheduler(opt: torch.optim.Optimizer, cfg: PPOConfig):
    if cfg.lr_scheduler == "linear":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0 - k / cfg.steps)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0)


def make_optimizers(cfg: PPOConfig, policy, value_model) -> Optimizers:
    opts = {"policy": _optimizer(policy, cfg.learning_rate, cfg.adam_eps),
            "value": _optimizer(value_model, cfg.value_learning_rate or cfg.learning_rate, cfg.adam_eps)}
    kl_ctl = (AdaptiveKLController(cfg.adaptive_kl_init, cfg.adaptive_kl_target, cfg.adaptive_kl_horizon)
              if cfg.kl_control == "adaptive" else FixedKLController(cfg.kl_coef))
    return Optimizers(opts["policy"], opts["value"], {k: _scheduler(o, cfg) for k, o in opts.items()}, kl_ctl)


def _parts(policy, value_model, optim: Optimizers) -> dict[str, Part]:
    """The checkpoint's files: policy.pt, value.pt, optimizers.pt, schedulers.pt."""
    return {"policy": policy, "value": value_model,
            "optimizers": {"policy": optim.policy, "value": optim.value}, "schedulers": optim.schedulers}


def save_state(out: Path, cfg: PPOConfig, state: PPOState, policy, value_model, optim: Optimizers,
               n_prompts: int) -> int:
    """Checkpoint the run at state.step (with the RNG states as they are now); returns the step."""
    saved = {k: getattr(state, k) for k in _SAVED}
    save_checkpoint(out, state.step, _parts(policy, value_model, optim), rng_state(),
                    {**saved, "kl_controller": optim.kl_ctl.state_dict(), "n_prompts": n_prompts,
                     "prompts_seen": state.step * cfg.batch_size}, cfg.keep_checkpoints)
    return state.step


def resume(out: Path, policy, value_model, optim: Optimizers, n_prompts: int) -> tuple[PPOState, dict[str, Any] | None]:
    """Restore the models, optimizers, schedulers and beta from the newest checkpoint; returns
    the state to continue from and the RNG state to restore (None for a fresh run). The caller
    restores the RNG once the engines are up: starting vLLM reseeds the global RNGs."""
    ckpt = latest_checkpoint(out, _parts(policy, value_model, optim))
    if ckpt is None:
        return PPOState(), None
    if ckpt.state.get("n_prompts") != n_prompts:
        raise ResumeError(f"{ckpt.folder} was made with {ckpt.state.get('n_prompts')} prompts; the prompts file now "
                          f"gives {n_prompts}", fix="resume with the same prompts, or use a new --out")
    optim.kl_ctl.load_state_dict(ckpt.state["kl_controller"])
    return PPOState(step=ckpt.step, **{k: ckpt.state[k] for k in _SAVED}), ckpt.rng


def run_inputs(cfg: PPOConfig) -> dict[str, Any]:
    """What the run is made from beyond its config (cai.checkpoint.training_inputs): the policy's
    and the reward model's folders, and the prompts as read, so that a file or model edited in
    place is caught on resume."""
    folders = {"policy": models.resolve(cfg.policy)}
    if cfg.reward == "rm":
        folders["reward_model"] = models.resolve(cfg.reward_model)
    data = {name: [(r.id, r.messages) for r in read_prompts(Path(path), cfg.prompt_column, cfg.id_column)[0]]
            for name, path in (("prompts", cfg.prompts), ("eval_prompts", cfg.eval_prompts)) if path}
    return training_inputs(folders, data)
