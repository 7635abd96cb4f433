"""`cai label`: AI-feedback preference pairs (RLAIF, method.md §2), judged in both orders, with
soft labels, batched, resumable and crash-safe.

Inputs (`input_kind`, detected from the input when `auto`):

- prompts: a prompts file (any format `cai.data.read_prompts` reads). The policy samples
  `samples_per_prompt` responses per prompt (temperature 1 by default), which are paired
  (`pairing`: `all` pairs, or `adjacent` ones: 1-2, 2-3, ...). The samples are stored in
  DIR/responses.jsonl first, so a resumed job judges exactly the same responses.
- revise: the output folder of `cai revise`: the initial response against the final revision
  (`revise_pairs: final`), or each round against the next (`rounds`).
- responses: any JSONL/JSON/CSV/dataset with a prompt (or conversation) and two or more
  responses: a `responses` list, `chosen`/`rejected`, or `response_a`/`response_b`.

The pipeline, chunk by chunk: pairs -> `cai.judge.judge_pairs` (one engine call per chunk) ->
DIR/judgments.jsonl (append-only, fsynced per chunk: `kill -9` loses at most the chunk in
flight). On resume, a stored sample or judgment whose key differs from what today's inputs give
(an edited prompt or response text, an edited comparison question, a setting accepted with
--force) is made again and counted as stale. When every pair is judged, the outputs are rebuilt
from the judgments, so they always match them: prefs.jsonl (TRL's conversational preference rows with the soft label and
provenance), ties.jsonl, rejects.jsonl, dataset/ (train_prefs / test_prefs) and summary.json.
docs/label.md lists every column.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import cai
from cai import models, provenance
from cai.atomic import write_json_atomic
from cai.clean import FLAGS, check_skip_flags
from cai.config import EngineConfig, to_jsonable
from cai.constitution import DEFAULT_PATH, Constitution, load_constitution
from cai.data import Reject, read_prompts, reject_too_long
from cai.engine import Engine, Sampling, engine_device, make_engine
from cai.errors import ConfigError, InputError, Location, RecordError
from cai.export import DATASET_DIR, PREFS_FILE, split_rows, write_dataset
from cai.judge import (
    JudgeOptions,
    Judgment,
    ResponsePair,
    check_options,
    draw_principles,
    is_tie,
    judge_pairs,
    judge_prompts,
    judgment_key,
    resolve_judge_engine,
)
from cai.label_inputs import (
    Candidate,
    Group,
    detect_kind,
    form_pairs,
    pair_indices,
    read_response_groups,
    read_revise_groups,
)
from cai.progress import make_progress
from cai.records import JsonlStore, locked_run, open_run_dir, read_jsonl_numbered, write_jsonl_atomic
from cai.schema import (
    ConstitutionStamp,
    JudgedPreference,
    PairJudgment,
    PromptSamples,
    Provenance,
    RejectedPrompt,
    read_records,
    sample_record,
)

RESPONSES_FILE = "responses.jsonl"
JUDGMENTS_FILE = "judgments.jsonl"
TIES_FILE = "ties.jsonl"
REJECTS_FILE = "rejects.jsonl"
SUMMARY_FILE = "summary.json"
RESUMABLE_CHANGES = ("tie_threshold:", "keep_ties:", "test_fraction:", "split_seed:", "chunk_size:",
                     "skip_flags:")
"""Config fields that change no sample or judgment (only which rows the outputs hold): a resume
may change them without --force."""


@dataclass(frozen=True)
class LabelConfig:
    """Settings of `cai label`."""

    input: Path
    """Prompts file, `cai revise` output folder, or a file of prompts with two or more responses."""
    out: Path
    """Output folder (resumed if it holds the same job; see `cai.records.open_run_dir`)."""
    constitution: Path = Path(DEFAULT_PATH)
    """Principle file: comparison principles, judge template and few-shot comparisons."""
    judge: EngineConfig = field(default_factory=EngineConfig)
    """The judge model and backend (`backend: http` judges through an OpenAI-compatible server).
    dtype `auto` is float32 on a CPU: bf16 logits quantize the soft labels (cai.judge.resolve_judge_engine)."""
    policy: EngineConfig | None = None
    """prompts input only: the model that samples the responses. Unset: the judge model, one engine."""
    judging: JudgeOptions = field(default_factory=JudgeOptions)
    """Principles per pair, chain of thought, clamping (see cai.judge.JudgeOptions)."""
    input_kind: Literal["auto", "prompts", "revise", "responses"] = "auto"
    """auto: a folder with records.jsonl is a revise output; a file whose first row has
    `responses`, `chosen`/`rejected` or `response_a`/`response_b` holds responses; else prompts."""
    prompt_column: str = "prompt"
    """Column of the prompt text or conversation (prompts and responses inputs). A string in the
    hh-rlhf style ("\\n\\nHuman: ...\\n\\nAssistant: ...") is read as that dialogue."""
    id_column: str = "id"
    """Column of a stable row id (else one is derived from the prompt)."""
    samples_per_prompt: int = 2
    """prompts input: responses sampled per prompt (k >= 2)."""
    pairing: Literal["all", "adjacent"] = "all"
    """Which responses of one prompt are compared: all k(k-1)/2 pairs, or the k-1 pairs of
    neighbours (1-2, 2-3, ...: linear in k, each response in at most two pairs)."""
    policy_max_tokens: int = 256
    """prompts input: new tokens per sampled response."""
    policy_temperature: float = 1.0
    """prompts input: sampling temperature (1.0, as the papers sample responses to compare)."""
    policy_top_p: float = 1.0
    """prompts input: nucleus sampling mass."""
    revise_pairs: Literal["final", "rounds"] = "final"
    """revise input: `final` compares the initial response with the last revision; `rounds`
    compares each step with the next (initial-round 1, round 1-round 2, ...)."""
    skip_flags: tuple[str, ...] = FLAGS
    """revise input: a pair with a side flagged by `cai revise` (empty, degenerate, truncated,
    wrong_role) is skipped and counted. [] judges everything."""
    tie_threshold: float = 0.05
    """A pair is a tie when |p - 0.5| < this (p = the debiased soft label); p = 0.5 is always a
    tie. Ties go to ties.jsonl and stay out of prefs.jsonl unless keep_ties."""
    keep_ties: bool = False
    """Also write ties to prefs.jsonl (flagged `tie: true`); their soft labels near 0.5 still teach
    a soft-label reward model that the two are close."""
    test_fraction: float = 0.1
    """Share of source ids in test_prefs. All pairs of one prompt share a split, and it is the
    same split `cai revise` puts that id in (cai.export.split_of)."""
    split_seed: int = 0
    """Seed of the id-hash split."""
    seed: int = 0
    """Run seed: principle draws, policy samples and CoT rationales derive from it and the ids."""
    chunk_size: int = 64
    """Pairs per engine call (x 2 orders x principles_per_pair prompts); each chunk is flushed."""

    def __post_init__(self) -> None:
        if self.samples_per_prompt < 2:
            raise ConfigError(f"samples_per_prompt must be >= 2 to form pairs, got {self.samples_per_prompt}",
                              fix="pass --samples-per-prompt 2 or more")
        if not 0 <= self.tie_threshold < 0.5:
            raise ConfigError(f"tie_threshold must be in [0, 0.5), got {self.tie_threshold}",
                              fix="e.g. 0.05 (ties: 0.45 < p < 0.55), or 0 to keep every non-0.5 label")
        if not 0 <= self.test_fraction < 1:
            raise ConfigError(f"test_fraction must be in [0, 1), got {self.test_fraction}")
        if self.chunk_size < 1 or self.policy_max_tokens < 1:
            raise ConfigError("chunk_size and policy_max_tokens must be >= 1")
        check_skip_flags(self.skip_flags, "skip_flags", "judge everything")


@dataclass(frozen=True)
class LabelSummary:
    """What a label job produced (the whole folder, not only this run), plus this run's speed."""

    groups: int
    """Prompts (or records, or rows) whose responses were paired."""
    judged: int
    """Pairs judged (ties included)."""
    pairs: int
    """Rows in prefs.jsonl."""
    ties: int
    identical: int
    """Pairs skipped because both responses were the same text."""
    rejected: int
    """Input rows, responses and pairs that could not be used (see rejects.jsonl)."""
    position_agreement: float | None
    """Share of judged pairs whose two orders preferred the same response."""
    mean_margin: float | None
    """Mean |p - 0.5| over judged pairs: how decided the judge is."""
    first_position_rate: float | None
    """Share of single-order verdicts that picked (A): 0.5 for a judge without position bias."""
    option_mass: float | None
    """Mean P(A) + P(B) before normalization: near 1 when the judge answers in format."""
    principles: dict[str, int]
    """How often each principle judged a pair."""
    judged_now: int
    stale: int
    """Judgments of an earlier run whose key differs from today's inputs (an edited response text
    or comparison question, or a setting accepted with --force): judged again (in judged_now)."""
    resampled: int
    """prompts input: prompts whose stored samples were stale (an edited prompt, or a policy
    setting accepted with --force) and were sampled again."""
    prompt_tokens: int
    """Judge prompt tokens scored in this run."""
    seconds: float
    device: str
    """Where the judge ran: cuda, cpu or remote (cai.engine.engine_device)."""
    out: Path

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(asdict(self))


def policy_sampling(cfg: LabelConfig) -> Sampling:
    return Sampling(max_tokens=cfg.policy_max_tokens, temperature=cfg.policy_temperature,
                    top_p=cfg.policy_top_p, seed=cfg.seed, n=cfg.samples_per_prompt)


def sample_key(cfg: LabelConfig, r: Any, policy: dict[str, Any]) -> str:
    """The key of a prompt's stored samples (or of its too-long reject): the prompt, the policy
    (`cai.models.key_identity`), the sampling and the seed."""
    seed = provenance.derive_seed(cfg.seed, r.id, "policy")
    return provenance.key(r.messages, models.key_identity(policy), policy_sampling(cfg).to_dict(), seed)


def sample_prompt_groups(cfg: LabelConfig, store: JsonlStore, records: list, engine: Engine,
                         policy: dict[str, Any]) -> int:
    """Sample `samples_per_prompt` responses for every prompt not yet in the responses store, in
    chunks (one engine call each). Returns the completion tokens generated."""
    sampling = policy_sampling(cfg)
    pending = [r for r in records if r.id not in store]
    tokens = 0
    if not pending:
        return 0
    with make_progress("prompts") as progress:
        task = progress.add_task("sample", total=len(pending), tokens=0)
        for start in range(0, len(pending), cfg.chunk_size):
            chunk = pending[start:start + cfg.chunk_size]
            # The seed comes from the prompt id: a resumed job samples exactly what an
            # uninterrupted one would have.
            seeds = [provenance.derive_seed(cfg.seed, r.id, "policy") for r in chunk]
            outs = engine.generate([r.conversation for r in chunk], sampling, seeds=seeds)
            k = cfg.samples_per_prompt
            for i, (r, seed) in enumerate(zip(chunk, seeds, strict=True)):
                comps = outs[i * k:(i + 1) * k]
                store.append(PromptSamples(
                    id=r.id, status="sampled", prompt=tuple(r.conversation), responses=tuple(c.text for c in comps),
                    finish_reasons=tuple(c.finish_reason for c in comps),
                    completion_tokens=tuple(c.completion_tokens for c in comps), source=r.source,
                    provenance=Provenance(**provenance.stamp(policy, sampling.to_dict(), seed)),
                    key=sample_key(cfg, r, policy),
                ).to_dict())
                tokens += sum(c.completion_tokens for c in comps)
            store.flush()
            progress.update(task, advance=len(chunk), tokens=tokens)
    return tokens


# --- The job -------------------------------------------------------------------------------------


@locked_run
def run_label(cfg: LabelConfig, judge_engine: Engine | None = None, policy_engine: Engine | None = None,
              force: bool = False) -> LabelSummary:
    """Run (or resume) a label job. Engines are made from the config unless given; engines made
    here are closed here."""
    constitution = load_constitution(cfg.constitution)
    check_options(constitution, cfg.judging)
    kind = cfg.input_kind if cfg.input_kind != "auto" else detect_kind(cfg.input, cfg.prompt_column)
    judge = models.identity(resolve_judge_engine(cfg.judge), judge_engine, context=True)
    policy = models.identity(*_policy(cfg, judge_engine, policy_engine)) if kind == "prompts" else None
    inputs = {"judge_fingerprint": judge["fingerprint"], "judge_prompts": judge_prompts(constitution)}
    if policy is not None:
        inputs["policy_fingerprint"] = policy["fingerprint"]
    out = open_run_dir(cfg.out, cfg, force, inputs=inputs, resumable=RESUMABLE_CHANGES, records=JUDGMENTS_FILE)
    t0 = time.perf_counter()
    owned: list[Engine] = []
    resampled = 0
    try:
        if kind == "prompts":
            groups, rejects, resampled = _prompt_groups(cfg, out, judge_engine, policy_engine, owned, policy)
            if policy_engine is None and cfg.policy is not None and cfg.policy != cfg.judge:
                # Free the policy model before the judge loads (both may not fit at once).
                for e in owned:
                    e.close()
                owned.clear()
        elif kind == "revise":
            groups, rejects = read_revise_groups(cfg.input, cfg.revise_pairs, cfg.skip_flags)
        else:
            groups, rejects = read_response_groups(cfg.input, cfg.prompt_column, cfg.id_column, cfg.pairing)
        pairs, pair_rejects, identical = form_pairs(groups)
        rejects += pair_rejects

        keys = {p.id: judgment_key(p, draw_principles(constitution, cfg.judging, cfg.seed, p.id), judge,
                                   constitution, cfg.judging, cfg.seed) for p, _, _, _ in pairs}
        store = JsonlStore(out / JUDGMENTS_FILE, current_keys=keys)
        pending = [item for item in pairs if item[0].id not in store]
        judged_now = n_tokens = 0
        with store:
            if pending:
                engine = judge_engine or (owned[0] if owned else _make(resolve_judge_engine(cfg.judge), owned))
                judged_now, n_tokens = _judge_all(cfg, constitution, engine, judge, pending, store)
    finally:
        for e in owned:
            e.close()
    return _finish(cfg, constitution, out, groups, pairs, rejects, identical,
                   {"judged_now": judged_now, "stale": len(store.stale), "resampled": resampled,
                    "prompt_tokens": n_tokens, "seconds": time.perf_counter() - t0})


def _policy(cfg: LabelConfig, judge_engine: Engine | None,
            policy_engine: Engine | None) -> tuple[EngineConfig, Engine | None]:
    """The policy's engine config and the engine that samples with it, if one is given."""
    same = cfg.policy is None or cfg.policy == cfg.judge
    return cfg.policy or resolve_judge_engine(cfg.judge), policy_engine or (judge_engine if same else None)


def _make(engine_cfg: EngineConfig, owned: list[Engine]) -> Engine:
    engine = make_engine(engine_cfg)
    owned.append(engine)
    return engine


def _prompt_groups(cfg: LabelConfig, out: Path, judge_engine: Engine | None, policy_engine: Engine | None,
                   owned: list[Engine], policy: dict[str, Any]) -> tuple[list[Group], list[Reject], int]:
    """prompts input: sample the responses (stored first, so a resume reuses them), then group.
    Stored samples of an edited prompt (or another policy) are stale and sampled again."""
    records, rejects = read_prompts(cfg.input, cfg.prompt_column, cfg.id_column)
    keys = {r.id: sample_key(cfg, r, policy) for r in records}
    with JsonlStore(out / RESPONSES_FILE, current_keys=keys) as store:
        if any(r.id not in store for r in records):
            policy_cfg, given = _policy(cfg, judge_engine, policy_engine)
            engine = given or _make(policy_cfg, owned)
            fits, too_long = reject_too_long([r for r in records if r.id not in store], engine,
                                             cfg.policy_max_tokens)
            # Stored too, so that a resumed job reports the same rejects without a model.
            store.extend(RejectedPrompt(id=r.id, status="rejected", source=r.source, reason=r.reason, fix=r.fix,
                                        key=keys[r.id]).to_dict() for r in too_long)
            sample_prompt_groups(cfg, store, fits, engine, policy)
        resampled = len(store.stale)
    path = out / RESPONSES_FILE
    lines = {}  # id -> line: stored samples of prompts no longer in the input are kept, unread
    stored = {}
    for line, d in read_jsonl_numbered(path):
        rec = sample_record(d, Location(str(path), line))
        stored[rec.id], lines[rec.id] = rec, line
    pairs = pair_indices(cfg.samples_per_prompt, cfg.pairing)
    groups = []
    for r in records:
        rec = stored[r.id]
        _check_samples(rec, Location(str(path), lines[r.id], record=r.id), cfg.samples_per_prompt)
        if isinstance(rec, RejectedPrompt):
            rejects.append(Reject(r.id, r.source, rec.reason, rec.fix))
            continue
        finish = rec.finish_reasons or ("stop",) * len(rec.responses)
        cands = tuple(Candidate(t.strip(), f"{r.id}#{i}", f)
                      for i, (t, f) in enumerate(zip(rec.responses, finish, strict=True)))
        groups.append(Group(r.id, r.conversation, cands, pairs, r.source))
    return groups, rejects, resampled


def _check_samples(rec: PromptSamples | RejectedPrompt, where: Location, k: int) -> None:
    """Stored samples hold samples_per_prompt responses (and finish reasons), as the pairs index
    them: a hand-edited line would otherwise fail later as an IndexError."""
    if isinstance(rec, PromptSamples) and (len(rec.responses) != k or len(rec.completion_tokens) != k or (
            rec.finish_reasons is not None and len(rec.finish_reasons) != k)):
        raise RecordError(f"stored samples must hold {k} responses, finish_reasons and completion_tokens "
                          f"(samples_per_prompt); this line has {len(rec.responses)}, "
                          f"{len(rec.finish_reasons or ())} and {len(rec.completion_tokens)}", where,
                          fix=PromptSamples.FIX)


def _judge_all(cfg: LabelConfig, c: Constitution, engine: Engine, judge: dict[str, Any], pending: list,
               store: JsonlStore) -> tuple[int, int]:
    n_tokens = 0
    with make_progress("pairs") as progress:
        task = progress.add_task("judge", total=len(pending), tokens=0)
        for start in range(0, len(pending), cfg.chunk_size):
            chunk = pending[start:start + cfg.chunk_size]
            judgments = judge_pairs(engine, c, [p for p, _, _, _ in chunk], cfg.judging, cfg.seed)
            for (pair, group, i, j), jd in zip(chunk, judgments, strict=True):
                store.append(_judgment_record(cfg, c, judge, pair, group, i, j, jd).to_dict())
                n_tokens += jd.prompt_tokens
            store.flush()
            progress.update(task, advance=len(chunk), tokens=n_tokens)
    return len(pending), n_tokens


def _judgment_record(cfg: LabelConfig, c: Constitution, judge: dict[str, Any], pair: ResponsePair, group: Group, i: int,
                     j: int, jd: Judgment) -> PairJudgment:
    """The raw judgment, with everything needed to rebuild its preference row and its provenance."""
    return PairJudgment(
        id=pair.id,
        group_id=group.id,
        conversation=tuple(pair.conversation),
        x=pair.x,
        y=pair.y,
        x_ref=group.candidates[i].ref,
        y_ref=group.candidates[j].ref,
        verdict=jd.verdict(),
        judge_model=judge["model"],
        judge_fingerprint=judge["fingerprint"],
        judge_engine={k: judge[k] for k in ("backend", "dtype", "max_model_len")},
        constitution=ConstitutionStamp(name=c.name, version=c.version, hash=c.hash),
        judging=to_jsonable(cfg.judging),
        seed=cfg.seed,
        cai_version=cai.__version__,
        # A later resume re-judges the pair exactly when this changes (judgment_key).
        key=judgment_key(pair, jd.principles, judge, c, cfg.judging, cfg.seed),
    )


# --- Outputs -------------------------------------------------------------------------------------


def preference_row(j: PairJudgment, tie_threshold: float) -> JudgedPreference:
    """A stored judgment (status judged) as a TRL conversational preference row: the side with
    p >= 0.5 is chosen. `id` is the source prompt/record id (so all pairs of a prompt share a
    split), `pair_id` the pair's own id."""
    v = j.verdict
    if v.p is None or v.agree is None:
        raise InputError(f"judgment {j.id!r} has status {v.status!r} and no label", Location(record=j.id),
                         fix="only judged pairs make preference rows")
    x_wins = v.p >= 0.5
    chosen, rejected = (j.x, j.y) if x_wins else (j.y, j.x)
    return JudgedPreference(
        id=j.group_id, prompt=j.conversation, chosen=chosen, rejected=rejected,
        pair_id=j.id,
        p_chosen=v.p if x_wins else 1.0 - v.p,
        # Per principle: P(A) when the chosen response was shown as (A), and when the rejected was.
        p_chosen_first=v.p_xy if x_wins else v.p_yx,
        p_rejected_first=v.p_yx if x_wins else v.p_xy,
        position_agree=v.agree,
        tie=v.p == 0.5 or is_tie(v.p, tie_threshold),
        principles=v.principles,
        principle_hashes=v.principle_hashes,
        judge_model=j.judge_model,
        constitution_hash=j.constitution.hash,
        source_ids=(j.x_ref, j.y_ref) if x_wins else (j.y_ref, j.x_ref),
        key=j.key,
    )


def preference_features():
    """The column types of the preference rows (fixed, so an empty split, or a job whose pairs are
    all ties, still writes a loadable dataset)."""
    from datasets import Features, List, Value

    turn = {"role": Value("string"), "content": Value("string")}
    text, texts, probs = Value("string"), List(Value("string")), List(Value("float64"))
    return Features({
        "id": text, "prompt": List(turn), "chosen": List(turn), "rejected": List(turn), "pair_id": text,
        "p_chosen": Value("float64"), "p_chosen_first": probs, "p_rejected_first": probs,
        "position_agree": Value("bool"), "tie": Value("bool"), "principles": texts, "principle_hashes": texts,
        "judge_model": text, "constitution_hash": text, "source_ids": texts, "key": text,
    })


def _finish(cfg: LabelConfig, c: Constitution, out: Path, groups: list[Group], pairs: list, rejects: list[Reject],
            identical: int, run: dict[str, Any]) -> LabelSummary:
    """Rebuild every output from the judgments; `run`: this run's counts (judged_now, stale,
    resampled, prompt_tokens, seconds)."""
    wanted = {p.id for p, _, _, _ in pairs}
    by_id = {j.id: j for j in read_records(out / JUDGMENTS_FILE, PairJudgment) if j.id in wanted}
    judged = [by_id[p.id] for p, _, _, _ in pairs if by_id[p.id].verdict.status == "judged"]
    for p, g, _, _ in pairs:
        v = by_id[p.id].verdict
        if v.status != "judged":
            rejects.append(Reject(p.id, g.source, v.detail or v.status,
                                  "shorten the conversation or responses, or raise the judge's --max-model-len"))
    rows = [preference_row(j, cfg.tie_threshold) for j in judged]
    ties = [r.to_dict() for r in rows if r.tie]
    prefs = [r.to_dict() for r in rows if cfg.keep_ties or not r.tie]
    write_jsonl_atomic(out / PREFS_FILE, prefs)
    write_jsonl_atomic(out / TIES_FILE, ties)
    write_jsonl_atomic(out / REJECTS_FILE, [r.to_dict() for r in rejects])
    write_dataset(out / DATASET_DIR, split_rows(prefs, "prefs", cfg.split_seed, cfg.test_fraction),
                  {"prefs": preference_features()})

    verdicts = [j.verdict for j in judged]
    orders = [p for v in verdicts for p in v.p_xy + v.p_yx]
    masses = [math.exp(lps[k]) + math.exp(lps[k + 1]) for v in verdicts for lps in v.logprobs for k in (0, 2)]
    summary = LabelSummary(
        groups=len(groups), judged=len(judged), pairs=len(prefs), ties=len(ties), identical=identical,
        rejected=len(rejects),
        position_agreement=_mean(v.agree for v in verdicts),
        mean_margin=_mean(abs(v.p - 0.5) for v in verdicts),
        first_position_rate=_mean(p > 0.5 for p in orders),
        option_mass=_mean(masses),
        principles=dict(Counter(pid for v in verdicts for pid in v.principles).most_common()),
        **run, device=engine_device(cfg.judge.backend), out=out,
    )
    write_json_atomic(out / SUMMARY_FILE, summary.to_dict())
    return summary


def _mean(values: Iterator | list) -> float | None:
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else None
