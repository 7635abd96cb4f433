"""`cai ppo`: the RL stage. The policy learns what the reward model (trained on AI feedback)
prefers, while a per-token KL penalty keeps it close to where it started (method.md §4).

Four models: the policy (trained), a frozen reference copy of it, the reward model (frozen) and
a value model (trained, initialized from the reward model). One PPO step (`train_loop`):

    1. rollout    sample one response per prompt through the engine, at temperature T; the
                  trainer recomputes log-probs (policy and reference, at T) and values
    2. score      reward model (or, with `reward: judge`, the AI judge: direct RLAIF, §2) at the
                  end of each response
    3. penalize   responses cut off at the token budget get a fixed penalty instead (EOS trick);
                  r_t = -beta * (log pi - log pi_ref) at every token, + the score at the last
    4. advantages rewards divided by their std (never shifted); GAE (gamma 1, lambda 0.95);
                  advantages whitened
    5. update     ppo_epochs passes over shuffled minibatches: clipped policy loss, clipped
                  value loss; then the learning-rate schedules and beta (the KL controller)
    6. sync       load the new weights into the rollout engine (vLLM) and check that they took
    7. bookkeep   log, sample generations, evaluate, checkpoint

Beside it: the config (cai/ppo_config.py), the arithmetic (cai/ppo_math.py, pure functions),
the rollout layout and forward passes (cai/rollout.py), the models (cai/ppo_models.py), the
scorer and the rollout engine (cai/ppo_engines.py), the state and its checkpoints
(cai/ppo_state.py), the guard rails (cai/ppo_guards.py) and the logged metrics
(cai/ppo_metrics.py). Output: the trained policy as a Hugging Face folder in `out`, the value
model in out/value, metrics.jsonl + tb/ (TensorBoard), samples.jsonl, checkpoints/ while running.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cai import provenance, records
from cai.checkpoint import finished_run, mark_finished, seed_everything, set_rng_state
from cai.data import PromptRecord, Reject, read_prompts
from cai.engine.base import Engine, Sampling
from cai.errors import InputError
from cai.ppo_config import PPOConfig
from cai.ppo_engines import Scorer, holds_own_weights, make_rollout_engine, make_scorer, sync_weights
from cai.ppo_guards import (
    LengthDriftWarning,
    TrainingStopped,
    check_losses,
    check_scores,
    kl_ran_away,
    kl_stopped,
    length_drift,
    warn_length_drift,
)
from cai.ppo_math import (
    gae,
    logprobs_from_logits,
    masked_whiten,
    penalize_missing_eos,
    per_token_rewards,
    policy_loss,
    reward_scale,
    scale_rewards,
    value_loss,
)
from cai.ppo_metrics import evaluate, sample_rows, samples_markdown, step_metrics
from cai.ppo_models import PPOModels, load_models, save_models
from cai.ppo_state import Optimizers, PPOState, make_optimizers, resume, run_inputs, save_state
from cai.progress import make_progress
from cai.rollout import (
    Advantages,
    Experience,
    Rollout,
    check_reload,
    chunks,
    compare_logprobs,
    engine_logprob_temperature,
    mean_entropy,
    probe_rows,
    prompt_ids,
    response_logprobs,
    response_values,
    sample,
)
from cai.snapshots import drop_after, list_snapshots, save_snapshot
from cai.train_common import MetricsLog, autocast, batch_indices, resolve_device

# The names the CLI and tests import from here.
__all__ = ["LengthDriftWarning", "PPOConfig", "TrainingStopped", "compute_advantages", "train_ppo"]


# ---------------------------------------------------------------------------------------------
# The prompts
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prompts:
    """The training and held-out prompts that fit max_prompt_tokens, and those that did not."""

    train: list[PromptRecord]
    eval: list[PromptRecord]
    rejects: list[Reject]
    longest: int
    """The longest prompt kept, in tokens."""


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


def load_run_prompts(cfg: PPOConfig, tokenizer) -> Prompts:
    train, rejects, longest = load_prompts(cfg.prompts, cfg, tokenizer)
    held_out, eval_rejects, eval_longest = (load_prompts(cfg.eval_prompts, cfg, tokenizer) if cfg.eval_prompts
                                            else ([], [], 0))
    return Prompts(train, held_out, rejects + eval_rejects, max(longest, eval_longest))


def step_prompts(cfg: PPOConfig, prompts: Sequence[PromptRecord], step: int) -> tuple[list[PromptRecord], list[int]]:
    """A step's prompts and their sampling seeds. The data position is step * batch_size in an
    endless stream of seeded epochs, so a resumed run draws the same prompts."""
    idx = batch_indices(len(prompts), cfg.seed, step * cfg.batch_size, cfg.batch_size)
    batch = [prompts[i] for i in idx]
    return batch, [provenance.derive_seed(cfg.seed, "rollout", step, i, r.id) for i, r in enumerate(batch)]


# ---------------------------------------------------------------------------------------------
# 1-4: rollout, score, penalize, advantages
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def rollout(cfg: PPOConfig, records_: Sequence[PromptRecord], seeds: Sequence[int], engine: Engine,
            models: PPOModels, device: torch.device) -> tuple[Rollout, float]:
    """Phase 1: one response per prompt from the engine, then the trainer's log-probs (policy and
    reference, at the sampling temperature), values and entropy; and the seconds it took."""
    t0 = time.perf_counter()
    check = holds_own_weights(engine)
    sampling = Sampling(max_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=1.0, seed=None,
                        logprobs=check)
    batch = sample(engine, models.tokenizer, [r.conversation for r in records_], sampling, seeds,
                   cfg.engine_timeout_s).to(device)

    logprobs, ref_logprobs, values, check_lps, entropy_sum = [], [], [], [], 0.0
    t_engine = engine_logprob_temperature(engine, cfg.temperature)
    for rows in chunks(len(records_), cfg.local_minibatch_size):
        mb = batch.select(rows)
        with autocast(device, cfg.precision):
            lp, logits = response_logprobs(models.policy, mb, cfg.temperature)
            ref_lp, _ = response_logprobs(models.ref, mb, cfg.temperature)
            values.append(response_values(models.value, mb))
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
    return Rollout(batch=batch, logprobs=torch.cat(logprobs), ref_logprobs=torch.cat(ref_logprobs),
                   values=torch.cat(values), entropy=entropy_sum / max(float(batch.response_mask.sum()), 1.0),
                   engine_check=engine_check,
                   check_logprobs=torch.cat(check_lps) if check else None), time.perf_counter() - t0


@torch.no_grad()
def score(cfg: PPOConfig, rolled: Rollout, records_: Sequence[PromptRecord], scorer: Scorer, step: int,
          device: torch.device) -> tuple[Experience, float]:
    """Phase 2: the reward model's (or the judge's) score of each response, and the EOS trick of
    phase 3; and the seconds it took."""
    t0 = time.perf_counter()
    raw = scorer([r.conversation for r in records_], [c.text for c in rolled.batch.completions], step)
    raw_scores = torch.tensor(raw, dtype=torch.float32, device=device)
    check_scores(raw_scores, raw, step)
    scores = penalize_missing_eos(raw_scores, rolled.batch.ended_with_eos.to(device), cfg.missing_eos_penalty)
    return Experience.scored(rolled, raw_scores, scores), time.perf_counter() - t0


@torch.no_grad()
def compute_advantages(exp: Experience, cfg: PPOConfig, kl_coef: float) -> Advantages:
    """Phases 3 and 4: per-token rewards with the KL penalty, reward scaling, GAE, whitening."""
    mask = exp.batch.response_mask
    r = per_token_rewards(exp.logprobs, exp.ref_logprobs, exp.scores, mask, kl_coef)
    # Reward scaling: divided by the std, never shifted (a shift would reward length).
    scale = reward_scale(r.rewards, mask, cfg.reward_scaling)
    rewards = scale_rewards(r.rewards, mask, cfg.reward_scaling)
    # The value model predicts returns in the reward model's normalized units (its head starts as
    # the reward model's, gain and bias folded in); GAE and the value loss see its predictions in
    # this batch's scaled units, so a model that predicts the returns exactly gives advantage 0.
    advantages, returns = gae(rewards, exp.values * scale, mask, cfg.gamma, cfg.lam)
    return Advantages(kl=r.kl, rewards=rewards, reward_scale=scale, advantages=masked_whiten(advantages, mask),
                      returns=returns)


# ---------------------------------------------------------------------------------------------
# 5: the PPO update
# ---------------------------------------------------------------------------------------------


def minibatch_backward(exp: Experience, adv: Advantages, mb_rows: torch.Tensor, cfg: PPOConfig, models: PPOModels,
                       device: torch.device) -> dict[str, float]:
    """Accumulate one minibatch's gradients, local_minibatch_size rows per pass; returns its
    token-weighted loss statistics."""
    mb_tokens = float(exp.batch.response_mask[mb_rows.to(device)].sum())
    mb_stats: dict[str, float] = defaultdict(float)
    for micro in range(0, cfg.minibatch_size, cfg.local_minibatch_size):
        rows = mb_rows[micro:micro + cfg.local_minibatch_size].to(device)
        mb = exp.batch.select(rows)
        mask = mb.response_mask
        # Token-weighted: the summed gradients equal those of one pass over the minibatch.
        weight = float(mask.sum()) / mb_tokens
        with autocast(device, cfg.precision):
            new_logprobs, logits = response_logprobs(models.policy, mb, cfg.temperature)
            new_values = response_values(models.value, mb)
        pl = policy_loss(new_logprobs, exp.logprobs[rows], adv.advantages[rows], mask, cfg.cliprange)
        scale = adv.reward_scale  # values in the scaled units of the returns (compute_advantages)
        vl = value_loss(new_values * scale, exp.values[rows] * scale, adv.returns[rows], mask, cfg.cliprange_value)
        ((pl.pg_loss + vl.vf_loss) * weight).backward()
        with torch.no_grad():
            for name, v in (("losses/policy", pl.pg_loss), ("losses/value", vl.vf_loss),
                            ("policy/clipfrac", pl.clipfrac), ("policy/approx_kl", pl.approx_kl),
                            ("policy/ratio", pl.ratio), ("value/clipfrac", vl.vf_clipfrac),
                            ("policy/entropy", mean_entropy(logits, mask, cfg.temperature))):
                mb_stats[name] += float(v) * weight
    return mb_stats


def ppo_update(exp: Experience, adv: Advantages, cfg: PPOConfig, step: int, models: PPOModels, optim: Optimizers,
               device: torch.device) -> dict[str, float]:
    """ppo_epochs passes over shuffled minibatches; one optimizer step per minibatch. Returns the
    loss statistics averaged over the minibatches."""
    stats: dict[str, float] = defaultdict(float)
    n_updates = 0
    for epoch in range(cfg.ppo_epochs):
        # The order comes from (seed, step, epoch) alone, so a resumed run shuffles identically.
        gen = torch.Generator().manual_seed(provenance.derive_seed(cfg.seed, "minibatches", step, epoch))
        order = torch.randperm(cfg.batch_size, generator=gen)
        for mb_index, start in enumerate(range(0, cfg.batch_size, cfg.minibatch_size)):
            mb_stats = minibatch_backward(exp, adv, order[start:start + cfg.minibatch_size], cfg, models, device)
            check_losses(mb_stats, step, epoch, mb_index)  # before the step: a NaN update is never applied
            for model, opt in ((models.policy, optim.policy), (models.value, optim.value)):
                if cfg.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                opt.step()
                opt.zero_grad(set_to_none=True)
            for k, v in mb_stats.items():
                stats[k] += v
            n_updates += 1
    return {k: v / n_updates for k, v in stats.items()}


# ---------------------------------------------------------------------------------------------
# 6: weight sync
# ---------------------------------------------------------------------------------------------


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


def sync(cfg: PPOConfig, engine: Engine, exp: Experience, policy,
         device: torch.device) -> tuple[dict[str, float], dict[str, float]]:
    """Phase 6: an engine holding its own weights gets the updated policy, and the reload is
    checked. Returns ({"time/weight_sync": seconds} or {}, the step's engine checks)."""
    if not holds_own_weights(engine):
        return {}, exp.engine_check
    seconds = sync_weights(engine, policy, cfg.engine_timeout_s)
    return {"time/weight_sync": seconds}, {**exp.engine_check, **verify_reload(cfg, engine, exp, policy, device)}


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """What the loop works with, fixed for the whole run (the models and optimizers inside it
    learn; what changes between steps is a PPOState)."""

    cfg: PPOConfig
    out: Path
    device: torch.device
    models: PPOModels
    optim: Optimizers
    prompts: Prompts
    scorer: Scorer
    engine: Engine
    """The rollout engine."""
    log: MetricsLog
    samples: records.JsonlStore
    eval_samples: records.JsonlStore


def open_run(cfg: PPOConfig, out: Path, device: torch.device, models: PPOModels, optim: Optimizers,
             prompts: Prompts, start: int, rollout_engine: Engine | None, judge_engine: Engine | None,
             stack: contextlib.ExitStack) -> Run:
    """Start the engines (the judge behind the scorer, the rollout engine) and open the logs of a
    run resuming at `start`; `stack` closes what is opened here."""
    scorer, owned_judge = make_scorer(cfg, device, judge_engine, prompts.longest)
    if owned_judge is not None:
        stack.callback(owned_judge.close)
    in_sync = False  # an engine handed in may hold any weights
    if rollout_engine is None:
        rollout_engine = make_rollout_engine(cfg, models.policy, models.tokenizer, models.path)
        stack.callback(rollout_engine.close)
        in_sync = start == 0  # a fresh vLLM engine holds the starting policy; a resumed one does not
    if holds_own_weights(rollout_engine) and not in_sync:
        sync_weights(rollout_engine, models.policy, cfg.engine_timeout_s)
    log = MetricsLog(out, start)
    stack.callback(log.close)
    samples = records.JsonlStore(out / "samples.jsonl")
    stack.callback(samples.close)
    eval_samples = records.JsonlStore(out / "eval_samples.jsonl")
    stack.callback(eval_samples.close)
    return Run(cfg, out, device, models, optim, prompts, scorer, rollout_engine, log, samples, eval_samples)


def run_eval(run: Run, step: int) -> dict[str, float]:
    """Evaluate on the held-out prompts; log the metrics and the generations."""
    result, rows = evaluate(run.cfg, run.prompts.eval, run.engine, run.models, run.scorer, run.device, step)
    run.log.log(step, result)
    run.eval_samples.extend([r for r in rows if r["id"] not in run.eval_samples])
    return result


def log_step(run: Run, step: int, metrics: dict[str, float], exp: Experience, adv: Advantages,
             batch_records: Sequence[PromptRecord]) -> None:
    """The step's metrics row; every sample_every steps (and after the first) a few generations."""
    cfg = run.cfg
    run.log.log(step, metrics)
    if cfg.sample_every and cfg.num_samples and (step % cfg.sample_every == 0 or step == 1):
        rows = [r for r in sample_rows(exp, adv, batch_records, step, cfg.num_samples) if r["id"] not in run.samples]
        run.samples.extend(rows)
        run.log.tb.add_text("samples", samples_markdown(rows), step)


def save(run: Run, state: PPOState) -> int:
    """Checkpoint the run at state.step; returns that step."""
    return save_state(run.out, run.cfg, state, run.models.policy, run.models.value, run.optim,
                      len(run.prompts.train))


def train_loop(run: Run, state: PPOState, progress: bool, on_step: Callable[[int, dict[str, float]], None] | None
               ) -> tuple[PPOState, dict[str, float], dict[str, float]]:
    """PPO steps from state.step to cfg.steps, then the final evaluation. Returns the final state,
    the last step's metrics and the final evaluation."""
    cfg, optim = run.cfg, run.optim
    saved_at, updating, metrics = state.step, False, {}
    try:
        if run.prompts.eval and state.step == 0:
            state = dataclasses.replace(state, eval_start=run_eval(run, 0)["eval/reward"])
        bar = make_progress("steps")
        bar.disable = not progress
        with bar:
            task = bar.add_task("ppo", total=cfg.steps, completed=state.step, tokens=state.tokens)
            while state.step < cfg.steps:
                t_step = time.perf_counter()
                # 1. Rollout: this step's prompts, one response each (no grad).
                batch_records, seeds = step_prompts(cfg, run.prompts.train, state.step)
                rolled, t_rollout = rollout(cfg, batch_records, seeds, run.engine, run.models, run.device)
                # 2. Score.
                exp, t_scoring = score(cfg, rolled, batch_records, run.scorer, state.step, run.device)
                # 3-4. The per-token KL penalty, reward scaling, GAE, whitening.
                adv = compute_advantages(exp, cfg, optim.kl_ctl.value)
                if kl_ran_away(cfg, adv.mean_kl):  # guard rail: stop, with a checkpoint of the last step
                    saved_at = save(run, state) if state.step > saved_at else saved_at
                    raise kl_stopped(cfg, adv.mean_kl, state.step, saved_at)

                # 5. PPO epochs over minibatches; the schedules; beta. From here until the step's
                # state is complete, a Ctrl-C must not save a checkpoint.
                updating = True
                t0 = time.perf_counter()
                update_stats = ppo_update(exp, adv, cfg, state.step, run.models, optim, run.device)
                optim.step_schedulers()
                t_training = time.perf_counter() - t0
                kl_coef = optim.kl_ctl.value  # the beta this step's rewards used
                optim.kl_ctl.update(adv.mean_kl, cfg.batch_size)
                drift = length_drift(cfg, exp.batch.response_mask, state.first_length, state.length_warned)
                state = state.advance(drift, int(exp.batch.response_mask.sum()))
                updating = False
                warn_length_drift(cfg, drift, state.step)

                # 6. Send the new weights to the rollout engine.
                sync_timings, engine_check = sync(cfg, run.engine, exp, run.models.policy, run.device)

                # 7. Log, evaluate, checkpoint.
                lr = optim.schedulers["policy"].get_last_lr()[0]
                timings = {"time/rollout": t_rollout, "time/scoring": t_scoring, "time/training": t_training,
                           **sync_timings}
                metrics = step_metrics(exp, adv, update_stats, kl_coef, drift, lr, engine_check, timings, t_step)
                log_step(run, state.step, metrics, exp, adv, batch_records)
                if run.prompts.eval and cfg.eval_every and state.step % cfg.eval_every == 0 and state.step < cfg.steps:
                    run_eval(run, state.step)
                if cfg.snapshot_every and state.step % cfg.snapshot_every == 0 and state.step < cfg.steps:
                    m = run.models  # before the checkpoint: a checkpoint at step N implies snapshot N
                    save_snapshot(run.out, state.step, m.policy, m.tokenizer, m.generation_config, m.path)
                if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0 and state.step < cfg.steps:
                    saved_at = save(run, state)
                bar.update(task, completed=state.step, tokens=state.tokens,
                           description=f"ppo reward {metrics['objective/reward']:+.3f} kl {adv.mean_kl:.2f}")
                if on_step is not None:
                    on_step(state.step, metrics)
        final_eval = run_eval(run, state.step) if run.prompts.eval else {}
    except KeyboardInterrupt:
        # Between steps the models hold step `state.step` exactly; inside an update they hold half
        # of one, which must not be saved: the run then resumes from the last checkpoint.
        if not updating and state.step > saved_at:
            save(run, state)
        raise
    return state, metrics, final_eval


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

    # Models (the policy, its frozen reference, the value model), prompts, optimizers.
    models = load_models(cfg.policy, cfg.reward_model if cfg.reward == "rm" else None, device)
    prompts = load_run_prompts(cfg, models.tokenizer)
    if prompts.rejects:
        records.write_jsonl_atomic(out / "rejects.jsonl", [r.to_dict() for r in prompts.rejects])
    optim = make_optimizers(cfg, models.policy, models.value)
    # Resume: models, optimizers, schedulers, beta and the state; the RNG once the engines are up.
    state, resume_rng = resume(out, models.policy, models.value, optim, len(prompts.train))
    start = state.step
    drop_after(out, start)  # snapshots past the checkpoint are redone with this run's weights
    if cfg.snapshot_every and 0 < start < cfg.steps and start % cfg.snapshot_every == 0:
        # A Ctrl-C while snapshot N was written still saved checkpoint N: the models hold step N
        # exactly now, so write it here (a no-op when it is complete), or it would never be.
        save_snapshot(out, start, models.policy, models.tokenizer, models.generation_config, models.path)
    with contextlib.ExitStack() as stack:
        run = open_run(cfg, out, device, models, optim, prompts, start, rollout_engine, judge_engine, stack)
        if resume_rng is not None:
            set_rng_state(resume_rng)  # after the engines: starting vLLM reseeds the global RNGs
        state, metrics, final_eval = train_loop(run, state, progress, on_step)

    # The result: a plain Hugging Face folder (and the value model beside it).
    save_models(models, out, cfg.rollout_engine.max_model_len, cfg.reward_model or models.path)
    summary = {
        "stage": "ppo", "policy": cfg.policy, "reward": cfg.reward, "reward_model": cfg.reward_model,
        "prompts": len(prompts.train), "rejected": len(prompts.rejects), "steps": state.step,
        "resumed_from": start, "eval_reward_start": state.eval_start,
        "eval_reward_end": final_eval.get("eval/reward"), "eval_kl_end": final_eval.get("eval/kl"),
        "final_metrics": metrics, "kl_coef": optim.kl_ctl.value, "seconds": round(time.time() - t_start, 1),
        "device": device.type, "response_tokens": state.tokens,
    }
    if cfg.snapshot_every:  # the key only where asked for, so a run without snapshots writes what it did
        summary["snapshots"] = {str(k): str(d.relative_to(out)) for k, d in list_snapshots(out).items()}
    mark_finished(out, summary, cfg)
    return summary
