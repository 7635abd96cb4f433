"""`cai ppo`: the RL stage. The policy learns what the reward model (trained on AI feedback)
prefers, while a per-token KL penalty keeps it close to where it started (method.md §4).

Four models: the policy (trained), a frozen reference copy of it, the reward model (frozen) and
a value model (trained, initialized from the reward model). One PPO step:

    1. rollout    sample one response per prompt through the engine, at temperature T; the
                  trainer recomputes log-probs (policy and reference, at T) and values
    2. score      reward model (or, with `reward: judge`, the AI judge: direct RLAIF, §2) at the
                  end of each response
    3. penalize   responses cut off at the token budget get a fixed penalty instead (EOS trick);
                  r_t = -beta * (log pi - log pi_ref) at every token, + the score at the last
    4. advantages rewards divided by their std (never shifted); GAE (gamma 1, lambda 0.95);
                  advantages whitened
    5. update     ppo_epochs passes over shuffled minibatches: clipped policy loss, clipped
                  value loss
    6. bookkeep   adapt beta, load the new weights into the rollout engine, log, checkpoint

The arithmetic lives in cai/ppo_math.py (pure functions), the rollout layout and forward passes
in cai/rollout.py. Output: the trained policy as a Hugging Face folder in `out`, the value model
in out/value, metrics.jsonl + tb/ (TensorBoard), samples.jsonl, checkpoints/ while running.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from cai import models, provenance, records
from cai.config import EngineConfig
from cai.data import PromptRecord, Reject, read_prompts
from cai.engine.base import Conversation, Engine, Sampling
from cai.engine.deadline import call_with_timeout
from cai.errors import CaiError, ConfigError, InputError, ResumeError
from cai.ppo_math import (
    REWARD_SCALINGS,
    AdaptiveKLController,
    FixedKLController,
    gae,
    logprobs_from_logits,
    masked_mean,
    masked_whiten,
    penalize_missing_eos,
    per_token_rewards,
    policy_loss,
    reward_scale,
    scale_rewards,
    value_loss,
)
from cai.ppo_models import load_policy, load_value_model, restore_dropout, save_value_model
from cai.progress import make_progress
from cai.rollout import (
    RolloutBatch,
    check_reload,
    compare_logprobs,
    engine_logprob_temperature,
    mean_entropy,
    probe_rows,
    prompt_ids,
    response_logprobs,
    response_values,
    sample,
)
from cai.train_common import (
    CHECKPOINTS,
    MetricsLog,
    autocast,
    batch_indices,
    checkpoint_dirs,
    finished_run,
    mark_finished,
    resolve_device,
    rng_state,
    seed_everything,
    set_rng_state,
    training_inputs,
)


class TrainingStopped(CaiError):
    """A guard rail stopped the run (the KL ran away, or a loss turned NaN)."""


class LengthDriftWarning(UserWarning):
    """The mean response length moved far from where it started (often reward hacking)."""


@dataclass(frozen=True)
class PPOConfig:
    """`cai ppo`: PPO against a reward model (or the AI judge), KL-regularized to the reference."""

    policy: str = "default"
    """The policy to train (usually the SFT model): `default`, a folder or a hub id. The frozen
    reference is a copy of it."""
    reward_model: str | None = None
    """The output folder of `cai rm train`. Required with reward: rm. The value model starts
    from its weights."""
    prompts: str = ""
    """Training prompts: JSONL, JSON, CSV or a dataset folder (one prompt or conversation per row)."""
    out: str = ""
    """Output folder. Running again with the same config resumes from the newest checkpoint."""
    reward: Literal["rm", "judge"] = "rm"
    """rm: the reward model's normalized score. judge: direct RLAIF (method.md §2), the judge's
    probability-weighted 1-10 score rescaled to [-1, 1], no reward model; the value model then
    starts from the policy with a zero-initialized value head."""
    constitution: str | None = None
    """reward: judge: the principles file the judge draws from (unset: cai's default constitution)."""
    judge_engine: EngineConfig = field(default_factory=EngineConfig)
    """reward: judge: the engine running the judge model."""
    eval_prompts: str | None = None
    """Held-out prompts. Their mean reward and KL are logged before training, every eval_every
    steps and at the end (eval/...), sampled with the same seeds each time."""
    prompt_column: str = "prompt"
    """Column holding the prompt text or conversation."""
    id_column: str = "id"
    """Column holding a stable prompt id (else one is derived from the content)."""
    max_prompt_tokens: int = 512
    """Prompts longer than this (rendered) are left out and listed in rejects.jsonl."""

    # --- rollouts ---
    rollout_engine: EngineConfig = field(default_factory=lambda: EngineConfig(backend="hf"))
    """How rollouts are sampled. backend hf: transformers `generate` on the policy in memory
    (always current). backend vllm: one vLLM engine started once; after each update the new
    weights are loaded into it in place, and its token log-probs are checked against the
    trainer's. Its `model` must stay unset: the engine always runs the policy."""
    max_new_tokens: int = 64
    """Token budget of a response. A response that hits it without EOS gets missing_eos_penalty."""
    temperature: float = 0.7
    """Sampling temperature; log-probs are computed at the same temperature (method.md §4).
    Top-p is fixed at 1: PPO's ratio needs the full distribution the tokens came from."""
    engine_timeout_s: float = 900.0
    """Longest wait on the rollout engine (a generate call or a weight reload) before the run
    stops with an EngineError instead of hanging."""
    engine_logprob_tolerance: float | None = None
    """Largest allowed mean |engine - trainer| log-prob per sampled token (vllm backend). Unset:
    0.01 for a float32 engine (measured agreement ~1e-5 on CPU), 0.25 for a 16-bit one (bf16
    vLLM against the fp32 trainer measured 0.07 on the default model). A failed reload or a
    different model is off by whole nats."""

    # --- batch sizes (no prefix = per step; local_ = one forward/backward) ---
    steps: int = 100
    """PPO steps (rollout + update) to run."""
    batch_size: int = 64
    """Prompts (one response each) per PPO step."""
    num_minibatches: int = 4
    """Minibatches per PPO epoch; one optimizer step each (minibatch_size = batch_size / this)."""
    gradient_accumulation_steps: int = 1
    """Forward/backward passes per minibatch (local_minibatch_size = minibatch_size / this);
    the update equals one pass over the whole minibatch (losses are token-weighted)."""
    ppo_epochs: int = 4
    """Passes over each rollout batch."""

    # --- optimization ---
    learning_rate: float = 3e-6
    """Policy AdamW learning rate (N+ TL;DR setting)."""
    value_learning_rate: float | None = None
    """Value model learning rate (unset: learning_rate). Policy and value have separate
    optimizers, so there is no value-loss coefficient (Adam is invariant to its scale)."""
    lr_scheduler: Literal["linear", "constant"] = "linear"
    """linear: anneal both learning rates to 0 over the run (N+); constant: keep them."""
    max_grad_norm: float = 1.0
    """Clip each model's gradient norm to this; 0 turns clipping off."""
    adam_eps: float = 1e-5
    """AdamW epsilon (1e-5 as in the N+ and cleanrl PPO code, not torch's 1e-8)."""

    # --- the PPO objective ---
    kl_control: Literal["fixed", "adaptive"] = "fixed"
    """fixed: beta = kl_coef throughout. adaptive: Ziegler et al.'s controller, starting at
    adaptive_kl_init and steering the per-response KL toward adaptive_kl_target."""
    kl_coef: float = 0.05
    """beta of the fixed controller (N+ TL;DR: 0.05)."""
    adaptive_kl_init: float = 0.15
    """adaptive: the starting beta (method.md §4)."""
    adaptive_kl_target: float = 6.0
    """adaptive: the target KL per response, in nats."""
    adaptive_kl_horizon: int = 10000
    """adaptive: responses over which beta can move by about +-20% per unit of error."""
    missing_eos_penalty: float | None = -1.0
    """Reward of a response that ends without EOS, instead of its score (the EOS trick). Unset
    (null): keep the score."""
    gamma: float = 1.0
    """GAE discount."""
    lam: float = 0.95
    """GAE lambda."""
    cliprange: float = 0.2
    """Policy ratio clipping epsilon."""
    cliprange_value: float = 0.2
    """Value clipping: how far a new value may move from the rollout's value."""
    reward_scaling: Literal["std", "none"] = "std"
    """std: divide the per-token rewards by their standard deviation over the batch, without
    shifting them (a shift is a per-token bonus, i.e. a length bias; see
    cai.ppo_math.scale_rewards). none: use them as they are."""
    reward_batch_size: int = 16
    """Responses per reward-model forward pass."""

    # --- guard rails ---
    max_kl: float = 50.0
    """Stop (with a checkpoint) when the mean per-response KL to the reference passes this many
    nats: the policy has drifted far from where it started. 0 turns the check off."""
    length_drift_warn: float = 0.5
    """Warn when the mean response length moves more than this fraction away from the first
    step's (a classic sign of reward hacking). 0 turns the warning off."""

    # --- running ---
    seed: int = 0
    """Seeds the rollouts, the minibatch order and the prompt order."""
    device: str = "auto"
    """auto (cuda when available, else cpu), cpu, cuda or cuda:N."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """fp32, or bf16 autocast (fp32 weights, log-probs always in fp32)."""
    eval_every: int = 0
    """Evaluate on eval_prompts every N steps (0: only before and after training)."""
    sample_every: int = 10
    """Log sample generations (prompt, response, score, KL) every N steps to samples.jsonl and
    TensorBoard (0: never)."""
    num_samples: int = 4
    """Sample generations logged each time."""
    checkpoint_every: int = 10
    """Save a resumable checkpoint every N steps (0: never; Ctrl-C still saves one)."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep."""
    delete_checkpoints_when_done: bool = True
    """Remove checkpoints/ once the final policy is saved."""

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ConfigError("prompts is not set", fix="pass --prompts FILE, or set prompts: in the config file")
        if not self.out:
            raise ConfigError("out is not set", fix="pass --out DIR, or set out: in the config file")
        if self.reward == "rm" and not self.reward_model:
            raise ConfigError("reward: rm needs a reward model",
                              fix="pass --reward-model DIR (the output of `cai rm train`), or --reward judge")
        if self.reward == "judge" and self.reward_model:
            raise ConfigError("reward: judge uses no reward model, but reward_model is set",
                              fix="leave reward_model unset with --reward judge, or use --reward rm")
        if self.rollout_engine.backend not in ("hf", "vllm"):
            raise ConfigError(f"rollout_engine.backend {self.rollout_engine.backend!r} cannot serve PPO rollouts",
                              fix="use hf or vllm: the engine must run the policy being trained")
        if self.rollout_engine.model not in ("default", self.policy):
            raise ConfigError(f"rollout_engine.model is {self.rollout_engine.model!r}; rollouts always come "
                              f"from the policy ({self.policy!r})", fix="remove rollout_engine.model")
        positive = {"steps": self.steps, "batch_size": self.batch_size, "num_minibatches": self.num_minibatches,
                    "gradient_accumulation_steps": self.gradient_accumulation_steps,
                    "ppo_epochs": self.ppo_epochs, "max_new_tokens": self.max_new_tokens,
                    "max_prompt_tokens": self.max_prompt_tokens, "reward_batch_size": self.reward_batch_size,
                    "keep_checkpoints": self.keep_checkpoints, "adaptive_kl_horizon": self.adaptive_kl_horizon}
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        for name in ("eval_every", "sample_every", "checkpoint_every", "num_samples"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.batch_size % self.num_minibatches:
            raise ConfigError(f"batch_size {self.batch_size} is not divisible by num_minibatches "
                              f"{self.num_minibatches}", fix="choose batch_size as a multiple of num_minibatches")
        if self.minibatch_size % self.gradient_accumulation_steps:
            raise ConfigError(f"minibatch_size {self.minibatch_size} (batch_size / num_minibatches) is not divisible "
                              f"by gradient_accumulation_steps {self.gradient_accumulation_steps}",
                              fix="choose gradient_accumulation_steps that divides batch_size / num_minibatches")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0 for PPO, got {self.temperature}",
                              fix="PPO needs a sampling distribution; 0.7 is the N+ setting")
        if self.learning_rate <= 0 or (self.value_learning_rate is not None and self.value_learning_rate <= 0):
            raise ConfigError("learning rates must be > 0")
        if not 0 < self.cliprange < 1 or self.cliprange_value <= 0:
            raise ConfigError(f"cliprange must be in (0, 1) and cliprange_value > 0, got "
                              f"{self.cliprange} and {self.cliprange_value}")
        if not (0 <= self.gamma <= 1 and 0 <= self.lam <= 1):
            raise ConfigError(f"gamma and lam must be in [0, 1], got {self.gamma} and {self.lam}")
        if self.kl_coef < 0 or self.adaptive_kl_init < 0 or self.adaptive_kl_target <= 0:
            raise ConfigError("kl_coef and adaptive_kl_init must be >= 0 and adaptive_kl_target > 0")
        if self.engine_logprob_tolerance is not None and not self.engine_logprob_tolerance > 0:
            raise ConfigError(f"engine_logprob_tolerance must be > 0, got {self.engine_logprob_tolerance}")
        if self.max_kl < 0 or self.length_drift_warn < 0 or self.engine_timeout_s <= 0:
            raise ConfigError("max_kl and length_drift_warn must be >= 0 and engine_timeout_s > 0")
        if self.max_prompt_tokens + self.max_new_tokens > self.rollout_engine.max_model_len:
            raise ConfigError(f"max_prompt_tokens + max_new_tokens = {self.max_prompt_tokens + self.max_new_tokens} "
                              f"exceeds rollout_engine.max_model_len = {self.rollout_engine.max_model_len}",
                              fix="lower max_prompt_tokens, or raise rollout_engine.max_model_len")
        if self.reward_scaling not in REWARD_SCALINGS:
            raise ConfigError(f"reward_scaling must be one of {', '.join(REWARD_SCALINGS)}, "
                              f"got {self.reward_scaling!r}",
                              fix="std divides the rewards by their std (the default); none leaves them")
        if self.batch_size * self.ppo_epochs < 2:
            raise ConfigError("a PPO step needs at least 2 responses (whitening needs a variance)")

    @property
    def logprob_tolerance(self) -> float:
        """engine_logprob_tolerance, or its default for the rollout engine's dtype."""
        if self.engine_logprob_tolerance is not None:
            return self.engine_logprob_tolerance
        return 0.01 if self.rollout_engine.dtype == "float32" else 0.25

    @property
    def minibatch_size(self) -> int:
        """Responses per optimizer step."""
        return self.batch_size // self.num_minibatches

    @property
    def local_minibatch_size(self) -> int:
        """Responses per forward/backward pass."""
        return self.minibatch_size // self.gradient_accumulation_steps


# ---------------------------------------------------------------------------------------------
# Prompts and models
# ---------------------------------------------------------------------------------------------


def run_inputs(cfg: PPOConfig) -> dict[str, Any]:
    """What the run is made from beyond its config (cai.train_common.training_inputs): the policy's
    and the reward model's folders, and the prompts as read, so that a file or model edited in
    place is caught on resume."""
    folders = {"policy": models.resolve(cfg.policy)}
    if cfg.reward == "rm":
        folders["reward_model"] = models.resolve(cfg.reward_model)
    data = {name: [(r.id, r.messages) for r in read_prompts(Path(path), cfg.prompt_column, cfg.id_column)[0]]
            for name, path in (("prompts", cfg.prompts), ("eval_prompts", cfg.eval_prompts)) if path}
    return training_inputs(folders, data)


def load_prompts(path: str, cfg: PPOConfig, tokenizer) -> tuple[list[PromptRecord], list[Reject], int]:
    """Prompts that fit max_prompt_tokens, the rejects (never dropped silently), and the length
    of the longest prompt kept, in tokens."""
    prompts, rejects = read_prompts(Path(path), cfg.prompt_column, cfg.id_column)
    keep, longest = [], 0
    for r in prompts:
        n = len(prompt_ids(tokenizer, r.conversation))
        if n > cfg.max_prompt_tokens:
            rejects.append(Reject(r.id, r.source, f"prompt is {n} tokens, more than max_prompt_tokens="
                                  f"{cfg.max_prompt_tokens}", "shorten it or raise --max-prompt-tokens"))
        else:
            keep.append(r)
            longest = max(longest, n)
    if not keep:
        raise InputError(f"{path} has no usable prompt ({len(rejects)} rejected)",
                         fix="see rejects.jsonl in the output folder for the reasons")
    return keep, rejects, longest


Scorer = Callable[[list[Conversation], list[str], int], list[float]]


def make_scorer(cfg: PPOConfig, device: torch.device, judge_engine: Engine | None,
                longest_prompt: int) -> tuple[Scorer, Engine | None]:
    """score(conversations, responses, step) -> rewards; plus the judge engine it owns, if any."""
    if cfg.reward == "rm":
        from cai.reward import RewardModel

        rm = RewardModel.load(str(cfg.reward_model), device=str(device))
        rm.model.requires_grad_(False)
        if rm.max_length < longest_prompt + cfg.max_new_tokens + 8:  # + the closing turn markers
            warnings.warn(f"the reward model reads at most {rm.max_length} tokens, fewer than the longest prompt "
                          f"({longest_prompt} tokens) plus a response of up to {cfg.max_new_tokens}: the start "
                          "of such prompts is cut before scoring", stacklevel=2)

        def score_rm(conversations: list[Conversation], responses: list[str], step: int) -> list[float]:
            return rm.score(conversations, responses, batch_size=cfg.reward_batch_size)

        return score_rm, None

    from cai.constitution import load_constitution
    from cai.engine import make_engine
    from cai.judge import resolve_judge_engine, score_responses

    constitution = load_constitution(cfg.constitution) if cfg.constitution else load_constitution()
    owned = None
    if judge_engine is None:
        # The judge's own rule: dtype auto means float32 on a CPU (bf16 scores are coarse).
        judge_engine = owned = make_engine(resolve_judge_engine(cfg.judge_engine))

    def score_judge(conversations: list[Conversation], responses: list[str], step: int) -> list[float]:
        seed = provenance.derive_seed(cfg.seed, "judge", step)
        return call_with_timeout(
            lambda: score_responses(judge_engine, constitution, conversations, responses, seed),
            cfg.engine_timeout_s, f"judging {len(responses)} responses")

    return score_judge, owned


def make_rollout_engine(cfg: PPOConfig, policy, tokenizer, policy_path: str) -> Engine:
    if cfg.rollout_engine.backend == "vllm":
        from cai.engine.vllm import VLLMEngine

        return VLLMEngine(policy_path, cfg.rollout_engine, model_name=f"policy ({cfg.policy})")
    from cai.engine.hf import HFEngine

    # generate() merges the model's generation config into every call; a repetition penalty or
    # n-gram ban there would sample from something other than softmax(logits / T).
    policy.generation_config.repetition_penalty = 1.0
    policy.generation_config.no_repeat_ngram_size = 0
    return HFEngine.from_model(policy, tokenizer, model_name=f"policy ({cfg.policy})",
                               max_model_len=cfg.rollout_engine.max_model_len,
                               batch_size=cfg.rollout_engine.hf_batch_size)


def holds_own_weights(engine: Engine) -> bool:
    """An engine with its own copy of the weights (vLLM) must be sent every update."""
    return hasattr(engine, "load_weights")


def sync_weights(engine: Engine, policy, timeout_s: float) -> float:
    """Load the policy's weights into the running engine, in place. Returns the seconds taken."""
    t0 = time.perf_counter()
    weights = [(name, tensor.detach()) for name, tensor in policy.state_dict().items()]
    call_with_timeout(lambda: engine.load_weights(weights), timeout_s, "loading the updated policy weights")
    return time.perf_counter() - t0


@torch.no_grad()
def verify_reload(cfg: PPOConfig, engine: Engine, exp: Experience, policy, device: torch.device) -> dict[str, float]:
    """Check that the reload took (cai.rollout.check_reload), on this step's first rollouts."""
    rows = probe_rows(exp.batch, engine.max_model_len)
    if not rows:  # every sequence fills the engine's context: nothing it can score
        return {}
    probe = exp.batch.select(rows)
    new_lp = []
    for sub in chunks(len(rows), cfg.local_minibatch_size):
        with autocast(device, cfg.precision):
            new_lp.append(response_logprobs(policy, probe.select(sub), 1.0)[0])
    check = check_reload(engine, probe, exp.check_logprobs[torch.tensor(rows, device=device)], torch.cat(new_lp),
                         cfg.engine_timeout_s)
    return {k: v for k, v in (("engine/reload_agreement", check.agreement), ("engine/reload_stderr", check.stderr))
            if math.isfinite(v)}


# ---------------------------------------------------------------------------------------------
# 1-4: rollout, score, penalize, advantages
# ---------------------------------------------------------------------------------------------


@dataclass
class Experience:
    """One PPO step's rollout batch and everything computed from it. Tensors are [B, R]
    (response tokens) unless noted; all hold 0 on padding."""

    batch: RolloutBatch
    logprobs: torch.Tensor
    """log pi_old(a_t) at the sampling temperature (the trainer's, not the engine's)."""
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    """V_old(s_t): the value model before this step's update."""
    raw_scores: torch.Tensor
    """[B] the reward model's (or judge's) score."""
    scores: torch.Tensor
    """[B] the score after the EOS trick."""
    entropy: float
    """Mean per-token entropy of the sampling distribution."""
    engine_check: dict[str, float]
    check_logprobs: torch.Tensor | None = None
    """[B, R] engines with their own weights: the trainer's raw (T = 1) log-probs before the
    update, which the reload check after it compares with (cai.rollout.check_reload)."""
    rewards: torch.Tensor | None = None
    kl: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    """In the scaled units of `rewards`."""
    reward_scale: torch.Tensor | None = None
    """[] the factor reward scaling multiplied the rewards by (1 / their std, or 1); values are
    multiplied by it before GAE and the value loss."""


def chunks(n: int, size: int) -> list[list[int]]:
    return [list(range(i, min(i + size, n))) for i in range(0, n, size)]


@torch.no_grad()
def rollout(cfg: PPOConfig, records_: Sequence[PromptRecord], seeds: Sequence[int], engine: Engine, tokenizer,
            policy, ref, value_model, scorer: Scorer, step: int, device: torch.device,
            timings: dict[str, float]) -> Experience:
    """Phases 1 (rollout) and 2 (score), with the EOS trick of phase 3."""
    t0 = time.perf_counter()
    check = holds_own_weights(engine)
    sampling = Sampling(max_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=1.0, seed=None,
                        logprobs=check)
    conversations = [r.conversation for r in records_]
    batch = sample(engine, tokenizer, conversations, sampling, seeds, cfg.engine_timeout_s).to(device)

    logprobs, ref_logprobs, values, check_lps, entropy_sum = [], [], [], [], 0.0
    t_engine = engine_logprob_temperature(engine, cfg.temperature)
    for rows in chunks(len(records_), cfg.local_minibatch_size):
        mb = batch.select(rows)
        with autocast(device, cfg.precision):
            lp, logits = response_logprobs(policy, mb, cfg.temperature)
            ref_lp, _ = response_logprobs(ref, mb, cfg.temperature)
            values.append(response_values(value_model, mb))
        logprobs.append(lp)
        ref_logprobs.append(ref_lp)
        entropy_sum += float(mean_entropy(logits, mb.response_mask, cfg.temperature)) * float(mb.response_mask.sum())
        if check:
            check_lps.append(logprobs_from_logits(logits, mb.responses, t_engine) * mb.response_mask)
    engine_check = {}
    if check:
        result = compare_logprobs(batch, torch.cat(check_lps), cfg.logprob_tolerance)
        engine_check = {"engine/logprob_diff_mean": result.mean_abs_diff,
                        "engine/logprob_diff_max": result.max_abs_diff}
    timings["time/rollout"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    raw = scorer(conversations, [c.text for c in batch.completions], step)
    raw_scores = torch.tensor(raw, dtype=torch.float32, device=device)
    if not bool(torch.isfinite(raw_scores).all()):
        raise TrainingStopped(f"the reward at step {step + 1} is not finite ({raw})",
                              fix="check the reward model (cai rm eval) or the judge engine")
    scores = penalize_missing_eos(raw_scores, batch.ended_with_eos.to(device), cfg.missing_eos_penalty)
    timings["time/scoring"] = time.perf_counter() - t0
    return Experience(batch=batch, logprobs=torch.cat(logprobs), ref_logprobs=torch.cat(ref_logprobs),
                      values=torch.cat(values), raw_scores=raw_scores, scores=scores,
                      entropy=entropy_sum / max(float(batch.response_mask.sum()), 1.0), engine_check=engine_check,
                      check_logprobs=torch.cat(check_lps) if check else None)


@torch.no_grad()
def compute_advantages(exp: Experience, cfg: PPOConfig, kl_coef: float) -> None:
    """Phases 3 and 4: per-token rewards with the KL penalty, reward scaling, GAE, whitening."""
    mask = exp.batch.response_mask
    r = per_token_rewards(exp.logprobs, exp.ref_logprobs, exp.scores, mask, kl_coef)
    exp.kl = r.kl
    # Reward scaling: divided by the std, never shifted (a shift would reward length).
    exp.reward_scale = reward_scale(r.rewards, mask, cfg.reward_scaling)
    exp.rewards = scale_rewards(r.rewards, mask, cfg.reward_scaling)
    # The value model predicts returns in the reward model's normalized units (its head starts as
    # the reward model's, gain and bias folded in); GAE and the value loss see its predictions in
    # this batch's scaled units, so a model that predicts the returns exactly gives advantage 0.
    advantages, exp.returns = gae(exp.rewards, exp.values * exp.reward_scale, mask, cfg.gamma, cfg.lam)
    exp.advantages = masked_whiten(advantages, mask)


# ---------------------------------------------------------------------------------------------
# 5: the PPO update
# ---------------------------------------------------------------------------------------------


def ppo_update(exp: Experience, cfg: PPOConfig, step: int, policy, value_model, policy_opt, value_opt,
               device: torch.device) -> dict[str, float]:
    """ppo_epochs passes over shuffled minibatches; one optimizer step per minibatch."""
    stats: dict[str, float] = defaultdict(float)
    n_updates = 0
    for epoch in range(cfg.ppo_epochs):
        # The order comes from (seed, step, epoch) alone, so a resumed run shuffles identically.
        gen = torch.Generator().manual_seed(provenance.derive_seed(cfg.seed, "minibatches", step, epoch))
        order = torch.randperm(cfg.batch_size, generator=gen)
        for mb_index, start in enumerate(range(0, cfg.batch_size, cfg.minibatch_size)):
            mb_rows = order[start:start + cfg.minibatch_size]
            mb_tokens = float(exp.batch.response_mask[mb_rows.to(device)].sum())
            mb_stats: dict[str, float] = defaultdict(float)
            for micro in range(0, cfg.minibatch_size, cfg.local_minibatch_size):
                rows = mb_rows[micro:micro + cfg.local_minibatch_size].to(device)
                mb = exp.batch.select(rows)
                mask = mb.response_mask
                # Token-weighted: the summed gradients equal those of one pass over the minibatch.
                weight = float(mask.sum()) / mb_tokens
                with autocast(device, cfg.precision):
                    new_logprobs, logits = response_logprobs(policy, mb, cfg.temperature)
                    new_values = response_values(value_model, mb)
                pl = policy_loss(new_logprobs, exp.logprobs[rows], exp.advantages[rows], mask, cfg.cliprange)
                scale = exp.reward_scale  # values in the scaled units of the returns (compute_advantages)
                vl = value_loss(new_values * scale, exp.values[rows] * scale, exp.returns[rows], mask,
                                cfg.cliprange_value)
                ((pl.pg_loss + vl.vf_loss) * weight).backward()
                with torch.no_grad():
                    for name, v in (("losses/policy", pl.pg_loss), ("losses/value", vl.vf_loss),
                                    ("policy/clipfrac", pl.clipfrac), ("policy/approx_kl", pl.approx_kl),
                                    ("policy/ratio", pl.ratio), ("value/clipfrac", vl.vf_clipfrac),
                                    ("policy/entropy", mean_entropy(logits, mask, cfg.temperature))):
                        mb_stats[name] += float(v) * weight
            for name in ("losses/policy", "losses/value"):
                if not math.isfinite(mb_stats[name]):
                    raise TrainingStopped(
                        f"{name} became {mb_stats[name]} at step {step + 1}, epoch {epoch + 1}, "
                        f"minibatch {mb_index + 1}; the update was not applied",
                        fix="lower learning_rate, use precision fp32, or check the rewards; the run "
                            "resumes from the last checkpoint")
            for model, opt in ((policy, policy_opt), (value_model, value_opt)):
                if cfg.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                opt.step()
                opt.zero_grad(set_to_none=True)
            for k, v in mb_stats.items():
                stats[k] += v
            n_updates += 1
    return {k: v / n_updates for k, v in stats.items()}


# ---------------------------------------------------------------------------------------------
# Evaluation on held-out prompts
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(cfg: PPOConfig, prompts: Sequence[PromptRecord], engine: Engine, tokenizer, policy, ref,
             scorer: Scorer, device: torch.device, step: int) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Mean reward (after the EOS trick), raw score, KL and length on the held-out prompts, with
    the same per-prompt seeds every time, so two evaluations differ only by the policy; and one
    row per response (for eval_samples.jsonl)."""
    sampling = Sampling(max_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=1.0, seed=None)
    scores, raw_scores, kls, lengths, ended, samples = [], [], [], [], [], []
    for rows in chunks(len(prompts), cfg.batch_size):
        recs = [prompts[i] for i in rows]
        seeds = [provenance.derive_seed(cfg.seed, "eval", r.id) for r in recs]
        batch = sample(engine, tokenizer, [r.conversation for r in recs], sampling, seeds,
                       cfg.engine_timeout_s).to(device)
        kl = torch.zeros(len(recs), device=device)
        for sub in chunks(len(recs), cfg.local_minibatch_size):
            mb = batch.select(sub)
            with autocast(device, cfg.precision):
                lp, _ = response_logprobs(policy, mb, cfg.temperature)
                ref_lp, _ = response_logprobs(ref, mb, cfg.temperature)
            kl[torch.tensor(sub, device=device)] = ((lp - ref_lp) * mb.response_mask).sum(-1)
        raw = torch.tensor(scorer([r.conversation for r in recs], [c.text for c in batch.completions], -1),
                           dtype=torch.float32)
        eos = batch.ended_with_eos
        raw_scores.append(raw)
        scores.append(penalize_missing_eos(raw, eos, cfg.missing_eos_penalty))
        kls.append(kl.cpu())
        lengths.append(batch.response_mask.sum(-1).float().cpu())
        ended.append(eos.float())
        for i, (r, c) in enumerate(zip(recs, batch.completions, strict=True)):
            samples.append({"id": f"eval-{step}-{r.id}", "step": step, "prompt_id": r.id, "response": c.text,
                            "finish_reason": c.finish_reason, "score": round(float(raw[i]), 4),
                            "kl": round(float(kl[i]), 4)})
    metrics = {"eval/reward": float(torch.cat(scores).mean()), "eval/score": float(torch.cat(raw_scores).mean()),
               "eval/kl": float(torch.cat(kls).mean()), "eval/response_length": float(torch.cat(lengths).mean()),
               "eval/eos_frac": float(torch.cat(ended).mean())}
    return metrics, samples


# ---------------------------------------------------------------------------------------------
# Checkpoints: everything a resumed run needs to continue exactly
# ---------------------------------------------------------------------------------------------


def save_checkpoint(out: Path, step: int, policy, value_model, opts: dict[str, Any], scheds: dict[str, Any],
                    state: dict[str, Any], keep: int) -> None:
    """Write into a temporary folder, then rename: a crash never leaves half a checkpoint."""
    root = out / CHECKPOINTS
    final, tmp = root / f"step-{step:08d}", root / f".step-{step:08d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(policy.state_dict(), tmp / "policy.pt")
    torch.save(value_model.state_dict(), tmp / "value.pt")
    torch.save({k: o.state_dict() for k, o in opts.items()}, tmp / "optimizers.pt")
    torch.save({k: s.state_dict() for k, s in scheds.items()}, tmp / "schedulers.pt")
    torch.save(rng_state(), tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=1))  # written last
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in checkpoint_dirs(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(folder: Path, policy, value_model, opts: dict[str, Any], scheds: dict[str, Any]) -> dict[str, Any]:
    try:
        policy.load_state_dict(torch.load(folder / "policy.pt", map_location="cpu", weights_only=True))
        value_model.load_state_dict(torch.load(folder / "value.pt", map_location="cpu", weights_only=True))
        for k, sd in torch.load(folder / "optimizers.pt", map_location="cpu", weights_only=True).items():
            opts[k].load_state_dict(sd)
        for k, sd in torch.load(folder / "schedulers.pt", weights_only=True).items():
            scheds[k].load_state_dict(sd)
        rng = torch.load(folder / "rng.pt", weights_only=True)
    except (OSError, RuntimeError, KeyError) as e:
        raise ResumeError(f"cannot resume from checkpoint {folder}: {e}",
                          fix="delete that checkpoint folder to resume from an older one, or use a new --out") from e
    state = json.loads((folder / "state.json").read_text())
    state["rng"] = rng
    return state


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


def _optimizer(model, lr: float, eps: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, eps=eps, weight_decay=0.0)


def _scheduler(opt: torch.optim.Optimizer, cfg: PPOConfig):
    if cfg.lr_scheduler == "linear":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0 - k / cfg.steps)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0)


def _samples_rows(exp: Experience, records_: Sequence[PromptRecord], step: int, n: int) -> list[dict[str, Any]]:
    seq_kl = exp.kl.sum(-1)
    return [{"id": f"step-{step}-{i}", "step": step, "prompt_id": records_[i].id, "prompt": records_[i].conversation,
             "response": exp.batch.completions[i].text, "finish_reason": exp.batch.completions[i].finish_reason,
             "score": round(float(exp.raw_scores[i]), 4), "reward": round(float(exp.scores[i]), 4),
             "kl": round(float(seq_kl[i]), 4)} for i in range(min(n, len(records_)))]


def _samples_markdown(rows: list[dict[str, Any]]) -> str:
    def cell(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    lines = ["| prompt | response | reward | kl |", "|---|---|---|---|"]
    lines += [f"| {cell(r['prompt'][-1]['content'])} | {cell(r['response'])} | {r['reward']} | {r['kl']} |"
              for r in rows]
    return "\n".join(lines)


@records.locked_run  # one job per run folder (cai.records.RunLock)
def train_ppo(cfg: PPOConfig, *, force: bool = False, progress: bool = True, rollout_engine: Engine | None = None,
              judge_engine: Engine | None = None,
              on_step: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Run (or resume) a PPO job; returns its summary (also written to OUT/train_done.json).

    `rollout_engine` / `judge_engine` reuse engines that are already running (tests, notebooks);
    a given rollout engine gets the policy's weights loaded first. `on_step(step, metrics)` runs
    after each finished step."""
    inputs = run_inputs(cfg)
    if (done := finished_run(Path(cfg.out), cfg, inputs)) is not None:
        return done
    out = records.open_run_dir(Path(cfg.out), cfg, force, inputs=inputs)
    t_start = time.time()
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)

    # --- Models: policy + frozen reference, value model, reward ---
    policy_path = models.resolve(cfg.policy)
    policy, ref, tokenizer = load_policy(policy_path, device)
    generation_config = copy.deepcopy(policy.generation_config)  # saved unchanged with the result
    value_model = load_value_model(cfg.reward_model if cfg.reward == "rm" else None, policy_path, tokenizer,
                                   device)
    prompts, rejects, longest = load_prompts(cfg.prompts, cfg, tokenizer)
    eval_prompts, eval_rejects, eval_longest = (load_prompts(cfg.eval_prompts, cfg, tokenizer) if cfg.eval_prompts
                                                else ([], [], 0))
    if rejects or eval_rejects:
        records.write_jsonl_atomic(out / "rejects.jsonl", [r.to_dict() for r in rejects + eval_rejects])

    policy_opt = _optimizer(policy, cfg.learning_rate, cfg.adam_eps)
    value_opt = _optimizer(value_model, cfg.value_learning_rate or cfg.learning_rate, cfg.adam_eps)
    opts = {"policy": policy_opt, "value": value_opt}
    scheds = {k: _scheduler(o, cfg) for k, o in opts.items()}
    kl_ctl = (AdaptiveKLController(cfg.adaptive_kl_init, cfg.adaptive_kl_target, cfg.adaptive_kl_horizon)
              if cfg.kl_control == "adaptive" else FixedKLController(cfg.kl_coef))

    # --- Resume: models, optimizers, schedulers, beta, RNG, data position ---
    start, state = 0, {"first_length": None, "length_warned": False, "eval_start": None, "tokens": 0}
    ckpts = checkpoint_dirs(out)
    if ckpts:
        loaded = load_checkpoint(ckpts[-1], policy, value_model, opts, scheds)
        if loaded.get("n_prompts") != len(prompts):
            raise ResumeError(f"{ckpts[-1]} was made with {loaded.get('n_prompts')} prompts; the prompts file now "
                              f"gives {len(prompts)}", fix="resume with the same prompts, or use a new --out")
        start = loaded["step"]
        kl_ctl.load_state_dict(loaded["kl_controller"])
        state = {k: loaded[k] for k in state}
    resume_rng = loaded["rng"] if ckpts else None

    step, saved_at, updating = start, start, False
    metrics: dict[str, float] = {}
    owned_engine = owned_judge = log = samples = eval_samples = None

    def checkpoint(at: int) -> None:
        nonlocal saved_at
        save_checkpoint(out, at, policy, value_model, opts, scheds,
                        {**state, "kl_controller": kl_ctl.state_dict(), "n_prompts": len(prompts),
                         "prompts_seen": at * cfg.batch_size}, cfg.keep_checkpoints)
        saved_at = at

    def run_eval(at: int) -> dict[str, float]:
        result, rows = evaluate(cfg, eval_prompts, rollout_engine, tokenizer, policy, ref, scorer, device, at)
        log.log(at, result)
        eval_samples.extend([r for r in rows if r["id"] not in eval_samples])
        return result

    try:
        # --- Engines: the reward (judge) and the rollout engine, started once ---
        scorer, owned_judge = make_scorer(cfg, device, judge_engine, max(longest, eval_longest))
        if rollout_engine is None:
            rollout_engine = owned_engine = make_rollout_engine(cfg, policy, tokenizer, policy_path)
            in_sync = start == 0  # a fresh vLLM engine holds the starting policy; a resumed one does not
        else:
            in_sync = False
        if holds_own_weights(rollout_engine) and not in_sync:
            sync_weights(rollout_engine, policy, cfg.engine_timeout_s)
        log = MetricsLog(out, start)
        samples = records.JsonlStore(out / "samples.jsonl")
        eval_samples = records.JsonlStore(out / "eval_samples.jsonl")
        if resume_rng is not None:
            set_rng_state(resume_rng)  # after the engines: starting vLLM reseeds the global RNGs

        if eval_prompts and start == 0:
            state["eval_start"] = run_eval(0)["eval/reward"]
        bar = make_progress("steps")
        bar.disable = not progress
        with bar:
            task = bar.add_task("ppo", total=cfg.steps, completed=start, tokens=state["tokens"])
            while step < cfg.steps:
                timings: dict[str, float] = {}
                t_step = time.perf_counter()
                # The data position is step * batch_size in an endless stream of seeded epochs.
                idx = batch_indices(len(prompts), cfg.seed, step * cfg.batch_size, cfg.batch_size)
                batch_records = [prompts[i] for i in idx]
                seeds = [provenance.derive_seed(cfg.seed, "rollout", step, i, r.id)
                         for i, r in enumerate(batch_records)]

                # 1-2. Rollout and score (no grad).
                exp = rollout(cfg, batch_records, seeds, rollout_engine, tokenizer, policy, ref, value_model,
                              scorer, step, device, timings)
                # 3-4. Penalize, whiten, advantages.
                compute_advantages(exp, cfg, kl_ctl.value)
                mean_kl = float(exp.kl.sum(-1).mean())
                if cfg.max_kl and mean_kl > cfg.max_kl:
                    if step > saved_at:
                        checkpoint(step)
                    raise TrainingStopped(
                        f"the KL to the reference reached {mean_kl:.2f} nats per response at step {step + 1}, "
                        f"past max_kl={cfg.max_kl:g}: the policy has drifted far from where it started "
                        f"(over-optimization of the reward). Checkpoint kept at step {saved_at}",
                        fix="lower learning_rate, raise kl_coef or use kl_control: adaptive; to go on anyway, "
                            "raise max_kl and rerun with --force")

                # 5. PPO epochs over minibatches.
                t0 = time.perf_counter()
                # From here until the step's state is complete, a Ctrl-C must not save a checkpoint.
                updating = True
                update_stats = ppo_update(exp, cfg, step, policy, value_model, policy_opt, value_opt, device)
                for s in scheds.values():
                    s.step()
                step += 1
                timings["time/training"] = time.perf_counter() - t0

                # 6. Adapt beta, send the new weights to the engine, log, checkpoint.
                kl_coef_used = kl_ctl.value
                kl_ctl.update(mean_kl, cfg.batch_size)
                mask = exp.batch.response_mask
                mean_len = float(mask.sum(-1).float().mean())
                state["first_length"] = state["first_length"] or mean_len
                drift = mean_len / state["first_length"] - 1.0
                warn_drift = cfg.length_drift_warn and abs(drift) > cfg.length_drift_warn and not state["length_warned"]
                state["length_warned"] = state["length_warned"] or bool(warn_drift)
                state["tokens"] += int(mask.sum())
                updating = False
                if warn_drift:
                    warnings.warn(
                        f"step {step}: the mean response length is {mean_len:.1f} tokens, {drift:+.0%} from "
                        f"{state['first_length']:.1f} at the first step (past length_drift_warn="
                        f"{cfg.length_drift_warn:g}); the policy may be exploiting a length bias of the reward. "
                        "Read samples.jsonl", LengthDriftWarning, stacklevel=2)
                if holds_own_weights(rollout_engine):
                    timings["time/weight_sync"] = sync_weights(rollout_engine, policy, cfg.engine_timeout_s)
                    exp.engine_check.update(verify_reload(cfg, rollout_engine, exp, policy, device))
                metrics = {
                    "objective/reward": float(exp.scores.mean()),
                    "objective/score": float(exp.raw_scores.mean()),
                    "objective/kl": mean_kl,
                    "objective/kl_coef": kl_coef_used,
                    "objective/rlhf_reward": float(exp.scores.mean()) - kl_coef_used * mean_kl,
                    "objective/entropy": exp.entropy,
                    **update_stats,
                    "value/mean": float(masked_mean(exp.values, mask)),
                    "value/returns_mean": float(masked_mean(exp.returns / exp.reward_scale, mask)),
                    "response/length": mean_len,
                    "response/length_drift": drift,
                    "response/eos_frac": float(exp.batch.ended_with_eos.float().mean()),
                    "lr/policy": scheds["policy"].get_last_lr()[0],
                    **exp.engine_check,
                    **timings,
                    "time/step": time.perf_counter() - t_step,
                }
                log.log(step, metrics)
                if cfg.sample_every and cfg.num_samples and (step % cfg.sample_every == 0 or step == 1):
                    rows = [r for r in _samples_rows(exp, batch_records, step, cfg.num_samples)
                            if r["id"] not in samples]
                    samples.extend(rows)
                    log.tb.add_text("samples", _samples_markdown(rows), step)
                if eval_prompts and cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
                    run_eval(step)
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
                    checkpoint(step)
                bar.update(task, completed=step, tokens=state["tokens"],
                           description=f"ppo reward {metrics['objective/reward']:+.3f} kl {mean_kl:.2f}")
                if on_step is not None:
                    on_step(step, metrics)
        final_eval = run_eval(step) if eval_prompts else {}
    except KeyboardInterrupt:
        # Between steps the models hold step `step` exactly; inside an update they hold half of
        # one, which must not be saved: the run then resumes from the last checkpoint.
        if not updating and step > saved_at:
            checkpoint(step)
        raise
    finally:
        for resource in (log, samples, eval_samples, owned_engine, owned_judge):
            if resource is not None:
                resource.close()

    # --- The result: a plain Hugging Face folder (and the value model beside it) ---
    policy.generation_config = generation_config
    restore_dropout(policy, policy_path)
    policy.to("cpu").save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    save_value_model(value_model, tokenizer, out / "value", cfg.rollout_engine.max_model_len,
                     cfg.reward_model or policy_path)
    summary = {
        "stage": "ppo", "policy": cfg.policy, "reward": cfg.reward, "reward_model": cfg.reward_model,
        "prompts": len(prompts), "rejected": len(rejects) + len(eval_rejects), "steps": step,
        "resumed_from": start, "eval_reward_start": state["eval_start"],
        "eval_reward_end": final_eval.get("eval/reward"), "eval_kl_end": final_eval.get("eval/kl"),
        "final_metrics": metrics, "kl_coef": kl_ctl.value, "seconds": round(time.time() - t_start, 1),
    }
    mark_finished(out, summary, cfg)
    return summary
