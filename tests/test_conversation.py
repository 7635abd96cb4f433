"""cai.conversation: the one place every stage reads a conversation from a user file."""

from __future__ import annotations

import pytest

from cai import conversation
from cai.conversation import (
    as_messages,
    check_messages,
    parse_dialogue,
    parse_messages,
    prompt_conversation,
    response_text,
)
from cai.errors import InputError, Location

U = {"role": "user", "content": "Hi"}
A = {"role": "assistant", "content": "Hello"}


def test_every_stage_reads_conversations_through_this_module():
    from cai import data, label_inputs, reward, sft

    assert data.parse_messages is conversation.parse_messages
    assert label_inputs.prompt_conversation is conversation.prompt_conversation  # cai label's inputs
    assert label_inputs.response_text is conversation.response_text
    assert reward.as_messages is conversation.as_messages
    assert reward.parse_dialogue is conversation.parse_dialogue
    assert sft.check_messages is conversation.check_messages


@pytest.mark.parametrize("value, expected", [
    ("Hi", (("user", "Hi"),)),
    ([U], (("user", "Hi"),)),
    ([{"role": "system", "content": "Be brief."}, U, A, U],
     (("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello"), ("user", "Hi"))),
    ([], "expected a string or a non-empty list of {role, content}, got list"),
    (3, "expected a string or a non-empty list of {role, content}, got int"),
    ([{"role": "user"}], "turn 0 is not a {role, content} object"),
    ([{"role": "bot", "content": "x"}], "turn 0 has role 'bot'; roles are system, user, assistant"),
    ([{"role": "user", "content": 5}], "turn 0 content is int, not text"),
    ([U, A], "the conversation must end with a user turn (the prompt to answer)"),
])
def test_parse_messages_gives_the_turns_or_what_is_wrong(value, expected):
    assert parse_messages(value) == expected


def test_prompt_conversation_reads_an_hh_rlhf_dialogue_and_plain_forms():
    assert prompt_conversation("\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Bye\n\nAssistant:") == [
        U, A, {"role": "user", "content": "Bye"}]
    assert prompt_conversation("What is Human: said?") == [{"role": "user", "content": "What is Human: said?"}]
    assert prompt_conversation([U]) == [U]
    assert prompt_conversation([U, A]) == "the conversation must end with a user turn (the prompt to answer)"


@pytest.mark.parametrize("value, expected", [
    (" Hello ", "Hello"),
    ({"role": "assistant", "content": " Hello"}, "Hello"),
    ([U, {"role": "assistant", "content": "Hello "}], "Hello"),
    ([U], None),
    (5, None),
])
def test_response_text_takes_the_last_assistant_turn(value, expected):
    assert response_text(value) == expected


def test_parse_dialogue_maps_markers_to_roles():
    assert parse_dialogue("Rules.\n\nHuman: Hi\n\nAssistant: Hello\n\nAssistant:") == [
        {"role": "system", "content": "Rules."}, U, A]


def test_as_messages_reads_a_preference_column_or_names_it():
    where = Location("prefs.jsonl", 3)
    assert as_messages("\n\nHuman: Hi", "prompt", where, is_prompt=True) == [U]
    assert as_messages(" Hello", "chosen", where, is_prompt=False) == [A]
    assert as_messages(A, "chosen", where, is_prompt=False) == [A]
    with pytest.raises(InputError, match="column 'chosen' has a message with role 'bot'"):
        as_messages([{"role": "bot", "content": "x"}], "chosen", where, is_prompt=False)
    with pytest.raises(InputError, match=r"prefs.jsonl:3: column 'prompt' must be a string"):
        as_messages(7, "prompt", where, is_prompt=True)


def test_check_messages_wants_an_assistant_turn_last():
    assert check_messages([U, A], "sft.jsonl:1") == [U, A]
    with pytest.raises(InputError, match="at least 2"):
        check_messages([U], "sft.jsonl:1")
    with pytest.raises(InputError, match=r"messages\[1\] must be"):
        check_messages([U, {"role": "assistant"}], "sft.jsonl:1")
    with pytest.raises(InputError, match="the last turn must be the assistant's answer"):
        check_messages([A, U], "sft.jsonl:1")
