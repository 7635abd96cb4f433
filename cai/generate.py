"""`cai generate`: answer a file of prompts with one model, batched, resumable, with provenance.

Output: one JSONL record per prompt id (appended as each chunk finishes), a rejects file for
rows that cannot be used, and a summary. On resume, a record whose key differs from today's
inputs (an edited prompt, another model, dtype, backend or sampling) is made again and counted as
stale: the output is one file with no config beside it, so there is nothing to refuse against.
OUT.lock keeps a second process from writing into the same file.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from cai import models, provenance
from cai.config import EngineConfig
from cai.data import PromptRecord, read_prompts, reject_too_long
from cai.engine import Engine, Sampling, make_engine
from cai.engine.base import FINISHED
from cai.progress import make_progress
from cai.records import JsonlStore, RunLock, write_jsonl_atomic


@dataclass(frozen=True)
class GenerateConfig:
    """Settings of `cai generate`."""

    prompts: Path
    """Input prompts: JSONL, JSON, CSV or a HF dataset folder."""
    out: Path
    """Output JSONL file (resumed if it exists: ids already there are skipped)."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    """Model and backend."""
    prompt_column: str = "prompt"
    """Column holding the prompt text or conversation."""
    id_column: str = "id"
    """Column holding a stable id (else one is derived from the content)."""
    max_tokens: int = 256
    """New tokens per response."""
    temperature: float = 0.7
    """Sampling temperature (0 = greedy)."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    seed: int = 0
    """Base seed; prompt i of a chunk uses seed + a per-prompt offset."""
    chunk_size: int = 256
    """Prompts per engine call; finished chunks are flushed to disk."""


@dataclass(frozen=True)
class GenerateSummary:
    done: int
    skipped: int
    rejected: int
    prompt_tokens: int
    completion_tokens: int
    truncated: int
    seconds: float
    rejects_path: Path | None
    stale: int = 0
    """Records of an earlier run whose key differs from today's inputs: made again (in `done`)."""
    unfinished: int = 0
    """Responses the engine ended for another reason than stop or length (flagged `unfinished`)."""


def record_key(r: PromptRecord, model: dict, sampling: Sampling, seed: int) -> str:
    return provenance.key(r.messages, models.key_identity(model), sampling.to_dict(), seed)


def run_generate(cfg: GenerateConfig, engine: Engine | None = None) -> GenerateSummary:
    records, rejects = read_prompts(cfg.prompts, cfg.prompt_column, cfg.id_column)
    out = Path(cfg.out)
    with RunLock(out.with_name(out.name + ".lock"), str(out)):
        return _generate(cfg, records, rejects, engine)


def _generate(cfg: GenerateConfig, records: list[PromptRecord], rejects: list,
              engine: Engine | None) -> GenerateSummary:
    model = models.identity(cfg.engine, engine)
    engine = engine or make_engine(cfg.engine)
    records, too_long = reject_too_long(records, engine, cfg.max_tokens)
    rejects += too_long
    rejects_path = cfg.out.with_name(cfg.out.stem + ".rejects.jsonl")
    if rejects:
        write_jsonl_atomic(rejects_path, [r.to_dict() for r in rejects])

    sampling = Sampling(max_tokens=cfg.max_tokens, temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed)
    keys = {r.id: record_key(r, model, sampling, provenance.derive_seed(cfg.seed, r.id)) for r in records}
    store = JsonlStore(cfg.out, current_keys=keys)
    pending = [r for r in records if r.id not in store]
    t0 = time.perf_counter()
    n_prompt = n_comp = truncated = unfinished = 0
    with store, make_progress("prompts") as progress:
        task = progress.add_task("generate", total=len(pending), tokens=0)
        for start in range(0, len(pending), cfg.chunk_size):
            chunk = pending[start : start + cfg.chunk_size]
            # Each prompt's seed comes from its id, so a resumed run samples it exactly as an
            # uninterrupted one would, whatever else is in the chunk.
            seeds = [provenance.derive_seed(cfg.seed, r.id) for r in chunk]
            outs = engine.generate([r.conversation for r in chunk], sampling, seeds=seeds)
            for r, seed, c in zip(chunk, seeds, outs, strict=True):
                store.append({
                    "id": r.id,
                    "prompt": r.conversation,
                    "response": c.text,
                    "finish_reason": c.finish_reason,
                    # An aborted or failed request is not an answer (cai.clean's `unfinished`).
                    "flags": [] if c.finish_reason in FINISHED else ["unfinished"],
                    "prompt_tokens": c.prompt_tokens,
                    "completion_tokens": c.completion_tokens,
                    "source": r.source,
                    **provenance.stamp(model, sampling.to_dict(), seed),
                    "key": keys[r.id],
                })
                n_prompt += c.prompt_tokens
                n_comp += c.completion_tokens
                truncated += c.finish_reason == "length"
                unfinished += c.finish_reason not in FINISHED
            store.flush()
            progress.update(task, advance=len(chunk), tokens=n_comp)
    return GenerateSummary(done=len(pending), skipped=len(records) - len(pending), rejected=len(rejects),
                           prompt_tokens=n_prompt, completion_tokens=n_comp, truncated=truncated,
                           seconds=time.perf_counter() - t0, rejects_path=rejects_path if rejects else None,
                           stale=len(store.stale), unfinished=unfinished)
