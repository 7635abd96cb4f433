"""What `cai ppo` measures: each step's metrics under stable names (objective/..., losses/...,
policy/..., value/..., response/..., lr/..., engine/..., time/...), a few sample generations
(samples.jsonl and TensorBoard text), and the evaluation on held-out prompts (eval/...,
eval_samples.jsonl)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from cai import provenance
from cai.data import PromptRecord
from cai.engine.base import Engine, Sampling
from cai.ppo_config import PPOConfig
from cai.ppo_engines import Scorer
from cai.ppo_guards import LengthDrift
from cai.ppo_math import masked_mean, penalize_missing_eos
from cai.ppo_models import PPOModels
from cai.rollout import Advantages, Experience, chunks, response_logprobs, sample
from cai.train_common import autocast


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


# ---------------------------------------------------------------------------------------------
# Evaluation on held-out prompts
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(cfg: PPOConfig, prompts: Sequence[PromptRecord], engine: Engine, models: PPOModels, scorer: Scorer,
             device: torch.device, step: int) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Mean reward (after the EOS trick), raw score, KL and length on the held-out prompts, with
    the same per-prompt seeds every time, so two evaluations differ only by the policy; and one
    row per response (for eval_samples.jsonl)."""
    sampling = Sampling(max_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=1.0, seed=None)
    scores, raw_scores, kls, lengths, ended, samples = [], [], [], [], [], []
    for rows in chunks(len(prompts), cfg.batch_size):
        recs = [prompts[i] for i in rows]
        seeds = [provenance.derive_seed(cfg.seed, "eval", r.id) for r in recs]
        batch = sample(engine, models.tokenizer, [r.conversation for r in recs], sampling, seeds,
                       cfg.engine_timeout_s).to(device)
        kl = torch.zeros(len(recs), device=device)
        for sub in chunks(len(recs), cfg.local_minibatch_size):
            mb = batch.select(sub)
            with autocast(device, cfg.precision):
                lp, _ = response_logprobs(models.policy, mb, cfg.temperature)
                ref_lp, _ = response_logprobs(models.ref, mb, cfg.temperature)
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
