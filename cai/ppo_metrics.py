"""What `cai ppo` logs each step: the metrics under stable names (objective/..., losses/...,
policy/..., value/..., response/..., lr/..., engine/..., time/...) and a few sample generations
(samples.jsonl and TensorBoard text)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from cai.data import PromptRecord
from cai.ppo_guards import LengthDrift
from cai.ppo_math import masked_mean
from cai.rollout import Advantages, Experience


def step_metrics(exp: Experience, adv: Advantages, update_stats: dict[str, float], kl_coef: float,
                 drift: LengthDrift, lr: float, engine_check: dict[str, float], timings: dict[str, float],
                 t_step: float) -> dict[str, float]:
    """One step's metrics row. `kl_coef` is the beta the step's rewards used; `t_step` the
    perf_counter at the step's start."""
    mask = exp.batch.response_mask
    mean_kl = adv.mean_kl
    return {
        "objective/reward": float(exp.scores.mean()),
        "objective/score": float(exp.raw_scores.mean()),
        "objective/kl": mean_kl,
        "objective/kl_coef": kl_coef,
        "objective/rlhf_reward": float(exp.scores.mean()) - kl_coef * mean_kl,
        "objective/entropy": exp.entropy,
        **update_stats,
        "value/mean": float(masked_mean(exp.values, mask)),
        "value/returns_mean": float(masked_mean(adv.returns / adv.reward_scale, mask)),
        "response/length": drift.length,
        "response/length_drift": drift.drift,
        "response/eos_frac": float(exp.batch.ended_with_eos.float().mean()),
        "lr/policy": lr,
        **engine_check,
        **timings,
        "time/step": time.perf_counter() - t_step,
    }


def sample_rows(exp: Experience, adv: Advantages, records_: Sequence[PromptRecord], step: int,
                n: int) -> list[dict[str, Any]]:
    """The first `n` responses of a step, with their prompt, score, reward and KL."""
    seq_kl = adv.kl.sum(-1)
    return [{"id": f"step-{step}-{i}", "step": step, "prompt_id": records_[i].id, "prompt": records_[i].conversation,
             "response": exp.batch.completions[i].text, "finish_reason": exp.batch.completions[i].finish_reason,
             "score": round(float(exp.raw_scores[i]), 4), "reward": round(float(exp.scores[i]), 4),
             "kl": round(float(seq_kl[i]), 4)} for i in range(min(n, len(records_)))]


def samples_markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table (TensorBoard's text tab)."""
    def cell(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    lines = ["| prompt | response | reward | kl |", "|---|---|---|---|"]
    lines += [f"| {cell(r['prompt'][-1]['content'])} | {cell(r['response'])} | {r['reward']} | {r['kl']} |"
              for r in rows]
    return "\n".join(lines)
