"""Rollouts for PPO: sampling responses through a cai engine, laying them out as padded tensors,
and the trainer-side forward passes (log-probs at the sampling temperature, per-token values).

Layout of a rollout batch (Q = widest prompt, R = longest response in the batch):

    input_ids  [B, Q + R]   pad .. pad  prompt tokens | response tokens  pad .. pad
                            `-- left padding --'        `-- right padding --'
    response_mask [B, R]    1 on response tokens, 0 on the right padding

Every prompt ends at column Q - 1, so the logits at columns Q - 1 .. Q + R - 2 predict the R
response tokens for every row at once. Position ids come from the attention mask
(cumsum - 1), exactly as transformers' `generate` builds them under left padding, so the
trainer scores the tokens in the same positions they were sampled in.

Waits on an engine go through `cai.engine.deadline.call_with_timeout`: a stuck engine becomes an
EngineError that says what was waited on and for how long, never a silent hang.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cai.engine import tokens
from cai.engine.base import Completion, Conversation, Engine, Sampling
from cai.engine.deadline import call_with_timeout
from cai.errors import EngineError
from cai.ppo_math import entropy_from_logits, logprobs_from_logits, masked_mean

# ---------------------------------------------------------------------------------------------
# Sampling and layout
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RolloutBatch:
    """Sampled responses laid out for the trainer (see the module docstring)."""

    input_ids: torch.Tensor
    """[B, Q + R] left-padded prompts followed by right-padded responses."""
    attention_mask: torch.Tensor
    """[B, Q + R] 1 on prompt and response tokens."""
    response_mask: torch.Tensor
    """[B, R] 1 on response tokens."""
    query_width: int
    """Q: every prompt ends at column Q - 1."""
    completions: tuple[Completion, ...]
    """What the engine returned, in prompt order (text, finish reason, engine log-probs)."""

    @property
    def responses(self) -> torch.Tensor:
        """[B, R] the response token ids (padding where the mask is 0)."""
        return self.input_ids[:, self.query_width:]

    @property
    def ended_with_eos(self) -> torch.Tensor:
        """[B] bool: the response ended on its own (EOS), not at the token budget."""
        return torch.tensor([c.finish_reason == "stop" for c in self.completions])

    def select(self, rows: torch.Tensor | Sequence[int]) -> RolloutBatch:
        rows = torch.as_tensor(rows, dtype=torch.long)
        return RolloutBatch(self.input_ids[rows], self.attention_mask[rows], self.response_mask[rows],
                            self.query_width, tuple(self.completions[i] for i in rows.tolist()))

    def to(self, device: torch.device) -> RolloutBatch:
        return RolloutBatch(self.input_ids.to(device), self.attention_mask.to(device),
                            self.response_mask.to(device), self.query_width, self.completions)


def prompt_ids(tokenizer, conversation: Conversation) -> list[int]:
    """The prompt's token ids exactly as every cai engine builds them (chat template, then
    the tokenizer without extra special tokens)."""
    return tokens.prompt_ids(tokenizer, conversation)


def layout(queries: Sequence[Sequence[int]], completions: Sequence[Completion], pad_id: int) -> RolloutBatch:
    """Left-pad the prompts and right-pad the responses into one [B, Q + R] tensor."""
    if len(queries) != len(completions):
        raise ValueError(f"{len(queries)} prompts but {len(completions)} completions")
    for i, c in enumerate(completions):
        if not c.token_ids:
            raise EngineError(f"completion {i} came back without token ids",
                              fix="PPO needs an engine that returns token ids (vllm or hf backend)")
    q_width = max(len(q) for q in queries)
    r_width = max(len(c.token_ids) for c in completions)
    batch = len(queries)
    input_ids = torch.full((batch, q_width + r_width), pad_id, dtype=torch.long)
    attention = torch.zeros((batch, q_width + r_width), dtype=torch.long)
    for i, (q, c) in enumerate(zip(queries, completions, strict=True)):
        input_ids[i, q_width - len(q):q_width] = torch.tensor(q, dtype=torch.long)
        input_ids[i, q_width:q_width + len(c.token_ids)] = torch.tensor(c.token_ids, dtype=torch.long)
        attention[i, q_width - len(q):q_width + len(c.token_ids)] = 1
    return RolloutBatch(input_ids, attention, attention[:, q_width:].clone(), q_width, tuple(completions))


def sample(engine: Engine, tokenizer, conversations: Sequence[Conversation], sampling: Sampling,
           seeds: Sequence[int], timeout_s: float) -> RolloutBatch:
    """One batched engine call for all prompts (per-prompt seeds), laid out as a RolloutBatch."""
    completions = call_with_timeout(lambda: engine.generate(list(conversations), sampling, seeds=list(seeds)),
                                    timeout_s, f"generating {len(conversations)} rollouts")
    queries = [prompt_ids(tokenizer, c) for c in conversations]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return layout(queries, completions, pad)


# ---------------------------------------------------------------------------------------------
# Trainer-side forward passes
# ---------------------------------------------------------------------------------------------


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted from each row's first real token (transformers' `generate` does the
    same under left padding; padded columns get 0 and are masked anyway)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def response_logits(model, batch: RolloutBatch) -> torch.Tensor:
    """[B, R, V] logits predicting each response token. Only the last R + 1 columns go through
    the LM head (`logits_to_keep`): the vocabulary projection of prompt tokens is never needed."""
    r_width = batch.response_mask.shape[1]
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                position_ids=position_ids(batch.attention_mask), logits_to_keep=r_width + 1, use_cache=False)
    return out.logits[:, :-1]


def response_logprobs(model, batch: RolloutBatch, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probs [B, R] of the response tokens at the sampling temperature, the logits [B, R, V]).
    Padding positions hold 0."""
    logits = response_logits(model, batch)
    logprobs = logprobs_from_logits(logits, batch.responses, temperature)
    return logprobs * batch.response_mask, logits


def response_values(value_model, batch: RolloutBatch) -> torch.Tensor:
    """[B, R] per-token values from a sequence-classification model (the reward model's
    architecture): its score head applied at every position, not only the last. V_t, the value
    of the state *before* response token t, is read at column Q - 1 + t."""
    backbone = getattr(value_model, value_model.base_model_prefix)
    hidden = backbone(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                      position_ids=position_ids(batch.attention_mask), use_cache=False).last_hidden_state
    q = batch.query_width
    values = value_model.score(hidden[:, q - 1:-1]).squeeze(-1).float()
    return values * batch.response_mask


def mean_entropy(logits: torch.Tensor, mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean per-token entropy (nats) of the distribution the responses were sampled from."""
    return masked_mean(entropy_from_logits(logits, temperature), mask)


# ---------------------------------------------------------------------------------------------
# Engine against trainer: do they run the same weights?
# ---------------------------------------------------------------------------------------------


def engine_logprob_temperature(engine: Engine, sampling_temperature: float) -> float:
    """The temperature at which an engine reports `Completion.logprobs`. vLLM reports the raw
    model distribution (its default logprobs_mode, "raw_logprobs"; measured: it matches the
    trainer at T = 1 to 1e-5 in fp32); transformers reports the processed scores it sampled
    from, i.e. after dividing by the sampling temperature."""
    from cai.engine.hf import HFEngine

    return sampling_temperature if isinstance(engine, HFEngine) else 1.0


@dataclass(frozen=True)
class LogprobCheck:
    mean_abs_diff: float
    max_abs_diff: float
    tokens: int


def compare_logprobs(batch: RolloutBatch, trainer_logprobs: torch.Tensor, tolerance: float) -> LogprobCheck:
    """Compare the engine's log-probs of the sampled tokens with the trainer's on the same
    tokens. A mean absolute difference over `tolerance` means the engine is not running the
    trainer's weights (a weight reload that did not take, a dtype or template mismatch): raise."""
    engine_lp = torch.zeros_like(trainer_logprobs, dtype=torch.float32, device="cpu")
    for i, c in enumerate(batch.completions):
        if c.logprobs is None or len(c.logprobs) != len(c.token_ids):
            raise EngineError(f"the engine returned no log-probs for rollout {i}",
                              fix="the engine must support Sampling(logprobs=True)")
        engine_lp[i, :len(c.logprobs)] = torch.tensor(c.logprobs, dtype=torch.float32)
    mask = batch.response_mask.cpu().bool()
    diff = (engine_lp - trainer_logprobs.detach().float().cpu()).abs()[mask]
    check = LogprobCheck(float(diff.mean()), float(diff.max()), int(mask.sum()))
    if not check.mean_abs_diff <= tolerance:  # also catches NaN
        raise EngineError(
            f"the rollout engine's token log-probs differ from the trainer's on the same tokens: "
            f"mean |difference| {check.mean_abs_diff:.4g} nats (max {check.max_abs_diff:.4g}) over "
            f"{check.tokens} tokens, above the tolerance {tolerance:g}. The engine is not sampling "
            "from the policy being trained",
            fix="if the last weight reload failed, restart the run (it resumes from the last "
                "checkpoint); a bf16 engine against an fp32 trainer needs a looser "
                "engine_logprob_tolerance, or set rollout_engine.dtype: float32",
        )
    return check


# ---------------------------------------------------------------------------------------------
# After a weight reload: does the engine run the new weights, or still the previous ones?
# ---------------------------------------------------------------------------------------------
#
# `compare_logprobs` bounds the engine-trainer gap, but a bf16 engine differs from the fp32
# trainer by about 0.07 nats per token while one update at the default learning rate moves the
# policy by about 0.05: no tolerance separates "new weights plus bf16 noise" from "previous
# weights plus bf16 noise". What separates them is the *direction* of the change. On a fixed
# probe (the previous rollout's sequences) the trainer knows its log-probs before the update (P)
# and after it (N); the engine reports its own (E). Regress the engine's change E - P on the
# trainer's change N - P: the slope is about 1 when the engine holds the new weights and about
# 0 when it kept the previous ones, whatever the engine's dtype noise, which does not follow the
# update's direction. Its standard error says whether the probe was big enough to tell.

RELOAD_MIN_AGREEMENT = 0.5
"""Below this slope the engine is judged to run the previous weights (new: ~1, previous: ~0)."""
RELOAD_MAX_STDERR = 0.2
"""Above this standard error the probe cannot tell 0 from 1 (the update moved the log-probs less
than the engine's numerical noise) and the check abstains."""
RELOAD_PROBE_TOKENS = 512
"""Response tokens in the probe (the first rollouts of the batch until this many)."""


@dataclass(frozen=True)
class ReloadCheck:
    agreement: float
    """Slope of the engine's log-prob change on the trainer's: ~1 new weights, ~0 previous."""
    stderr: float
    """Standard error of the slope (inf when the update changed nothing)."""
    drift: float
    """RMS change of the trainer's log-probs made by the update, nats per token."""
    tokens: int

    @property
    def conclusive(self) -> bool:
        return self.stderr <= RELOAD_MAX_STDERR


def reload_agreement(engine_lp: torch.Tensor, previous_lp: torch.Tensor, new_lp: torch.Tensor,
                     mask: torch.Tensor) -> ReloadCheck:
    """Least-squares slope (through 0) of E - P on N - P over the masked tokens, and its error."""
    m = mask.bool()
    change = (new_lp - previous_lp).double()[m]
    engine_change = (engine_lp - previous_lp).double()[m]
    n = int(change.numel())
    power = float((change * change).sum())
    if n < 2 or power == 0.0:
        return ReloadCheck(float("nan"), float("inf"), 0.0, n)
    slope = float((engine_change * change).sum()) / power
    residual = engine_change - slope * change
    stderr = float((residual * residual).sum() / (n - 1)) ** 0.5 / power ** 0.5
    return ReloadCheck(slope, stderr, (power / n) ** 0.5, n)


def probe_rows(batch: RolloutBatch, max_model_len: int, max_tokens: int = RELOAD_PROBE_TOKENS) -> list[int]:
    """The first rows of the batch whose responses hold at least max_tokens tokens (or all),
    leaving out the sequences that fill the engine's context: a prompt of max_prompt_tokens with
    a response cut at max_new_tokens may be exactly max_model_len long, and vLLM refuses to score
    a sequence that leaves no room for one generated token."""
    rows, total = [], 0
    lengths = batch.attention_mask.sum(-1).tolist()
    for i, n in enumerate(batch.response_mask.sum(-1).tolist()):
        if total >= max_tokens:
            break
        if lengths[i] + 1 > max_model_len:
            continue
        rows.append(i)
        total += int(n)
    return rows


def engine_probe_logprobs(engine: Engine, batch: RolloutBatch, timeout_s: float) -> torch.Tensor:
    """[B, R] the engine's teacher-forced log-probs of the batch's response tokens (raw, T = 1)."""
    seqs, starts = [], []
    for i in range(batch.input_ids.shape[0]):
        ids = batch.input_ids[i][batch.attention_mask[i].bool()].tolist()
        seqs.append(ids)
        starts.append(len(ids) - int(batch.response_mask[i].sum()))
    got = call_with_timeout(lambda: engine.probe_logprobs(seqs, starts), timeout_s,
                            f"scoring the {len(seqs)} reload-probe sequences")
    out = torch.zeros(batch.response_mask.shape, dtype=torch.float32)
    for i, lps in enumerate(got):
        out[i, :len(lps)] = torch.tensor(lps, dtype=torch.float32)
    return out


def check_reload(engine: Engine, batch: RolloutBatch, previous_lp: torch.Tensor, new_lp: torch.Tensor,
                 timeout_s: float) -> ReloadCheck:
    """After `engine.load_weights`: raise an EngineError when the engine still runs the previous
    weights. `batch` is the probe; `previous_lp` and `new_lp` are the trainer's raw (T = 1)
    log-probs of its responses before and after the update."""
    engine_lp = engine_probe_logprobs(engine, batch, timeout_s)
    mask = batch.response_mask.cpu()
    check = reload_agreement(engine_lp, previous_lp.float().cpu(), new_lp.float().cpu(), mask)
    if check.conclusive and not check.agreement >= RELOAD_MIN_AGREEMENT:
        raise EngineError(
            f"the weight reload did not take: on {check.tokens} probe tokens the engine's log-probs moved "
            f"{check.agreement:.2f} (+- {check.stderr:.2f}) times as far as the update moved the trainer's "
            f"({check.drift:.3g} nats per token RMS); 1 means the engine runs the new weights, 0 the previous ones",
            fix="restart the run (it resumes from the last checkpoint); if it happens again, the engine's "
                "reload_weights does not reach the weights its kernels use (check the vLLM version)")
    return check


# ---------------------------------------------------------------------------------------------
# One PPO step's experience
# ---------------------------------------------------------------------------------------------


def chunks(n: int, size: int) -> list[list[int]]:
    """Row indices 0 .. n-1 in consecutive groups of at most `size` (one forward pass each)."""
    return [list(range(i, min(i + size, n))) for i in range(0, n, size)]


@dataclass(frozen=True, kw_only=True)
class Rollout:
    """Phase 1 of a PPO step: the sampled batch and the trainer's passes over it. Tensors are
    [B, R] (response tokens) unless noted; all hold 0 on padding."""

    batch: RolloutBatch
    logprobs: torch.Tensor
    """log pi_old(a_t) at the sampling temperature (the trainer's, not the engine's)."""
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    """V_old(s_t): the value model before this step's update."""
    entropy: float
    """Mean per-token entropy of the sampling distribution."""
    engine_check: dict[str, float]
    """The engine/trainer log-prob agreement of this batch (engines with their own weights)."""
    check_logprobs: torch.Tensor | None = None
    """[B, R] engines with their own weights: the trainer's raw (T = 1) log-probs before the
    update, which the reload check after it compares with (check_reload)."""


@dataclass(frozen=True, kw_only=True)
class Experience(Rollout):
    """A scored rollout (phase 2, with the EOS trick of phase 3): what the update learns from."""

    raw_scores: torch.Tensor
    """[B] the reward model's (or judge's) score."""
    scores: torch.Tensor
    """[B] the score after the EOS trick."""

    @classmethod
    def scored(cls, rollout: Rollout, raw_scores: torch.Tensor, scores: torch.Tensor) -> Experience:
        return cls(**{f.name: getattr(rollout, f.name) for f in dataclasses.fields(rollout)},
                   raw_scores=raw_scores, scores=scores)


@dataclass(frozen=True)
class Advantages:
    """What phases 3-4 compute from an Experience (cai.ppo.compute_advantages); [B, R], 0 on
    padding."""

    kl: torch.Tensor
    """Per-token log pi - log pi_ref."""
    rewards: torch.Tensor
    """Per-token rewards (KL penalty, the score at the last token), after reward scaling."""
    reward_scale: torch.Tensor
    """[] the factor reward scaling multiplied the rewards by (1 / their std, or 1); values are
    multiplied by it before GAE and the value loss."""
    advantages: torch.Tensor
    """GAE advantages, whitened."""
    returns: torch.Tensor
    """In the scaled units of `rewards`."""

    @property
    def mean_kl(self) -> float:
        """The mean per-response KL to the reference, in nats."""
        return float(self.kl.sum(-1).mean())
