"""Tokenization shared by every backend, so all of them score exactly the same token sequences.

Chat rendering uses the model's own chat template (from its tokenizer). Options for the judge
are tokenized on their own and appended to the prompt's tokens: joint tokenization could merge
the last prompt token with the first option token differently per option, which would make the
options' log-probabilities incomparable.
"""

from __future__ import annotations

from cai.engine.base import Conversation, Prompt
from cai.errors import EngineError


class TokenizerMixin:
    """`render` and `count_tokens` for backends that hold the model's HF tokenizer as
    `self.tokenizer` (all real backends do, so they tokenize identically)."""

    tokenizer: object

    def render(self, conversation: Conversation, add_generation_prompt: bool = True) -> str:
        return render(self.tokenizer, conversation, add_generation_prompt)

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(encode(self.tokenizer, t)) for t in texts]


def render(tokenizer, conversation: Conversation, add_generation_prompt: bool = True) -> str:
    if tokenizer.chat_template is None:
        raise EngineError(
            "this model has no chat template, so a conversation cannot be rendered",
            fix="use an instruction-tuned model with a chat template, or pass already-rendered text",
        )
    # A conversation that ends with an assistant turn is continued, not closed, when no
    # generation prompt is wanted (e.g. to score text after a partial assistant answer).
    return tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=add_generation_prompt)


def prompt_text(tokenizer, prompt: Prompt) -> str:
    return prompt if isinstance(prompt, str) else render(tokenizer, prompt)


def encode(tokenizer, text: str) -> list[int]:
    # Rendered chat text already carries its special tokens; never add a second BOS.
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def option_sequences(tokenizer, prompts: list[str], options: list[str]) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of every prompt and every option (each option tokenized on its own)."""
    prompt_ids = [encode(tokenizer, p) for p in prompts]
    option_ids = [encode(tokenizer, o) for o in options]
    for o, ids in zip(options, option_ids, strict=True):
        if not ids:
            raise EngineError(f"option {o!r} has no tokens", fix="options must be non-empty text")
    return prompt_ids, option_ids
