"""The typed records stages hand each other through files: what `cai revise` writes to
records.jsonl, what `cai label` and `cai judge eval` write to judgments.jsonl, and the SFT and
preference rows of the exports (sft.jsonl, prefs.jsonl, ties.jsonl, dataset/), and the answers
and refusal verdicts `cai eval` stores (answers.jsonl, refusals.jsonl).

Each is a frozen dataclass whose fields are the record's keys, in the order they are written:
`to_dict` gives exactly the JSON object a stage writes (same keys, same order, same values), and
`from_dict` reads one back, checking every field's type, so that a reader uses attributes
instead of string keys and a malformed record fails at once with a `RecordError` naming the file,
line, record id and field (e.g. `rounds[1].revision.text`) instead of a KeyError three calls
later. docs/architecture.md ("Records between stages") lists the fields.

Three field options (dataclass `metadata`), for the places where the written JSON is not one key
per field: `FLAT` (a nested record written inline: a judgment's verdict), `OMIT_NONE` (a key
written only when set: a step's `raw`) and `TURN` (a text written as one assistant turn,
`[{"role": "assistant", "content": text}]`: TRL's chosen and rejected).

Format version: `FORMAT_VERSION` is the format this cai writes and reads. Version 1, the format of
every record written so far, carries no version key: adding one would change every output byte of
a run that is otherwise identical. A later format that changes what a field means writes
`schema_version: 2` in every record (`VERSION_KEY`), and this reader refuses any record of a
version newer than it knows, rather than misread it.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from cai.errors import Location, RecordError
from cai.records import read_jsonl_numbered

FORMAT_VERSION = 1
"""The record format this cai writes; it reads this one and every older one."""
VERSION_KEY = "schema_version"
"""The key that carries a record's format version from version 2 on (absent: version 1)."""

FLAT = {"flat": True}
OMIT_NONE = {"omit_none": True}
TURN = {"turn": True}

Message = dict[str, str]
"""One chat turn: {"role": ..., "content": ...}."""


R = TypeVar("R", bound="Record")


class Record:
    """Base of every typed record: generic `to_dict` / `from_dict` driven by the field types."""

    FIX: ClassVar[str] = "this file was not written by cai, or was edited by hand: make it again"
    """What to do about a malformed record of this kind (the error's `fix:` line)."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, _, flat, turn, _, omit_none in _plan(type(self)):
            value = getattr(self, name)
            if flat:
                out.update(value.to_dict())
            elif turn:
                out[name] = assistant(value)
            elif value is not None or not omit_none:
                out[name] = _jsonable(value)
        return out

    @classmethod
    def from_dict(cls: type[R], d: Any, where: Location | None = None) -> R:
        """Read a record written by `to_dict`, or by cai before these types (the same format 1:
        tests/records_v1); `where` (file and line) is named in the error for a malformed one,
        with the record's id and the field."""
        where = Location() if where is None else where
        if isinstance(d, dict) and where.record is None and isinstance(d.get("id"), str | int):
            where = dataclasses.replace(where, record=str(d["id"]))
        _check_version(d, where, cls)
        return _read(cls, d, "", where, cls.FIX)


def assistant(text: str) -> list[Message]:
    """A response as TRL's conversational formats hold it: one assistant turn."""
    return [{"role": "assistant", "content": text}]


def read_records(path: Path, cls: type[R]) -> Iterator[R]:
    """The records of a JSONL file, each read by `cls.from_dict`; errors name the file and line."""
    for line, obj in read_jsonl_numbered(path):
        yield cls.from_dict(obj, Location(str(path), line))


# --- cai revise: records.jsonl -------------------------------------------------------------------


@dataclass(frozen=True)
class Step(Record):
    """One generated text of a chain (the initial response, a critique or a revision)."""

    text: str
    """The cleaned text (cai.clean)."""
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    flags: tuple[str, ...]
    """What cleaning found wrong ("truncated", "empty", ...: cai.clean.FLAGS)."""
    seed: int
    """The generation's own seed, derived from (run seed, record id, round, step)."""
    raw: str | None = field(default=None, metadata=OMIT_NONE)
    """The model's own text, only where cleaning changed it."""


@dataclass(frozen=True)
class Round(Record):
    """One critique-revision round of a chain."""

    round: int
    """1, 2, ..."""
    principle: str
    """The id of the principle drawn for this round."""
    principle_hash: str
    critique: Step | None
    """None in direct mode (no critique)."""
    revision: Step


@dataclass(frozen=True)
class ConstitutionStamp(Record):
    """Which constitution made a record."""

    name: str
    version: str
    hash: str


@dataclass(frozen=True)
class Provenance(Record):
    """How a generated record was made (cai.provenance.stamp), written inline in it."""

    model: str
    """The model's name (aliases spelled out)."""
    model_fingerprint: str | None
    """Its folder's fingerprint (cai.models.fingerprint); None for a model with no local folder."""
    engine: dict[str, Any]
    """The engine settings that change outputs (backend, dtype)."""
    sampling: dict[str, Any]
    """The sampling parameters (revise: {"response": ..., "critique": ...})."""
    seed: int
    cai_version: str


@dataclass(frozen=True)
class ReviseRecord(Record):
    """One prompt's chain, as `cai revise` writes it to records.jsonl (one line per prompt id)."""

    FIX: ClassVar[str] = ("pass the output folder of `cai revise` (its records.jsonl is written by cai; "
                          "a record edited by hand can be deleted and made again by running revise on the folder)")

    id: str
    input: tuple[Message, ...]
    """The prompt turns."""
    source: str
    """Where the prompt came from ("file:line")."""
    initial: Step
    rounds: tuple[Round, ...]
    final: str
    """The last round's revision text."""
    flags: tuple[str, ...]
    """Every flag of the chain, named by its step: "initial:truncated", "round2.critique:empty"."""
    direct: bool
    constitution: ConstitutionStamp
    provenance: Provenance = field(metadata=FLAT)
    clean_version: int
    key: str
    """The hash of everything the record is made from (cai.revise.record_key)."""

    def chain(self) -> list[tuple[str, Step]]:
        """The answers of the chain in order, by name: ("initial", ...), ("round1", ...), ..."""
        return [("initial", self.initial)] + [(f"round{r.round}", r.revision) for r in self.rounds]


def chain_flags(initial: Step, rounds: tuple[Round, ...] | list[Round]) -> list[str]:
    """A record's `flags`: every step's flags, prefixed by the step ("round1.revision:empty")."""
    flags = [f"initial:{f}" for f in initial.flags]
    for rnd in rounds:
        for name in ("critique", "revision"):
            step = getattr(rnd, name)
            if step is not None:
                flags += [f"round{rnd.round}.{name}:{f}" for f in step.flags]
    return flags


# --- cai label, prompts input: responses.jsonl -----------------------------------------------------


@dataclass(frozen=True)
class PromptSamples(Record):
    """The policy's samples for one prompt, as `cai label` stores them before judging (status
    "sampled"), so that a resumed job judges exactly the same responses."""

    FIX: ClassVar[str] = ("delete the line from responses.jsonl (the prompt is sampled again on the next run), "
                          "or start again in a new --out folder")

    id: str
    status: Literal["sampled"]
    prompt: tuple[Message, ...]
    responses: tuple[str, ...]
    finish_reasons: tuple[str, ...] | None = field(kw_only=True, default=None, metadata=OMIT_NONE)
    """How each sample ended; None (absent) in samples stored before cai recorded it: read as "stop"."""
    completion_tokens: tuple[int, ...]
    source: str
    provenance: Provenance = field(metadata=FLAT)
    key: str


@dataclass(frozen=True)
class RejectedPrompt(Record):
    """A prompt too long to sample (status "rejected"), stored so that a resumed job reports the
    same rejects without loading the policy."""

    FIX: ClassVar[str] = PromptSamples.FIX

    id: str
    status: Literal["rejected"]
    source: str
    reason: str
    fix: str
    key: str


def sample_record(d: Any, where: Location | None = None) -> PromptSamples | RejectedPrompt:
    """A line of responses.jsonl: samples, or a rejected prompt (by its `status`)."""
    rejected = isinstance(d, dict) and d.get("status") == "rejected"
    return (RejectedPrompt if rejected else PromptSamples).from_dict(d, where)


# --- Judgments: cai label and cai judge eval -----------------------------------------------------


@dataclass(frozen=True)
class Verdict(Record):
    """The judge's verdict on one pair as stored (cai.judge.Judgment, principles by id)."""

    status: Literal["judged", "too_long"]
    p: float | None
    """P(x better than y), both orders averaged, mean over the principles (None when not judged)."""
    agree: bool | None
    p_xy: tuple[float, ...]
    p_yx: tuple[float, ...]
    logprobs: tuple[tuple[float, float, float, float], ...]
    """Per principle: the raw option log-probs (xy: A, B, yx: A, B)."""
    rationales: tuple[tuple[str, str], ...]
    principles: tuple[str, ...]
    principle_hashes: tuple[str, ...]
    prompt_tokens: int
    detail: str
    """Why a pair was not judged ("" when it was)."""


@dataclass(frozen=True)
class PairJudgment(Record):
    """One judged pair as `cai label` writes it to judgments.jsonl: the pair, the verdict (inline)
    and everything needed to rebuild its preference row."""

    FIX: ClassVar[str] = ("delete the line from judgments.jsonl (the pair is judged again on the next run), "
                          "or start again in a new --out folder")

    id: str
    """The pair id: "<group id>/<i>-<j>"."""
    group_id: str
    conversation: tuple[Message, ...]
    x: str
    y: str
    x_ref: str
    y_ref: str
    verdict: Verdict = field(metadata=FLAT)
    judge_model: str
    judge_fingerprint: str | None
    judge_engine: dict[str, Any]
    constitution: ConstitutionStamp
    judging: dict[str, Any]
    seed: int
    cai_version: str
    key: str


@dataclass(frozen=True)
class EvalJudgment(Record):
    """One judged human-labeled pair as `cai judge eval` writes it (x is the human's choice)."""

    FIX: ClassVar[str] = PairJudgment.FIX

    id: str
    verdict: Verdict = field(metadata=FLAT)
    chosen_chars: int
    rejected_chars: int
    judge_model: str
    judge_fingerprint: str | None
    constitution_hash: str
    key: str


# --- Exported rows (TRL's conversational formats, plus provenance) -------------------------------


@dataclass(frozen=True)
class SftRow(Record):
    """A row of sft.jsonl (cai revise): the prompt turns and the revision to train on."""

    id: str
    messages: tuple[Message, ...]
    round: int
    principle: str
    principle_hash: str
    constitution_hash: str
    key: str


@dataclass(frozen=True)
class RevisionPreference(Record):
    """A row of cai revise's prefs.jsonl: the final revision (chosen) over the initial response."""

    id: str
    prompt: tuple[Message, ...]
    chosen: str = field(metadata=TURN)
    rejected: str = field(metadata=TURN)
    principles: tuple[str, ...]
    principle_hashes: tuple[str, ...]
    constitution_hash: str
    key: str


@dataclass(frozen=True)
class JudgedPreference(Record):
    """A row of cai label's prefs.jsonl / ties.jsonl: a judged pair with its soft label."""

    id: str
    """The source prompt / record id (all pairs of one prompt share it, and its split)."""
    prompt: tuple[Message, ...]
    chosen: str = field(metadata=TURN)
    rejected: str = field(metadata=TURN)
    pair_id: str
    p_chosen: float
    p_chosen_first: tuple[float, ...]
    p_rejected_first: tuple[float, ...]
    position_agree: bool
    tie: bool
    principles: tuple[str, ...]
    principle_hashes: tuple[str, ...]
    judge_model: str
    constitution_hash: str
    source_ids: tuple[str, ...]
    key: str


# --- cai eval: answers.jsonl ------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalAnswer(Record):
    """One policy's answer to one suite prompt, as `cai eval` writes it to answers.jsonl."""

    id: str
    """"<policy>/<suite>/<prompt id>"."""
    policy: str
    suite: str
    prompt_id: str
    prompt: tuple[Message, ...]
    """The suite's conversation (without the recipe's system prompt)."""
    system: str
    """The system prompt the policy answered under ("" for none)."""
    answer: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    provenance: Provenance = field(metadata=FLAT)
    key: str


@dataclass(frozen=True)
class RefusalJudgment(Record):
    """The judge's answer to the refusal question about one eval answer, as `cai eval` stores it in
    refusals.jsonl (`cai.eval.refusal_judge`)."""

    FIX: ClassVar[str] = ("delete the line from refusals.jsonl (the answer is asked about again on the next run), "
                          "or start again in a new --out folder")

    id: str
    """The answer's id: "<policy>/<suite>/<prompt id>"."""
    status: Literal["judged", "too_long"]
    p: float | None
    """P(refusal), both option orders averaged (None when not judged)."""
    p_orders: tuple[float, ...]
    """P(refusal) with the refusal option shown as (A), then as (B)."""
    agree: bool | None
    """Both orders said the same (refusal or not)."""
    logprobs: tuple[float, ...]
    """The raw option log-probs: (refusal as (A): A, B; refusal as (B): A, B)."""
    prompt_tokens: int
    detail: str
    """Why the answer was not judged ("" when it was)."""
    question_hash: str
    judge_model: str
    judge_fingerprint: str | None
    cai_version: str
    key: str


def columns(cls: type[Record]) -> list[str]:
    """The keys a record of `cls` is written with, in order (a flat field's own keys inline)."""
    out: list[str] = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        out += columns(_hints(cls)[f.name]) if f.metadata.get("flat") else [f.name]
    return out


# --- The generic reader --------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


def _check_version(d: Any, where: Location, cls: type) -> None:
    version = d.get(VERSION_KEY, 1) if isinstance(d, dict) else 1
    if not (isinstance(version, int) and not isinstance(version, bool) and version >= 1):
        raise RecordError(f"{VERSION_KEY} must be a whole number >= 1, got {version!r}", where, fix=cls.FIX)
    if version > FORMAT_VERSION:
        raise RecordError(
            f"this {cls.__name__} is of record format {version}; this cai (format {FORMAT_VERSION}) cannot read it",
            where, fix="read it with the newer cai that wrote it (pip install -U cai)")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@functools.cache
def _plan(cls: type) -> tuple[tuple[str, Any, bool, bool, bool, bool], ...]:
    """Per field, once per class: (name, type, flat, turn, required, omit_none)."""
    return tuple((f.name, _hints(cls)[f.name], bool(f.metadata.get("flat")), bool(f.metadata.get("turn")),
                  f.default is dataclasses.MISSING, bool(f.metadata.get("omit_none")))
                 for f in dataclasses.fields(cls))


@functools.cache
def _shape(kind: Any) -> tuple[Any, tuple[Any, ...]]:
    """(origin, args) of a field type, once per type: "record" for a nested record."""
    if isinstance(kind, type) and issubclass(kind, Record):
        return "record", ()
    return typing.get_origin(kind), typing.get_args(kind)


_NAMES = {str: "a string", int: "a whole number", float: "a number", bool: "true or false", type(None): "null"}
_SCALARS = (str, int, float, bool)


def _read(cls: type[R], d: Any, path: str, where: Location, fix: str) -> R:
    if not isinstance(d, dict):
        what = f"field {path!r}" if path else "the record"
        raise RecordError(f"{what} must be a JSON object, got {_shown(d)}", where, fix=fix)
    values = {}
    for fname, kind, flat, turn, required, _ in _plan(cls):
        name = f"{path}.{fname}" if path else fname
        if flat:
            values[fname] = _read(kind, d, path, where, fix)
        elif fname not in d:
            if required:
                raise RecordError(f"field {name!r} is missing", where, fix=fix)
        elif turn:
            values[fname] = _turn(d[fname], name, where, fix)
        else:
            values[fname] = _value(kind, d[fname], name, where, fix)
    return cls(**values)


def _value(kind: Any, v: Any, name: str, where: Location, fix: str) -> Any:
    """`v` checked against the field type `kind` (and tuples made of lists)."""
    origin, args = _shape(kind)
    if origin == "record":
        return _read(kind, v, name, where, fix)
    if origin in (typing.Union, types.UnionType):
        if v is None and type(None) in args:
            return None
        return _value(next(a for a in args if a is not type(None)), v, name, where, fix)
    if origin is Literal:
        if v not in args:
            raise RecordError(f"field {name!r} must be one of {', '.join(map(repr, args))}, got {_shown(v)}",
                              where, fix=fix)
        return v
    if origin is tuple:
        return _tuple(args, v, name, where, fix)
    if origin is dict:
        if not isinstance(v, dict):
            raise RecordError(f"field {name!r} must be a JSON object, got {_shown(v)}", where, fix=fix)
        if args == (str, str):  # a Message
            for key in ("role", "content"):
                if not isinstance(v.get(key), str):
                    raise RecordError(f"field {name!r} must be a turn with a string {key!r}, got {_shown(v)}",
                                      where, fix=fix)
        return dict(v)
    if kind is Any:
        return v
    if not _is(kind, v):
        raise RecordError(f"field {name!r} must be {_NAMES[kind]}, got {_shown(v)}", where, fix=fix)
    return v


def _tuple(args: tuple[Any, ...], v: Any, name: str, where: Location, fix: str) -> tuple:
    """A JSON list read as a tuple: `tuple[T, ...]` (any length) or `tuple[T1, T2, ...]` (fixed)."""
    any_length = args[-1] is Ellipsis
    if not isinstance(v, list) or (not any_length and len(v) != len(args)):
        size = "a list" if any_length else f"a list of {len(args)}"
        raise RecordError(f"field {name!r} must be {size}, got {_shown(v)}", where, fix=fix)
    each = [args[0]] * len(v) if any_length else list(args)
    if all(k in _SCALARS for k in each) and all(_is(k, x) for k, x in zip(each, v, strict=True)):
        return tuple(v)  # the common case (flags, probabilities, ids), checked without naming every item
    return tuple(_value(k, x, f"{name}[{i}]", where, fix) for i, (k, x) in enumerate(zip(each, v, strict=True)))


def _is(kind: type, v: Any) -> bool:
    """Whether a JSON value is of a scalar field type: an int is a float, a bool is neither."""
    if isinstance(v, bool):
        return kind is bool
    return isinstance(v, int | float) if kind is float else isinstance(v, kind)


def _turn(v: Any, name: str, where: Location, fix: str) -> str:
    """The text of a response written as one assistant turn."""
    if not (isinstance(v, list) and len(v) == 1 and isinstance(v[0], dict) and v[0].get("role") == "assistant"
            and isinstance(v[0].get("content"), str)):
        raise RecordError(f"field {name!r} must be one assistant turn, [{{\"role\": \"assistant\", "
                          f"\"content\": ...}}], got {_shown(v)}", where, fix=fix)
    return v[0]["content"]


def _shown(v: Any) -> str:
    text = repr(v)
    return f"{type(v).__name__} {text[:60] + '...' if len(text) > 60 else text}"
