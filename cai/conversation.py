"""Conversations as the stages read them from user files: one module, so every stage accepts the
same forms and says the same thing about a bad one.

A conversation is a list of {"role", "content"} messages (roles system, user, assistant: TRL's
conversational format). Files may also give a prompt as a plain string (one user turn), or as an
hh-rlhf dialogue string ("\\n\\nHuman: ...\\n\\nAssistant: ..."). Each reader wants a different
end: a prompt to answer ends with a user turn (`parse_messages`, `prompt_conversation`), an SFT
example with the assistant turn to train on (`check_messages`), a preference row gives a prompt
and two responses (`as_messages`, `response_text`).
"""

from __future__ import annotations

import re
from typing import Any

from cai.engine.base import Conversation, Message
from cai.errors import InputError, Location

ROLES = ("system", "user", "assistant")


def parse_messages(value: Any) -> tuple[tuple[str, str], ...] | str:
    """A conversation as ((role, content), ...), or a string saying what is wrong."""
    if isinstance(value, str):
        return (("user", value),)
    if not isinstance(value, list) or not value:
        return f"expected a string or a non-empty list of {{role, content}}, got {type(value).__name__}"
    out = []
    for k, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            return f"turn {k} is not a {{role, content}} object"
        if m["role"] not in ROLES:
            return f"turn {k} has role {m['role']!r}; roles are {', '.join(ROLES)}"
        if not isinstance(m["content"], str):
            return f"turn {k} content is {type(m['content']).__name__}, not text"
        out.append((m["role"], m["content"]))
    if out[-1][0] != "user":
        return "the conversation must end with a user turn (the prompt to answer)"
    return tuple(out)


_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")


def parse_dialogue(text: str) -> list[Message]:
    """An hh-rlhf style string ("\\n\\nHuman: ...\\n\\nAssistant: ...") as a conversation: Human
    turns become user turns, Assistant turns assistant turns, text before the first marker a
    system turn, and the empty last "Assistant:" cue is dropped. A string without markers is
    one user turn."""
    parts = _TURN.split(text)
    if len(parts) == 1:
        return [{"role": "user", "content": text.strip()}]
    turns = [{"role": "system", "content": parts[0].strip()}] if parts[0].strip() else []
    for marker, content in zip(parts[1::2], parts[2::2], strict=True):
        turns.append({"role": "user" if marker == "Human" else "assistant", "content": content.strip()})
    if turns and turns[-1]["role"] == "assistant" and not turns[-1]["content"]:
        turns.pop()
    return turns


def as_messages(value: Any, column: str, where: Location | None, *, is_prompt: bool) -> list[Message]:
    """A prompt or response column as messages: a string (a dialogue for prompts, one assistant
    reply for responses), one {role, content} dict, or a list of them."""
    if isinstance(value, str):
        return parse_dialogue(value) if is_prompt else [{"role": "assistant", "content": value.strip()}]
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list) and value and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in value):
        bad = [m["role"] for m in value if m["role"] not in ROLES]
        if bad:
            raise InputError(f"column {column!r} has a message with role {bad[0]!r}", where,
                             fix="roles are system, user and assistant")
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise InputError(f"column {column!r} must be a string or a non-empty list of {{role, content}} "
                     f"messages, got {str(value)[:80]!r}", where,
                     fix="write the text as a string, or as [{\"role\": ..., \"content\": ...}, ...]")


def response_text(value: Any) -> str | None:
    """A response given as text, as one {role, content} message, or as a message list (TRL's
    conversational chosen/rejected: the last assistant turn is the response)."""
    if isinstance(value, str):
        return value.strip()  # hh-rlhf replies start with a space; the judge sees them trimmed anyway
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"].strip()
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        last = value[-1]
        if last.get("role") == "assistant" and isinstance(last.get("content"), str):
            return last["content"].strip()
    return None


def prompt_conversation(value: Any) -> Conversation | str:
    """A prompt as a conversation ending with a user turn, or a string saying what is wrong."""
    if isinstance(value, str) and ("Human:" in value and "Assistant:" in value):
        value = parse_dialogue(value)
    msgs = parse_messages(value)
    if isinstance(msgs, str):
        return msgs
    return [{"role": r, "content": c} for r, c in msgs]


def check_messages(messages: Any, where: Any) -> list[dict[str, str]]:
    """A conversation is a non-empty list of {role, content} strings ending in an assistant turn."""
    if not isinstance(messages, list) or len(messages) < 2:
        raise InputError("`messages` must be a list of at least 2 {role, content} turns "
                         f"(the prompt, then the answer), got {_short(messages)}", where)
    for i, m in enumerate(messages):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise InputError(f"messages[{i}] must be {{\"role\": str, \"content\": str}}, "
                             f"got {_short(m)}", where)
    if messages[-1]["role"] != "assistant":
        raise InputError(f"the last turn must be the assistant's answer, got role {messages[-1]['role']!r}",
                         where, fix="end each conversation with the assistant turn to train on")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _short(x: Any, n: int = 80) -> str:
    s = repr(x)
    return s if len(s) <= n else s[:n] + "..."
