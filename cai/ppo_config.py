"""The config of `cai ppo` (cai/ppo.py): every field documented once, right under it, and
checked after parsing with the numbers in the message."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from cai.config import EngineConfig
from cai.errors import ConfigError
from cai.ppo_math import REWARD_SCALINGS


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
    snapshot_every: int = 0
    """Save the policy every N steps as a loadable model folder, snapshots/step-NNNNNN/ (weights,
    config, tokenizer; kept after the run, listed in train_done.json), for `cai eval --hacking`
    (0: never). The last step's policy is the run folder itself."""

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
        for name in ("eval_every", "sample_every", "checkpoint_every", "snapshot_every", "num_samples"):
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
