"""A scripted engine for fast unit tests of stage logic (no model, deterministic).

`respond(prompt_text, sample_index) -> str` decides what is generated; `score(prompt_text,
option) -> float` decides option log-probs. Tokens are whitespace-separated words, so token
counts are easy to reason about in tests. Every call is recorded in `calls` so tests can check
batching (one engine call per step, not one per record).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from cai.engine.base import Completion, Conversation, Engine, Prompt, Rendered, Sampling


@dataclass
class FakeEngine(Engine):
    respond: Callable[[str, int], str] = lambda prompt, i: "ok"
    score: Callable[[str, str], float] = lambda prompt, option: -1.0
    model_name: str = "fake-model"
    context: int = 4096
    calls: list[tuple[str, int]] = field(default_factory=list)

    @property
    def max_model_len(self) -> int:
        return self.context

    def render(self, conversation: Conversation, add_generation_prompt: bool = True) -> Rendered:
        text = "".join(f"<{m['role']}>{m['content']}</{m['role']}>\n" for m in conversation)
        return Rendered(text + ("<assistant>" if add_generation_prompt else ""))

    def count_tokens(self, texts: list[Rendered | str]) -> list[int]:
        return [len(str(t).split()) for t in texts]

    def generate(self, prompts: list[Prompt], sampling: Sampling,
                 seeds: list[int] | None = None) -> list[Completion]:
        self.calls.append(("generate", len(prompts)))
        out = []
        for p in prompts:
            text = str(p) if isinstance(p, str | Rendered) else self.render(p).text
            n_prompt = len(text.split())
            for j in range(sampling.n):
                reply = self.respond(text, j)
                words = reply.split()
                finish = "stop"
                if len(words) > sampling.max_tokens:
                    reply, finish = " ".join(words[: sampling.max_tokens]), "length"
                for s in sampling.stop:
                    if s in reply:
                        reply, finish = reply[: reply.index(s)], "stop"
                out.append(Completion(reply, n_prompt, len(reply.split()), finish))
        return out

    def option_logprobs(self, prompts: list[Rendered | str], options: list[str]) -> list[list[float]]:
        self.calls.append(("option_logprobs", len(prompts)))
        return [[self.score(str(p), o) for o in options] for p in prompts]
