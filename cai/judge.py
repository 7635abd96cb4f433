"""The AI judge (method.md §2): pairwise soft labels scored in both orders, and the d-RLAIF
single-response score.

Pairwise, for a conversation and two responses x and y:

1. A comparison principle is drawn per pair (seeded by the pair id; K of them with
   `principles_per_pair`, the CAI paper's ensemble).
2. The judge prompt (`cai.prompts.judge_prompt`: the constitution's labeled few-shot
   comparisons, then the conversation, the principle's question and the two quoted responses)
   is rendered with the judge's chat template, and the answer cue ("The answer is: (") is
   appended, so the judge's next token is the option letter.
3. The log-probabilities of "A" and "B" after the cue are read in one prefill (no sampling),
   and normalized over the two options: P(A).
4. The same with x and y swapped. Position bias is large in small judges (RLAIF: the same
   position wins both orders for 18-56% of pairs), so the label is the average of both orders:
   p = P(x > y) = (P_xy(A) + 1 - P_yx(A)) / 2, where P_xy(A) is P(A) with x shown as (A).
   The orders "agree" when both pick the same response.
5. With K principles, p is the mean of the K debiased labels.

With `cot`, the judge first writes a rationale ("Let's think step by step:"), then the options
are scored after it. Such labels are overconfident, so each one is clamped (CAI: to [0.4, 0.6])
before the orders and principles are averaged.

Every pair, principle and order becomes one prompt, and all prompts of a batch go to the engine
in one call (two with CoT: the rationales, then the option scores); A and B share their prompt
(the engine's single-token fast path) and every prompt shares the few-shot prefix (prefix cache).

d-RLAIF (`score_responses`): the judge rates one response 1-10; the reward is the probability-
weighted mean score rescaled to [-1, 1].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from cai import config, models, provenance
from cai.config import EngineConfig
from cai.constitution import Constitution, Principle
from cai.engine import Conversation, Engine, Rendered, Sampling
from cai.errors import ConfigError
from cai.prompts import judge_answer_cue, judge_prompt, score_answer_cue, score_prompt
from cai.schema import Verdict

OPTIONS = ("A", "B")
"""The option letters scored after the cue; the templates write them as (A) and (B)."""
COT_CUE = "Let's think step by step:"
"""Starts the judge's answer when `cot` is on (CAI's chain-of-thought prompt)."""
SCORES = tuple(range(1, 11))
"""The d-RLAIF rating scale."""


@dataclass(frozen=True)
class JudgeOptions:
    """How pairs are judged. Shared by `cai label` and `cai judge eval` (YAML section `judging:`)."""

    principles_per_pair: int = 1
    """K: comparison principles drawn per pair; the label is the mean over them. CAI found an
    ensemble of principles "notably more robust" than one. Costs K times the prompts."""
    distinct_principles: bool = True
    """With K > 1, draw K different principles (weighted, without replacement). Off: draw with
    replacement, so a heavy principle can count twice."""
    cot: bool = False
    """Write a rationale before scoring the options (greedy by default, see cot_temperature).
    Costs decoding; the plain judge is prefill only."""
    cot_max_tokens: int = 192
    """Most tokens of a rationale."""
    cot_temperature: float = 0.0
    """Rationale sampling temperature. RLAIF: greedy rationales agreed best with humans (78.0%),
    sampled ones less (72.8% at T=1 with 16 samples)."""
    cot_clamp: tuple[float, float] = (0.4, 0.6)
    """CoT labels are clamped to [low, high] (CAI §4.2: 40-60% worked best; unclamped CoT labels
    drove RL to extreme behaviour). (0, 1) turns clamping off. Ignored without `cot`."""

    def __post_init__(self) -> None:
        if self.principles_per_pair < 1:
            raise ValueError(f"principles_per_pair must be >= 1, got {self.principles_per_pair}")
        if self.cot_max_tokens < 1:
            raise ValueError(f"cot_max_tokens must be >= 1, got {self.cot_max_tokens}")
        if self.cot_temperature < 0:
            raise ValueError(f"cot_temperature must be >= 0, got {self.cot_temperature}")
        low, high = self.cot_clamp
        if not 0.0 <= low <= 0.5 <= high <= 1.0:
            raise ValueError(f"cot_clamp must satisfy 0 <= low <= 0.5 <= high <= 1, got {self.cot_clamp}")


def resolve_judge_engine(cfg: EngineConfig) -> EngineConfig:
    """The judge's engine settings: dtype `auto` means float32 on a CPU.

    Soft labels are differences of option log-probs, and bf16 logits are coarse at the scale of
    a language model's logits (around 30, where bf16 steps by 0.25): with the default model on the
    hh-rlhf dev pairs, per-order log-prob gaps came out in multiples of 0.25 nats and half of the
    debiased labels were exactly 0.5 (docs/label.md). On a GPU `auto` stays the engine's choice
    (a large judge in float32 would double its memory); pass --dtype float32 there for exact labels.
    """
    if cfg.dtype != "auto" or cfg.backend == "http":
        return cfg
    import torch

    return cfg if torch.cuda.is_available() else replace(cfg, dtype="float32")


# --- The arithmetic (pure functions) -------------------------------------------------------------


def option_probability(logprob_a: float, logprob_b: float) -> float:
    """P(A) normalized over the two options: exp(a) / (exp(a) + exp(b)).

    Written with tanh, which is exact for any gap (no overflow); two impossible options give 0.5.
    """
    if logprob_a == logprob_b:  # also both -inf, where the difference is undefined
        return 0.5
    return 0.5 * (1.0 + math.tanh((logprob_a - logprob_b) / 2.0))


def debias(p_xy: float, p_yx: float) -> float:
    """P(x > y) from both orders: P_xy(A) is P(A) with x shown first, P_yx(A) with y shown first.
    A judge that only ever picks (A) gets 0.5, whatever it says."""
    return (p_xy + 1.0 - p_yx) / 2.0


def orders_agree(p_xy: float, p_yx: float) -> bool:
    """Whether both orders prefer the same response (Zheng et al.'s position consistency).
    An order with no preference (exactly 0.5) agrees with nothing."""
    return (p_xy > 0.5 and p_yx < 0.5) or (p_xy < 0.5 and p_yx > 0.5)


def clamp(p: float, bounds: tuple[float, float]) -> float:
    low, high = bounds
    return min(max(p, low), high)


def combine(p_xy: Sequence[float], p_yx: Sequence[float],
            bounds: tuple[float, float] | None = None) -> tuple[float, bool]:
    """The label of one pair from its K principles' per-order probabilities.

    Each judgment is clamped to `bounds` first (CoT), then each principle's two orders are
    averaged (`debias`), then the K principles. Returns (p = P(x > y), orders agree), where
    agreement is judged on the principle-averaged per-order probabilities.
    """
    if len(p_xy) != len(p_yx) or not p_xy:
        raise ValueError(f"need the same non-zero number of judgments per order, got {len(p_xy)} and {len(p_yx)}")
    if bounds is not None:
        p_xy = [clamp(p, bounds) for p in p_xy]
        p_yx = [clamp(p, bounds) for p in p_yx]
    p = sum(debias(a, b) for a, b in zip(p_xy, p_yx, strict=True)) / len(p_xy)
    return p, orders_agree(sum(p_xy) / len(p_xy), sum(p_yx) / len(p_yx))


def is_tie(p: float, threshold: float) -> bool:
    """A preference weaker than `threshold` away from 0.5 is a tie."""
    return abs(p - 0.5) < threshold


def expected_score(score_logprobs: Sequence[float]) -> float:
    """The probability-weighted mean of the scores 1..n, the log-probs normalized over the scale."""
    top = max(score_logprobs)
    if top == -math.inf:
        return (1 + len(score_logprobs)) / 2.0
    weights = [math.exp(lp - top) for lp in score_logprobs]
    return sum(s * w for s, w in zip(range(1, len(weights) + 1), weights, strict=True)) / sum(weights)


def score_to_reward(score: float, low: int = SCORES[0], high: int = SCORES[-1]) -> float:
    """A rating on [low, high] rescaled to [-1, 1] (d-RLAIF)."""
    return (2.0 * score - low - high) / (high - low)


# --- Pairwise judging, batched -------------------------------------------------------------------


@dataclass(frozen=True)
class ResponsePair:
    """Two responses to one conversation, to be compared. Neither order is privileged: both are
    scored."""

    id: str
    """Stable pair id: seeds the principle draw, keys the stored judgment."""
    conversation: Conversation
    """The conversation the responses answer (ends with the user turn)."""
    x: str
    y: str
    draw_id: str = ""
    """Seeds the principle draw instead of `id` when set: `cai eval` gives every policy's pair for
    one prompt the same draw id, so all policies are judged under the same principles there."""

    @property
    def principle_key(self) -> str:
        return self.draw_id or self.id


@dataclass(frozen=True)
class Judgment:
    """The judge's verdict on one pair."""

    pair_id: str
    status: Literal["judged", "too_long"]
    """too_long: a judge prompt did not fit the judge's context; nothing was scored."""
    principles: tuple[Principle, ...]
    p: float | None = None
    """P(x better than y): both orders averaged (and CoT-clamped), mean over the principles."""
    agree: bool | None = None
    """Both orders preferred the same response (principle-averaged)."""
    p_xy: tuple[float, ...] = ()
    """Per principle: P(A) with x shown as (A): the probability that x wins in that order."""
    p_yx: tuple[float, ...] = ()
    """Per principle: P(A) with y shown as (A): the probability that y wins in that order."""
    logprobs: tuple[tuple[float, float, float, float], ...] = ()
    """Per principle, the raw option log-probs: (xy: A, B, yx: A, B). exp(A) + exp(B) is the mass
    the judge puts on answering at all; a small mass means it is off-format."""
    rationales: tuple[tuple[str, str], ...] = ()
    """CoT only: per principle, the rationales written in the xy and the yx order."""
    prompt_tokens: int = 0
    """Tokens of every prompt scored for this pair (both orders, all principles)."""
    detail: str = ""
    """Why a pair was not judged."""

    def verdict(self) -> Verdict:
        """The verdict as stored (in a label or judge-eval judgment): principles by id and hash."""
        return Verdict(status=self.status, p=self.p, agree=self.agree, p_xy=self.p_xy, p_yx=self.p_yx,
                       logprobs=self.logprobs, rationales=self.rationales,
                       principles=tuple(p.id for p in self.principles),
                       principle_hashes=tuple(p.hash for p in self.principles),
                       prompt_tokens=self.prompt_tokens, detail=self.detail)


def check_options(c: Constitution, options: JudgeOptions) -> None:
    """Refuse, before any work, options this constitution cannot serve."""
    if not c.principles:
        raise ConfigError(f"{c.name} ({c.path}) has no principles to judge with", fix="add comparison principles")
    if options.distinct_principles and options.principles_per_pair > len(c.principles):
        raise ConfigError(
            f"principles_per_pair is {options.principles_per_pair} but {c.name} ({c.path}) has only "
            f"{len(c.principles)} principles to draw distinct ones from",
            fix=f"use --principles-per-pair {len(c.principles)} or less, or set judging.distinct_principles: false")


def draw_principles(c: Constitution, options: JudgeOptions, seed: int, pair_id: str) -> list[Principle]:
    """The pair's principles: depend only on (seed, pair id), never on batch order or size."""
    k = options.principles_per_pair
    if k == 1:
        return [c.sample(seed, pair_id, 0)]
    return c.sample_many(k, seed, pair_id, 0, distinct=options.distinct_principles)


def judge_prompt_texts(engine: Engine, c: Constitution, pair: ResponsePair,
                       principle: Principle) -> tuple[Rendered, Rendered]:
    """The rendered judge prompts of one pair under one principle, in the xy and yx orders, up
    to the start of the judge's answer (the cue is added by the caller)."""
    xy = engine.render(judge_prompt(c, pair.conversation, pair.x, pair.y, principle))
    yx = engine.render(judge_prompt(c, pair.conversation, pair.y, pair.x, principle))
    return xy, yx


def judge_pairs(engine: Engine, c: Constitution, pairs: Sequence[ResponsePair], options: JudgeOptions,
                seed: int) -> list[Judgment]:
    """Judge a batch of pairs: one `option_logprobs` call over every pair, principle and order
    (plus one `generate` call for the rationales with CoT). Returns judgments in input order;
    pairs whose prompts exceed the judge's context come back as `too_long`."""
    cue = judge_answer_cue(c)
    k = options.principles_per_pair
    principles = [draw_principles(c, options, seed, pair.principle_key) for pair in pairs]
    # texts[i*2k + 2j + o]: pair i, principle j, order o (0 = x as (A), 1 = y as (A)).
    heads = [t for pair, ps in zip(pairs, principles, strict=True) for p in ps
             for t in judge_prompt_texts(engine, c, pair, p)]
    if options.cot:
        heads = [h + COT_CUE for h in heads]
        # The rationale and the cue must fit after the prompt.
        budget = options.cot_max_tokens + engine.count_tokens([cue])[0] + 2
    else:
        heads = [h + cue for h in heads]
        budget = 1
    lengths = engine.count_tokens(heads)
    fits = [all(n + budget <= engine.max_model_len for n in lengths[i * 2 * k:(i + 1) * 2 * k])
            for i in range(len(pairs))]
    keep = [i for i, ok in enumerate(fits) if ok]
    texts = [heads[i * 2 * k + m] for i in keep for m in range(2 * k)]

    rationales: list[str] = []
    if options.cot and texts:
        stop = cue.rstrip(" (:\n")  # a rationale that starts answering ends where our cue begins
        sampling = Sampling(max_tokens=options.cot_max_tokens, temperature=options.cot_temperature,
                            seed=seed, stop=(stop,) if stop else ())
        seeds = [provenance.derive_seed(seed, pairs[i].id, j, o) for i in keep for j in range(k) for o in range(2)]
        rationales = [r.text.strip() for r in engine.generate(texts, sampling, seeds=seeds)]
        texts = [t + " " + r + "\n" + cue for t, r in zip(texts, rationales, strict=True)]
    scored = engine.option_logprobs(texts, list(OPTIONS)) if texts else []
    scored_tokens = engine.count_tokens(texts) if options.cot else [lengths[i * 2 * k + m] for i in keep
                                                                   for m in range(2 * k)]

    out: list[Judgment] = []
    at = 0  # position in `texts` of the next kept pair
    for i, pair in enumerate(pairs):
        ps = tuple(principles[i])
        if not fits[i]:
            longest = max(lengths[i * 2 * k:(i + 1) * 2 * k])
            out.append(Judgment(pair.id, "too_long", ps, detail=(
                f"a judge prompt is {longest} tokens; with {budget} more for the answer it exceeds the judge's "
                f"context of {engine.max_model_len}")))
            continue
        lps = [tuple(scored[at + m]) for m in range(2 * k)]
        logprobs = tuple((lps[2 * j][0], lps[2 * j][1], lps[2 * j + 1][0], lps[2 * j + 1][1]) for j in range(k))
        p_xy = tuple(option_probability(a, b) for a, b, _, _ in logprobs)
        p_yx = tuple(option_probability(a, b) for _, _, a, b in logprobs)
        p, agree = combine(p_xy, p_yx, options.cot_clamp if options.cot else None)
        rats = tuple((rationales[at + 2 * j], rationales[at + 2 * j + 1]) for j in range(k)) if options.cot else ()
        out.append(Judgment(pair.id, "judged", ps, p=p, agree=agree, p_xy=p_xy, p_yx=p_yx, logprobs=logprobs,
                            rationales=rats, prompt_tokens=sum(scored_tokens[at:at + 2 * k])))
        at += 2 * k
    return out


def judge_prompts(c: Constitution) -> str:
    """Hash of what of the constitution every judge prompt shows: the judge template, the answer
    template and the few-shot comparisons (the principles enter per pair, by `judge_hash`)."""
    # The canonical form leaves out where each example was written (`source`, a file path), so
    # moving or copying the constitution file does not make every judgment stale.
    return provenance.key(c.templates.judge, c.templates.judge_answer, c.to_dict()["comparison_examples"])


def judgment_key(pair: ResponsePair, principles: list[Principle] | tuple[Principle, ...], judge: dict[str, Any],
                 c: Constitution, judging: JudgeOptions, seed: int) -> str:
    """Everything that decides a verdict: the texts, the judge (`cai.models.key_identity`), what the judge
    reads of the principles drawn (id and question: `Principle.judge_hash`, not the critique or
    revision requests), the judge prompts, the options and the seed (CoT rationales). Shared by
    `cai label` and `cai judge eval`; `judge` is `cai.models.identity(..., context=True)`."""
    return provenance.key(pair.conversation, pair.x, pair.y, models.key_identity(judge),
                          [p.judge_hash for p in principles],
                          judge_prompts(c), config.to_jsonable(judging), seed)


# --- d-RLAIF: one response scored 1-10 -----------------------------------------------------------


@dataclass(frozen=True)
class ScoreOutcome:
    """The rating of one response: its reward and how it was made."""

    reward: float
    """Probability-weighted mean score rescaled from [1, 10] to [-1, 1]."""
    expected_score: float
    principle: Principle
    score_logprobs: tuple[float, ...] = field(repr=False)
    """log P(score = s) for s = 1..10 (unnormalized)."""


def score_responses(engine: Engine, constitution: Constitution, conversations: Sequence[Conversation],
                    responses: Sequence[str], seed: int) -> list[float]:
    """d-RLAIF rewards in [-1, 1] for a batch of (conversation, response): the judge rates each
    response 1-10 by a comparison principle drawn per prompt (seeded by the conversation, so
    every response to one prompt is rated by the same question and the rewards compare)."""
    return [o.reward for o in score_details(engine, constitution, conversations, responses, seed)]


def score_details(engine: Engine, constitution: Constitution, conversations: Sequence[Conversation],
                  responses: Sequence[str], seed: int) -> list[ScoreOutcome]:
    """`score_responses` with the expected score, principle and score log-probs of each response.

    The scale's log-probs come from the token after the score cue ("Rating: "). When "10" is two
    tokens ("1", "0": digit-split tokenizers such as the default model's), P(10) = P("1") *
    P("0" | "1") from a second single-token call on the same prompts (its prefix is cached), and
    P(1) = P("1") - P(10). Either way: prefill only, never decoding.
    """
    if len(conversations) != len(responses):
        raise ValueError(f"got {len(conversations)} conversations for {len(responses)} responses")
    if not responses:
        return []
    cue = score_answer_cue(constitution)
    principles = [constitution.sample(seed, provenance.key(conv), 0) for conv in conversations]
    prompts = [engine.render(score_prompt(constitution, conv, resp, p)) + cue
               for conv, resp, p in zip(conversations, responses, principles, strict=True)]
    digits = [str(s) for s in SCORES[:-1]]
    ten = str(SCORES[-1])
    if engine.count_tokens([ten])[0] == 1:
        logps = [list(row) for row in engine.option_logprobs(prompts, digits + [ten])]
    else:
        first = engine.option_logprobs(prompts, digits)
        zero = engine.option_logprobs([p + ten[0] for p in prompts], [ten[1:]])
        logps = []
        for row, (lp_zero,) in zip(first, zero, strict=True):
            row = list(row)
            lp_ten = row[0] + lp_zero
            # P(1) = P("1") * (1 - P("0" | "1")); log1p keeps precision when P("0" | "1") is small.
            row[0] = row[0] + math.log1p(-min(math.exp(lp_zero), 1.0 - 1e-12))
            logps.append(row + [lp_ten])
    out = []
    for row, p in zip(logps, principles, strict=True):
        e = expected_score(row)
        out.append(ScoreOutcome(score_to_reward(e), e, p, tuple(row)))
    return out
