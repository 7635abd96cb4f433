"""`cai revise`: the supervised stage of Constitutional AI (method.md §1) as a batch job.

For every prompt: an initial response; then, each round, a principle drawn for (seed, record,
round), a critique of the last answer under the principle's critique request (after the
constitution's few-shot transcripts), and a revision under its revision request. The chain
grows as one conversation, so each round critiques the previous round's revision. `direct`
skips the critique (the paper's ablation).

Batched: each step of each round is one engine call over a whole chunk of records (256 by
default), never a loop over records; the few-shot transcripts come first in every prompt, so
the engine's prefix cache computes them once. Every generation has its own seed, derived from
(run seed, record id, round, step). Seeds alone do not make a text independent of its batch
(vLLM's numerics depend on what else is in it), so chunk boundaries are fixed by position in the
inputs and a chunk cut short is made again whole (`resume_batches`): a resumed job writes what
the uninterrupted one would have.

A run folder (`out`) holds:
    config.yaml    the resolved config (a resume with a different one is refused)
    inputs.json    the model folder's fingerprint, the cleaning version and the constitution's
                   shared prompts (a resume with different ones is refused too)
    records.jsonl  one record per prompt id, appended and fsynced chunk by chunk; on resume a
                   record whose key differs from today's inputs (an edited prompt or principle)
                   is made again
    rejects.jsonl  input rows that cannot be used, with the reason and a fix
    sft.jsonl, prefs.jsonl, dataset/   the exports, rebuilt from records.jsonl at the end
    summary.json   counts, tokens, time, principle usage
docs/revise.md describes every field.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cai import config, models, provenance
from cai.atomic import write_json_atomic
from cai.clean import CLEAN_VERSION, clean
from cai.config import EngineConfig
from cai.constitution import DEFAULT_PATH, Constitution, Principle, load_constitution
from cai.data import PromptRecord, read_prompts, reject_too_long
from cai.engine import Completion, Engine, Sampling, engine_device, make_engine
from cai.errors import ConfigError, EngineError
from cai.export import ExportConfig, ExportSummary, export_revisions
from cai.progress import make_progress
from cai.prompts import (
    critique_conversation,
    direct_revision_conversation,
    revision_conversation,
    with_critique,
)
from cai.records import JsonlStore, lock_run_dir, open_run_dir, write_jsonl_atomic
from cai.schema import ConstitutionStamp, Provenance, ReviseRecord, Round, Step, chain_flags, read_records

RECORDS_FILE = "records.jsonl"
REJECTS_FILE = "rejects.jsonl"
SUMMARY_FILE = "summary.json"
CONTEXT_MARGIN_PER_TEXT = 8
"""Tokens of slack per generated text in the context budget: a decoded text can re-encode to a
few more tokens than were generated (e.g. a multi-byte character cut by max_tokens)."""
RESUMABLE_CHANGES = ("export.", "chunk_size:")
"""Config fields that change no record: a resume may change them without --force (the exports
are rebuilt from records.jsonl, and seeds do not depend on the chunking)."""


@dataclass(frozen=True)
class ReviseConfig:
    """Settings of `cai revise`. Every field can be set in a YAML file (`--config`); flags win."""

    prompts: Path
    """Input prompts: JSONL, JSON, CSV or a Hugging Face dataset folder (see cai.data)."""
    out: Path
    """Run folder. Running again with the same config resumes it."""
    constitution: Path = Path(DEFAULT_PATH)
    """The principle file (docs/constitution.md)."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    """Model and backend."""
    rounds: int = 2
    """Critique-revision rounds per prompt. The paper ran 4, and found that the first revision
    removes most of the harm while later ones add a little more (method.md §1). 2 is the default
    because the chain is one growing conversation: on the default model's 2048-token context,
    with the few-shot prefix and the default budgets, 2 rounds take up to 1697 tokens (leaving
    ~350 for the prompt) and 3 rounds would need 2209. Raise it (4, as the paper) with a
    model of 4k+ context; `cai revise` refuses settings whose budget cannot fit."""
    direct: bool = False
    """Revise without a critique (the paper's ablation; critiqued revisions were "always
    slightly better" for small models)."""
    max_tokens: int = 256
    """New tokens for the initial response and for each revision."""
    critique_max_tokens: int = 128
    """New tokens for each critique (a critique is context for the revision, so shorter)."""
    temperature: float = 0.7
    """Sampling temperature of every step. The paper sampled at 1.0 (with a 52B model); in a
    small trial the 135M default model wrote word salad at 1.0 and mostly fluent text at 0.7
    (docs/revise.md). Pass 1.0 to follow the paper with a larger model."""
    top_p: float = 1.0
    """Nucleus sampling mass (1.0: off)."""
    seed: int = 0
    """Run seed: with the record id it fixes every principle draw and generation seed."""
    chunk_size: int = 256
    """Records per engine call. Large chunks keep the engine's batch full; each finished chunk
    is appended to records.jsonl (a crash loses at most the chunk in flight)."""
    prompt_column: str = "prompt"
    """Column holding the prompt text or conversation."""
    id_column: str = "id"
    """Column holding a stable id (else one is derived from the content)."""
    split: str | None = None
    """Split of a Hugging Face DatasetDict input (default: its first split)."""
    export: ExportConfig = field(default_factory=ExportConfig)
    """What the SFT and preference exports contain, and the train/test split."""

    def __post_init__(self) -> None:
        for name in ("rounds", "max_tokens", "critique_max_tokens", "chunk_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}", fix="0 is greedy")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass(frozen=True)
class StepStats:
    """Work done by one step (e.g. "round 1 critique") over the whole run."""

    calls: int = 0
    records: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class ReviseSummary:
    """The end-of-run report (also written to summary.json)."""

    records: int
    """Records in records.jsonl after this run."""
    done: int
    """Records made by this run."""
    skipped: int
    """Records already there from an earlier run (resume)."""
    rejected: int
    """Input rows that could not be used (rejects.jsonl)."""
    flagged: int
    """Records with at least one flagged text (counted over all records)."""
    flags: dict[str, int]
    """Flagged texts by flag ("truncated", ...), over all records."""
    stale: int
    """Records of an earlier run whose key differs from what today's inputs make (an edited
    prompt or principle, or a setting accepted with --force): they were made again (in `done`)."""
    removed: int
    """Records of an earlier run whose id is no longer among the inputs (a prompt taken out of the
    file, or edited in a file without an id column, where the id is a hash of the text): removed
    from records.jsonl, so neither the exports nor `cai label` see them."""
    principle_usage: dict[str, int]
    """How often each principle was drawn, over all records and rounds."""
    steps: dict[str, StepStats]
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    """Wall time of this run's generation (model loading and exports not included)."""
    device: str
    """Where the engine ran: cuda, cpu or remote (cai.engine.engine_device)."""
    export: ExportSummary
    out: Path

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0


def run_revise(cfg: ReviseConfig, engine: Engine | None = None, *, force: bool = False,
               progress: bool = True) -> ReviseSummary:
    """Run (or resume) a revise job; returns its summary. `engine` overrides `cfg.engine`."""
    # 1. Inputs, checked before anything slow or written: a bad file fails in a second.
    inputs, rejects = read_prompts(cfg.prompts, cfg.prompt_column, cfg.id_column, cfg.split)
    constitution = load_constitution(cfg.constitution)
    with lock_run_dir(cfg.out):  # one job per run folder, or records are made twice
        return _run(cfg, engine, inputs, rejects, constitution, force, progress)


def _run(cfg: ReviseConfig, engine: Engine | None, inputs: list[PromptRecord], rejects: list,
         constitution: Constitution, force: bool, progress: bool) -> ReviseSummary:
    model = models.identity(cfg.engine, engine)
    out = open_run_dir(cfg.out, cfg, force, inputs=run_inputs(constitution, model),
                       resumable=RESUMABLE_CHANGES, records=RECORDS_FILE)
    samplings = response_sampling(cfg), critique_sampling(cfg)
    keys = current_keys(inputs, constitution, model, samplings, cfg)

    own_engine = engine is None
    engine = engine or make_engine(cfg.engine)
    try:
        # 2. Rejects: rows that cannot be used, and prompts too long for the whole chain.
        budget = context_budget(constitution, engine, cfg)
        inputs, too_long = reject_too_long(inputs, engine, budget)
        rejects += too_long
        write_jsonl_atomic(out / REJECTS_FILE, [r.to_dict() for r in rejects])

        # 3. The chains, chunk by chunk; each finished chunk is appended and fsynced.
        # Records whose key differs from today's are dropped here and made again with the rest.
        # So are records of ids no longer among the inputs: the exports are everything in the file.
        store = JsonlStore(out / RECORDS_FILE, flush_every=cfg.chunk_size + 1, current_keys=keys, drop_unknown=True)
        pending = [r for r in inputs if r.id not in store]
        skipped, stale, removed = len(inputs) - len(pending), len(store.stale), len(store.removed)
        batches = resume_batches(inputs, store, cfg.chunk_size)
        steps: dict[str, StepStats] = {name: StepStats() for name in step_names(cfg)}
        t0 = time.perf_counter()
        with store, make_progress("records", console=None if progress else _quiet()) as bars:
            tasks = {name: bars.add_task(name, total=sum(map(len, batches)), tokens=0) for name in steps}
            runner = _ChunkRunner(engine, constitution, cfg, samplings, steps, bars, tasks)
            for batch in batches:
                store.extend(rec.to_dict() for rec in runner.run(batch, model) if rec.id not in store)
        seconds = time.perf_counter() - t0
    finally:
        if own_engine:
            engine.close()

    # 4. Exports and summary, rebuilt from everything in records.jsonl.
    records = list(read_records(out / RECORDS_FILE, ReviseRecord))
    exported = export_revisions(records, out, cfg.export)
    flags = Counter(f.split(":", 1)[1] for r in records for f in r.flags)
    usage = Counter(rnd.principle for r in records for rnd in r.rounds)
    summary = ReviseSummary(
        records=len(records), done=len(pending), skipped=skipped, rejected=len(rejects),
        flagged=sum(bool(r.flags) for r in records), flags=dict(flags.most_common()), stale=stale,
        removed=removed,
        principle_usage=dict(usage.most_common()), steps=steps,
        prompt_tokens=sum(s.prompt_tokens for s in steps.values()),
        completion_tokens=sum(s.completion_tokens for s in steps.values()),
        seconds=seconds, device=engine_device(cfg.engine.backend), export=exported, out=out,
    )
    write_json_atomic(out / SUMMARY_FILE, {**config.to_jsonable(summary),
                                           "tokens_per_s": round(summary.tokens_per_s, 1)}, ensure_ascii=False)
    return summary


def resume_batches(inputs: list[PromptRecord], store: JsonlStore, chunk_size: int) -> list[list[PromptRecord]]:
    """The batches that make every record missing from `store`, on chunk boundaries fixed by
    position in the inputs (so a fresh run and a resumed one cut the same chunks).

    vLLM's numerics depend on what else is in the batch, so per-record seeds alone do not make a
    record's text independent of its batch. A chunk cut short (a torn write, prompts appended to
    the file) is therefore made again whole and only its missing records are written: they come
    out as in the uninterrupted run. Records dropped as stale (their inputs changed, so their texts
    change anyway) are made together, without their chunk's current records."""
    stale = set(store.stale)
    batches, stale_only = [], []
    for start in range(0, len(inputs), chunk_size):
        chunk = inputs[start : start + chunk_size]
        missing = [r for r in chunk if r.id not in store]
        if any(r.id not in stale for r in missing):
            batches.append(chunk if len(missing) < len(chunk) else missing)
        else:
            stale_only += missing
    return batches + [stale_only[i : i + chunk_size] for i in range(0, len(stale_only), chunk_size)]


# --- The chain of one chunk --------------------------------------------------------------------


def step_names(cfg: ReviseConfig) -> list[str]:
    """The steps of a chain in order: "initial", then "round k critique" / "round k revision"."""
    names = ["initial"]
    for k in range(1, cfg.rounds + 1):
        names += ([] if cfg.direct else [f"round {k} critique"]) + [f"round {k} revision"]
    return names


def response_sampling(cfg: ReviseConfig) -> Sampling:
    return Sampling(max_tokens=cfg.max_tokens, temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed)


def critique_sampling(cfg: ReviseConfig) -> Sampling:
    return Sampling(max_tokens=cfg.critique_max_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                    seed=cfg.seed)


@dataclass
class _Chain:
    """One record's chain while its chunk is being worked on."""

    prompt: PromptRecord
    history: list[dict[str, str]]
    """The conversation so far: prompt turns, initial answer, then each round's turns."""
    initial: Step | None = None
    rounds: list[Round] = field(default_factory=list)
    principles: list[Principle] = field(default_factory=list)


class _ChunkRunner:
    """Runs every step of every round over one chunk: one engine call per step."""

    def __init__(self, engine: Engine, constitution: Constitution, cfg: ReviseConfig,
                 samplings: tuple[Sampling, Sampling], steps: dict[str, StepStats], bars, tasks):
        self.engine, self.c, self.cfg = engine, constitution, cfg
        self.response_sampling, self.critique_sampling = samplings
        self.steps, self.bars, self.tasks = steps, bars, tasks
        # The few-shot answers every prompt shows: an output that copies one is flagged.
        self.fewshot = tuple(t for e in constitution.critique_examples for t in (e.response, e.critique, e.revision))

    def run(self, chunk: list[PromptRecord], model: dict[str, Any]) -> list[ReviseRecord]:
        chains = [_Chain(r, r.conversation) for r in chunk]
        # Initial responses.
        outs = self.generate("initial", [ch.history for ch in chains], self.response_sampling,
                             [self.seed(ch, 0, "initial") for ch in chains])
        for ch, (step, text) in zip(chains, outs, strict=True):
            ch.initial = step
            ch.history = ch.history + [{"role": "assistant", "content": text}]
        for k in range(1, self.cfg.rounds + 1):
            for ch in chains:
                ch.principles.append(self.c.sample(self.cfg.seed, ch.prompt.id, k))
            critiques: list[tuple[Step | None, str | None]] = [(None, None)] * len(chains)
            if not self.cfg.direct:
                # Critique of the last answer under this round's principle.
                critiques = self.generate(
                    f"round {k} critique",
                    [critique_conversation(self.c, ch.history, ch.principles[-1]) for ch in chains],
                    self.critique_sampling, [self.seed(ch, k, "critique") for ch in chains])
            # Revision, after the critique (or directly).
            prompts = [revision_prompt(self.c, ch.history, ch.principles[-1], text)
                       for ch, (_, text) in zip(chains, critiques, strict=True)]
            revisions = self.generate(f"round {k} revision", prompts, self.response_sampling,
                                      [self.seed(ch, k, "revision") for ch in chains])
            for ch, (crit, crit_text), prompt, (rev, rev_text) in zip(chains, critiques, prompts, revisions,
                                                                      strict=True):
                p = ch.principles[-1]
                ch.rounds.append(Round(round=k, principle=p.id, principle_hash=p.hash, critique=crit,
                                       revision=rev))
                ch.history = next_history(self.c, ch.history, p, crit_text, prompt[-1], rev_text)
        return [self.record(ch, model) for ch in chains]

    def seed(self, ch: _Chain, round: int, step: str) -> int:
        return provenance.derive_seed(self.cfg.seed, ch.prompt.id, round, step)

    def generate(self, name: str, prompts: list[list[dict[str, str]]], sampling: Sampling,
                 seeds: list[int]) -> list[tuple[Step, str]]:
        """One engine call for the whole chunk; returns (step record, cleaned text) per prompt."""
        t0 = time.perf_counter()
        outs = self.engine.generate(prompts, sampling, seeds=seeds)
        if len(outs) != len(prompts):
            raise EngineError(f"the engine returned {len(outs)} completions for {len(prompts)} prompts",
                              fix="this is a bug in the engine backend; please report it")
        seconds = time.perf_counter() - t0
        kind = "response" if name == "initial" else name.rsplit(" ", 1)[1]
        results = [step_record(out, kind, seed, self.fewshot) for out, seed in zip(outs, seeds, strict=True)]
        s = self.steps[name]
        self.steps[name] = StepStats(
            calls=s.calls + 1, records=s.records + len(prompts),
            prompt_tokens=s.prompt_tokens + sum(o.prompt_tokens for o in outs),
            completion_tokens=s.completion_tokens + sum(o.completion_tokens for o in outs),
            seconds=s.seconds + seconds)
        self.bars.update(self.tasks[name], advance=len(prompts), tokens=self.steps[name].completion_tokens)
        return results

    def record(self, ch: _Chain, model: dict[str, Any]) -> ReviseRecord:
        samplings = sampling_dicts(self.response_sampling, self.critique_sampling)
        return ReviseRecord(
            id=ch.prompt.id,
            input=tuple(ch.prompt.conversation),
            source=ch.prompt.source,
            initial=ch.initial,
            rounds=tuple(ch.rounds),
            final=ch.rounds[-1].revision.text,
            flags=tuple(chain_flags(ch.initial, ch.rounds)),
            direct=self.cfg.direct,
            constitution=ConstitutionStamp(name=self.c.name, version=self.c.version, hash=self.c.hash),
            provenance=Provenance(**provenance.stamp(model, samplings, self.cfg.seed)),
            clean_version=CLEAN_VERSION,
            key=record_key(ch.prompt.conversation, self.c, ch.principles, model, samplings, self.cfg),
        )


def step_record(out: Completion, kind: str, seed: int, fewshot: tuple[str, ...] = ()) -> tuple[Step, str]:
    """A generated text as stored: cleaned text, token counts, finish reason, flags, seed; and
    `raw` (the model's own text) when cleaning changed it."""
    cleaned = clean(out.text, kind, out.finish_reason, fewshot)
    step = Step(text=cleaned.text, prompt_tokens=out.prompt_tokens, completion_tokens=out.completion_tokens,
                finish_reason=out.finish_reason, flags=tuple(cleaned.flags), seed=seed,
                raw=out.text if cleaned.text != out.text else None)
    return step, cleaned.text


def revision_prompt(c: Constitution, history: list[dict[str, str]], principle: Principle,
                    critique: str | None) -> list[dict[str, str]]:
    """The messages that ask for a revision: after the critique, or directly (critique None)."""
    if critique is None:
        return direct_revision_conversation(c, history, principle)
    return revision_conversation(c, with_critique(c, history, principle, critique), principle)


def next_history(c: Constitution, history: list[dict[str, str]], principle: Principle, critique: str | None,
                 revision_request: dict[str, str], revision: str) -> list[dict[str, str]]:
    """The conversation after a round: the critique turns (if any), the revision request and the
    revision. The next round critiques this revision, with the whole chain in view."""
    if critique is not None:
        history = with_critique(c, history, principle, critique)
    return list(history) + [revision_request, {"role": "assistant", "content": revision}]


# --- Provenance: the input key -----------------------------------------------------------------


def sampling_dicts(response: Sampling, critique: Sampling) -> dict[str, Any]:
    return {"response": response.to_dict(), "critique": critique.to_dict()}


def record_key(messages: list[dict[str, str]], c: Constitution, principles: list[Principle],
               model: dict[str, Any], samplings: dict[str, Any], cfg: ReviseConfig) -> str:
    """The key of everything a record is made from: the prompt, the templates and few-shot
    transcripts every prompt shows, what revise reads of the principles this chain drew (id,
    critique, revision: `Principle.revise_hash`, not the judge's question), the model (name,
    folder fingerprint, backend, dtype: `cai.models.key_identity`), sampling, seed and the cleaning
    version. The draws themselves depend on the weights table, so an added principle or a new
    weight makes stale exactly the records that now draw another principle."""
    return provenance.key("revise", messages, constitution_prompts(c), [p.revise_hash for p in principles],
                          cfg.rounds, cfg.direct, models.key_identity(model), samplings, cfg.seed,
                          CLEAN_VERSION)


def current_keys(inputs: list[PromptRecord], c: Constitution, model: dict[str, Any],
                 samplings: tuple[Sampling, Sampling], cfg: ReviseConfig) -> dict[str, str]:
    """The key each input's record has when made from today's inputs (id -> key)."""
    sd = sampling_dicts(*samplings)
    return {r.id: record_key(r.conversation, c, [c.sample(cfg.seed, r.id, k) for k in range(1, cfg.rounds + 1)],
                             model, sd, cfg) for r in inputs}


# --- Context budget ----------------------------------------------------------------------------


def context_budget(c: Constitution, engine: Engine, cfg: ReviseConfig) -> int:
    """Tokens a record's chain needs besides its prompt: the few-shot prefix, every request
    (of the principle with the longest ones, since any can be drawn), every generated text at
    its token budget, and a margin. Raises ConfigError when no prompt could fit."""
    requests = [c.templates.critique.format(critique_request=p.critique)
                + c.templates.revision.format(revision_request=p.revision) for p in c.principles]
    lengths = engine.count_tokens(requests)
    worst = c.principles[max(range(len(requests)), key=lengths.__getitem__)]
    empty_prompt = [{"role": "user", "content": ""}]
    history = empty_prompt + [{"role": "assistant", "content": ""}]
    critique = None if cfg.direct else ""
    for _ in range(cfg.rounds):
        prompt = revision_prompt(c, history, worst, critique)
        history = next_history(c, history, worst, critique, prompt[-1], "")
    fixed, bare = engine.count_tokens([engine.render(prompt), engine.render(empty_prompt)])
    fixed -= bare
    texts = 2 * cfg.rounds + 1 - (cfg.rounds if cfg.direct else 0)
    generated = cfg.max_tokens * (cfg.rounds + 1) + (0 if cfg.direct else cfg.critique_max_tokens * cfg.rounds)
    budget = fixed + generated + CONTEXT_MARGIN_PER_TEXT * texts
    if budget >= engine.max_model_len:
        raise ConfigError(
            f"{cfg.rounds} round(s) need {budget} tokens of context before any prompt: {fixed} for the "
            f"few-shot prefix and requests, {generated} for the generated texts (max_tokens "
            f"{cfg.max_tokens} x {cfg.rounds + 1}"
            + ("" if cfg.direct else f" + critique_max_tokens {cfg.critique_max_tokens} x {cfg.rounds}")
            + f"); the model's context is {engine.max_model_len}",
            fix="lower --rounds, --max-tokens or --critique-max-tokens, or raise --max-model-len",
        )
    return budget


# --- Resume ------------------------------------------------------------------------------------


def run_inputs(c: Constitution, model: dict[str, Any]) -> dict[str, Any]:
    """What every record depends on that config.yaml cannot show (it holds paths and names): a
    resume with other values is refused unless --force (records.open_run_dir)."""
    return {"model_fingerprint": model["fingerprint"], "clean_version": CLEAN_VERSION,
            "constitution_prompts": constitution_prompts(c)}


def constitution_prompts(c: Constitution) -> str:
    """Hash of what of the constitution every revise prompt shows: the critique and revision
    templates and the few-shot transcripts."""
    if c.hash not in _PROMPTS:  # record_key asks for it once per record
        d = c.to_dict()
        _PROMPTS[c.hash] = provenance.key(
            {k: d["templates"][k] for k in ("critique", "revision", "direct_revision")}, d["critique_examples"])
    return _PROMPTS[c.hash]


_PROMPTS: dict[str, str] = {}


# --- Helpers -----------------------------------------------------------------------------------


def _quiet():
    from rich.console import Console

    return Console(quiet=True)
