"""The prompts built from a constitution: critique, revision, judge and score messages.

The revise and label stages call only these functions, so what the model sees is decided here
and by the constitution's templates, nowhere else. Every function returns chat messages
([{"role", "content"}, ...]); the engine applies the model's chat template.

Few-shot examples come first and are the same for every record, so an engine with prefix
caching computes them once (vLLM `enable_prefix_caching`). A leading system message in the
history is kept in front of them, since chat templates want the system turn first.

Texts inserted into the judge and score prompts (conversation and responses) are quoted between
<conversation> / <response> tags; any such tag inside them is defused (`<\\/response>`), so a
response cannot close its quote and talk to the judge.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from cai.errors import InputError

if TYPE_CHECKING:  # only annotations: the constitution's `lint` renders prompts, so no import back
    from cai.constitution import ComparisonExample, Constitution, CritiqueExample, Principle

Message = dict[str, str]

ROLE_NAMES = {"system": "System", "user": "Human", "assistant": "Assistant"}
"""How a conversation is written out inside the judge prompt (the CAI paper's Human/Assistant)."""


# --- Supervised stage: critique and revision (method.md §1) ------------------------------------


def critique_conversation(c: Constitution, history: list[Message], principle: Principle) -> list[Message]:
    """Messages that ask for a critique of the last assistant turn of `history` under
    `principle`: few-shot transcripts, the history, then the templated critique request."""
    history = _check_history(history, "history")
    return _with_fewshot(critique_fewshot(c), history) + [critique_request(c, principle)]


def revision_conversation(c: Constitution, history_with_critique: list[Message],
                          principle: Principle) -> list[Message]:
    """Messages that ask for the revision: the history must end with the critique request
    (a user turn) and the critique (an assistant turn), as `with_critique` builds it."""
    history = _check_history(history_with_critique, "history_with_critique")
    if len(history) < 3 or history[-2]["role"] != "user":
        raise InputError("history_with_critique must end with the critique request (user) and the "
                         "critique (assistant)", fix="build it with prompts.with_critique(...)")
    return _with_fewshot(critique_fewshot(c), history) + [
        {"role": "user", "content": c.templates.revision.format(revision_request=principle.revision)}
    ]


def direct_revision_conversation(c: Constitution, history: list[Message],
                                 principle: Principle) -> list[Message]:
    """The paper's ablation: ask for a revision with no critique first. The few-shot
    transcripts are shown without their critique turns."""
    history = _check_history(history, "history")
    fewshot = []
    for e in c.critique_examples:
        fewshot += [
            {"role": "user", "content": e.prompt},
            {"role": "assistant", "content": e.response},
            {"role": "user", "content": c.templates.direct_revision.format(revision_request=e.revision_request)},
            {"role": "assistant", "content": e.revision},
        ]
    request = c.templates.direct_revision.format(revision_request=principle.revision)
    return _with_fewshot(fewshot, history) + [{"role": "user", "content": request}]


def critique_request(c: Constitution, principle: Principle) -> Message:
    """The user turn that asks for a critique (the last message of `critique_conversation`)."""
    return {"role": "user", "content": c.templates.critique.format(critique_request=principle.critique)}


def with_critique(c: Constitution, history: list[Message], principle: Principle,
                  critique: str) -> list[Message]:
    """`history` + the critique request + the model's critique: the input of
    `revision_conversation`, and of the next round when the transcript keeps growing."""
    return list(history) + [critique_request(c, principle), {"role": "assistant", "content": critique}]


def critique_fewshot(c: Constitution) -> list[Message]:
    """The few-shot critique/revision transcripts as chat turns (the same for every record)."""
    out: list[Message] = []
    for e in c.critique_examples:
        out += _transcript(c, e)
    return out


def _transcript(c: Constitution, e: CritiqueExample) -> list[Message]:
    return [
        {"role": "user", "content": e.prompt},
        {"role": "assistant", "content": e.response},
        {"role": "user", "content": c.templates.critique.format(critique_request=e.critique_request)},
        {"role": "assistant", "content": e.critique},
        {"role": "user", "content": c.templates.revision.format(revision_request=e.revision_request)},
        {"role": "assistant", "content": e.revision},
    ]


# --- AI feedback: the pairwise judge and direct scoring (method.md §2) -------------------------


def judge_prompt(c: Constitution, conversation: list[Message], response_a: str, response_b: str,
                 principle: Principle) -> list[Message]:
    """Messages for the pairwise judge: labeled few-shot comparisons (each a user question and
    an assistant answer), then the question about this pair. The label stage appends the
    answer cue (`judge_answer_cue`) and reads the log-probabilities of A and B after it."""
    conversation = _check_conversation(conversation)
    return judge_fewshot(c) + [{"role": "user", "content": _judge_question(
        c, render_conversation(conversation), principle.compare, response_a, response_b)}]


def judge_fewshot(c: Constitution) -> list[Message]:
    out: list[Message] = []
    for e in c.comparison_examples:
        out += _comparison(c, e)
    return out


def _comparison(c: Constitution, e: ComparisonExample) -> list[Message]:
    conversation = render_conversation([{"role": "user", "content": e.prompt}])
    return [
        {"role": "user", "content": _judge_question(c, conversation, e.question, e.response_a, e.response_b)},
        {"role": "assistant", "content": c.templates.judge_answer.format(answer=e.answer)},
    ]


def _judge_question(c: Constitution, conversation: str, question: str, a: str, b: str) -> str:
    return c.templates.judge.format(conversation=conversation, question=question,
                                    response_a=_defuse(a.strip()), response_b=_defuse(b.strip()))


def judge_answer_cue(c: Constitution) -> str:
    """The start of the judge's answer, up to the option letter: "The answer is: (" by default."""
    return c.templates.judge_answer.split("{answer}", 1)[0].replace("{{", "{").replace("}}", "}")


def score_prompt(c: Constitution, conversation: list[Message], response: str,
                 principle: Principle) -> list[Message]:
    """Messages for direct RLAIF (d-RLAIF): the judge rates one response 1-10 by the principle's
    question. The label stage appends `score_answer_cue` and reads the score tokens after it."""
    conversation = _check_conversation(conversation)
    content = c.templates.score.format(conversation=render_conversation(conversation),
                                       question=principle.compare, response=_defuse(response.strip()))
    return [{"role": "user", "content": content}]


def score_answer_cue(c: Constitution) -> str:
    """The start of the score answer, up to the number: "Rating: " by default."""
    return c.templates.score_answer.split("{score}", 1)[0].replace("{{", "{").replace("}}", "}")


def render_conversation(conversation: list[Message]) -> str:
    """A conversation as judge-prompt text: "Human: ...", "Assistant: ...", a blank line between."""
    return "\n\n".join(f"{ROLE_NAMES[m['role']]}: {_defuse(m['content'].strip())}" for m in conversation)


def quoted(text: str) -> str:
    """A text as the judge prompts quote it (between tags): stripped, any tag inside defused.
    Also for other questions to the judge (`cai.eval.refusal_judge`)."""
    return _defuse(text.strip())


def fewshot_chars(c: Constitution, kind: str) -> int:
    """Characters in the few-shot prefix of the critique or judge prompts (about 4 per token)."""
    messages = critique_fewshot(c) if kind == "critique" else judge_fewshot(c)
    return sum(len(m["content"]) for m in messages)


# --- Checks --------------------------------------------------------------------------------------

_TAG = re.compile(r"<(/?)(response|conversation)\b", re.IGNORECASE)


def _defuse(text: str) -> str:
    return _TAG.sub(lambda m: f"<\\{m.group(1)}{m.group(2)}", text)


def _check_conversation(conversation: list[Message]) -> list[Message]:
    if not isinstance(conversation, list) or not conversation:
        raise InputError("the conversation must be a non-empty list of {role, content} messages")
    for i, m in enumerate(conversation):
        if not isinstance(m, dict) or m.get("role") not in ROLE_NAMES or not isinstance(m.get("content"), str):
            raise InputError(f"message {i} of the conversation is not a {{role, content}} message "
                             f"with role system, user or assistant: {m!r}")
    return conversation


def _check_history(history: list[Message], what: str) -> list[Message]:
    _check_conversation(history)
    if history[-1]["role"] != "assistant":
        raise InputError(f"{what} must end with the assistant's latest answer, got a "
                         f"{history[-1]['role']!r} turn last",
                         fix="append the response to critique as {'role': 'assistant', 'content': ...}")
    return history


def _with_fewshot(fewshot: list[Message], history: list[Message]) -> list[Message]:
    if history[0]["role"] == "system":
        return [history[0]] + fewshot + list(history[1:])
    return fewshot + list(history)
