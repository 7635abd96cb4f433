"""Every policy answers every suite prompt: DIR/answers.jsonl, one `cai.schema.EvalAnswer` per
(policy, suite, prompt id), resumable like `cai generate`.

Seeds: an answer's seed derives from the run seed, the suite and the prompt id, not from the
policy, so every policy samples a prompt with the same seed (common random numbers: the
comparison of two policies is not blurred by two different draws). Keys: the conversation as
the policy saw it (system prompt included), the model (`cai.models.key_identity`; for a served
model also its URL and served name), the sampling and the seed; a stored answer whose key differs
from today's (an edited prompt, another model in the same folder, another recipe text, another
server) is answered again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from cai import models, provenance
from cai.constitution import Constitution
from cai.data import PromptRecord, reject_too_long
from cai.engine import Engine, Sampling, make_engine
from cai.errors import InputError, Location
from cai.eval.policies import Policy, system_prompt, with_system
from cai.eval.suites import Suite
from cai.progress import make_progress
from cai.records import JsonlStore
from cai.schema import EvalAnswer, Provenance

ANSWERS_FILE = "answers.jsonl"


def answer_id(policy: str, suite: str, prompt_id: str) -> str:
    return f"{policy}/{suite}/{prompt_id}"


def answer_seed(seed: int, suite: str, prompt_id: str) -> int:
    return provenance.derive_seed(seed, "eval", suite, prompt_id)


def answer_keys(policy: Policy, identity: dict[str, Any], suites: Sequence[Suite], c: Constitution,
                sampling: Sampling, seed: int) -> dict[str, str]:
    """The key today's inputs give each of the policy's answers, by answer id."""
    system = system_prompt(policy, c)
    return {answer_id(policy.name, s.name, r.id): provenance.key(
                with_system(r.conversation, system), models.key_identity(identity), sampling.to_dict(),
                answer_seed(seed, s.name, r.id), *_served(policy))
            for s in suites for r in s.records}


def _served(policy: Policy) -> tuple[str, ...]:
    """A served policy's server and model name. The identity knows only the local tokenizer, and a
    SPEC may change on resume: another URL is another model, whose answers must be made again."""
    e = policy.engine
    return (e.base_url, e.served_model_name or e.model) if e.backend == "http" else ()


@dataclass
class Answering:
    """What answering needs besides the policies: the stage's shared inputs."""

    suites: Sequence[Suite]
    constitution: Constitution
    sampling: Sampling
    seed: int
    chunk_size: int
    store: JsonlStore
    keys: dict[str, str] = field(default_factory=dict)
    tokens: int = 0
    """Completion tokens generated in this run."""


def answer_all(job: Answering, policies: Sequence[Policy], identities: Mapping[str, dict[str, Any]],
               engines: Mapping[str, Engine]) -> int:
    """Answer every prompt not yet in the store, policy by policy. Policies that share an engine
    config share one engine; an engine made here is closed before the next is made (two models
    may not fit at once). Returns the answers written."""
    written = 0
    by_engine: dict[Any, list[Policy]] = {}
    for p in policies:
        by_engine.setdefault(p.name if p.name in engines else p.engine, []).append(p)
    for group in by_engine.values():
        todo = [(p, s, r) for p in group for s in job.suites for r in s.records
                if answer_id(p.name, s.name, r.id) not in job.store]
        if not todo:
            continue
        given = engines.get(group[0].name)
        engine = given or make_engine(group[0].engine)
        try:
            written += _answer(job, todo, engine, identities)
        finally:
            if given is None:
                engine.close()
    return written


def _answer(job: Answering, todo: list, engine: Engine, identities: Mapping[str, dict[str, Any]]) -> int:
    systems = {p.name: system_prompt(p, job.constitution) for p, _, _ in todo}
    _check_fit(todo, engine, systems, job.sampling.max_tokens)
    with make_progress("answers") as progress:
        task = progress.add_task("answer", total=len(todo), tokens=0)
        for start in range(0, len(todo), job.chunk_size):
            chunk = todo[start:start + job.chunk_size]
            seeds = [answer_seed(job.seed, s.name, r.id) for _, s, r in chunk]
            # Answers with one key (one model, conversation, sampling and seed: e.g. a PPO run's
            # step 0 beside its SFT policy) are one answer: generated once, stored under each id.
            keys = [job.keys[answer_id(p.name, s.name, r.id)] for p, s, r in chunk]
            first = {k: i for i, k in reversed(list(enumerate(keys)))}
            unique = sorted(first.values())
            made = dict(zip(unique, engine.generate(
                [with_system(chunk[i][2].conversation, systems[chunk[i][0].name]) for i in unique],
                job.sampling, seeds=[seeds[i] for i in unique]), strict=True))
            outs = [made[first[k]] for k in keys]
            for i, ((p, s, r), seed, c) in enumerate(zip(chunk, seeds, outs, strict=True)):
                aid = answer_id(p.name, s.name, r.id)
                job.store.append(EvalAnswer(
                    id=aid, policy=p.name, suite=s.name, prompt_id=r.id, prompt=tuple(r.conversation),
                    system=systems[p.name], answer=c.text, finish_reason=c.finish_reason,
                    prompt_tokens=c.prompt_tokens, completion_tokens=c.completion_tokens,
                    provenance=Provenance(**provenance.stamp(identities[p.name], job.sampling.to_dict(), seed)),
                    key=job.keys[aid]).to_dict())
                job.tokens += c.completion_tokens if first[keys[i]] == i else 0
            job.store.flush()
            progress.update(task, advance=len(chunk), tokens=job.tokens)
    return len(todo)


def _check_fit(todo: list, engine: Engine, systems: Mapping[str, str], max_tokens: int) -> None:
    """Refuse before any generation a prompt that leaves no room for its answer."""
    for name, system in systems.items():
        # Keyed by suite too: two suites may both have a prompt "1", and each must be checked.
        records = list({(s.name, r.id): r for p, s, r in todo if p.name == name}.values())
        with_sys = [r if not system else _prefixed(r, system) for r in records]
        _, too_long = reject_too_long(with_sys, engine, max_tokens)
        if too_long:
            r = too_long[0]
            raise InputError(f"policy {name!r}: {len(too_long)} suite prompt(s) do not fit; the first: {r.reason}",
                             Location(r.source, record=r.id), fix=r.fix)


def _prefixed(record: PromptRecord, system: str) -> PromptRecord:
    turns = with_system(record.conversation, system)
    return replace(record, messages=tuple((m["role"], m["content"]) for m in turns))
