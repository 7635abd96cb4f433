"""The engines a `cai ppo` run drives: the scorer (the reward model, or the AI judge for direct
RLAIF) and the rollout engine, with the weight sync that keeps an engine holding its own copy of
the weights (vLLM) on the current policy. Every wait on an engine has a deadline
(cai.engine.deadline.call_with_timeout)."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable

import torch

from cai import provenance
from cai.engine.base import Conversation, Engine
from cai.engine.deadline import call_with_timeout
from cai.ppo_config import PPOConfig

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
