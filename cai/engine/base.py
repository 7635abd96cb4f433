"""The engine interface every backend implements, and the records it returns.

Sampling is always explicit: no field has a library default behind it (vLLM's own default of
max_tokens=16 has truncated many a dataset).
"""

from __future__ import annotations

import abc
from dataclasses import asdict, dataclass, field
from typing import Literal

Role = Literal["system", "user", "assistant"]
Message = dict[str, str]  # {"role": ..., "content": ...}
Conversation = list[Message]


@dataclass(frozen=True)
class Rendered:
    """A conversation rendered by the model's chat template (`Engine.render`), with the places of
    the template's own special tokens. Only those become special token ids: message content, and
    any text appended with `+` (a cue, a rationale), is tokenized as text, so a response that
    contains "<|im_end|>" cannot close its turn."""

    text: str
    """The prompt as the model sees it."""
    specials: tuple[tuple[int, int], ...] = ()
    """Character spans [start, end) of the template's special tokens in `text`."""

    def __add__(self, more: str) -> Rendered:
        if not isinstance(more, str):
            return NotImplemented
        return Rendered(self.text + more, self.specials)

    def rstrip(self) -> Rendered:
        """Without trailing whitespace (a special token is never whitespace, so none is cut)."""
        return Rendered(self.text.rstrip(), self.specials)

    def __str__(self) -> str:
        return self.text


# A prompt is a chat conversation (the engine applies the model's chat template), a `Rendered`
# one (e.g. a judge prompt continued after a cue), or a string of trusted, already-rendered
# text whose special-token strings are parsed (never put untrusted text in one).
Prompt = Conversation | Rendered | str


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters, passed explicitly to every generate call."""

    max_tokens: int
    """Most new tokens per completion. Required: never left to a library default."""
    temperature: float = 1.0
    """0 is greedy. The paper sampled revisions at 1.0."""
    top_p: float = 1.0
    """Nucleus sampling mass; 1.0 turns it off."""
    seed: int | None = 0
    """Base seed; prompt i uses seed + i (unless `generate` gets explicit per-prompt seeds), so a
    prompt's draw does not depend on what else is in the batch."""
    stop: tuple[str, ...] = ()
    """Strings that end a completion (not included in the text)."""
    n: int = 1
    """Completions per prompt; results hold the n samples of prompt i at [i*n:(i+1)*n]."""
    logprobs: bool = False
    """Also return the log-probability of each sampled token (PPO's engine/trainer check)."""

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stop"] = list(self.stop)
        return d


FinishReason = str
""""stop", "length", or what else the engine said ("abort", "error", ...; "unknown" for none)."""
FINISHED = ("stop", "length")
"""The finish reasons of a completion that ran its course; any other one is flagged downstream."""


def finish_reason(raw: object) -> FinishReason:
    """An engine's finish reason as cai stores it: kept as the engine said it, never mapped to
    "stop" (an aborted or failed request is not a finished answer); None becomes "unknown"."""
    return "unknown" if raw is None else str(raw)


@dataclass(frozen=True)
class Completion:
    """One generated completion."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason
    """"stop": ended on EOS or a stop string; "length": hit max_tokens; anything else (e.g.
    "abort", "error", "unknown") means the text is not a finished answer (see `finish_reason`)."""
    token_ids: tuple[int, ...] = field(default=(), repr=False)
    logprobs: tuple[float, ...] | None = field(default=None, repr=False)


def request_seeds(sampling: Sampling, n: int, seeds: list[int] | None) -> list[int | None]:
    if seeds is not None:
        if len(seeds) != n:
            raise ValueError(f"got {len(seeds)} seeds for {n} prompts")
        return list(seeds)
    return [None if sampling.seed is None else sampling.seed + i for i in range(n)]


class Engine(abc.ABC):
    """A loaded model that generates and scores text. One instance serves a whole job."""

    model_name: str
    """What the model is called in provenance records (a path or a hub id)."""

    @abc.abstractmethod
    def generate(self, prompts: list[Prompt], sampling: Sampling,
                 seeds: list[int] | None = None) -> list[Completion]:
        """One batched call for the whole list. Returns len(prompts) * sampling.n completions in
        input order. `seeds` gives each prompt its own seed (stages pass one derived from the
        record id, so a resumed job samples exactly as an uninterrupted one)."""

    @abc.abstractmethod
    def option_logprobs(self, prompts: list[Rendered | str], options: list[str]) -> list[list[float]]:
        """Total log-probability of each option's tokens as a continuation of each rendered
        prompt: result[i][j] = log P(options[j] | prompts[i]). Prefill only, no sampling."""

    @abc.abstractmethod
    def render(self, conversation: Conversation, add_generation_prompt: bool = True) -> Rendered:
        """The conversation as the model sees it (its chat template applied), with the
        template's special tokens located so that content can never add one."""

    @abc.abstractmethod
    def count_tokens(self, texts: list[Rendered | str]) -> list[int]:
        """Token counts of rendered prompts, tokenized as `generate` would (no BOS added)."""

    @property
    @abc.abstractmethod
    def max_model_len(self) -> int:
        """The longest sequence (prompt + completion) the engine accepts."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free the engine's resources. Backends that hold processes or memory override this."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
