"""Output cleaning and degenerate-output flags (cai.clean), table-driven."""

from __future__ import annotations

from pathlib import Path

import pytest

from cai.clean import FLAGS, clean, is_degenerate
from cai.errors import ConfigError
from cai.export import ExportConfig
from cai.label import LabelConfig

PROSE = ("Pull weeds by hand after rain, when the roots come out easily. Cover the beds with mulch so "
         "that light cannot reach new seedlings, and pour boiling water on weeds that grow between "
         "paving stones. Repeat every few weeks during the growing season.")


@pytest.mark.parametrize(("raw", "step", "text"), [
    ("Revision: I can't help with that.", "revision", "I can't help with that."),
    ("**Revision:** I can't help with that.", "revision", "I can't help with that."),
    ("Revised response: Sure.", "revision", "Sure."),
    ("Assistant: Revision: Sure.", "revision", "Sure."),
    ("Here is the revised response:\nSure, here it is.", "revision", "Sure, here it is."),
    ("Critique: It gives hacking steps.", "critique", "It gives hacking steps."),
    ("  critique : It gives hacking steps.  ", "critique", "It gives hacking steps."),
    ("Assistant: Hello there.", "response", "Hello there."),
    ("AI: Hello there.", "response", "Hello there."),
    ("\r\n  Hello.\r\n", "response", "Hello."),
    # The model runs on into the next transcript turn: cut there.
    ("Sure, here you go.\nHuman: and now?\nAssistant: more", "response", "Sure, here you go."),
    ("It is fine.\n\nCritiqueRequest: identify harm", "critique", "It is fine."),
    ("It is fine.\nRevision request: rewrite it", "critique", "It is fine."),
    # Labels are only stripped at the start, and only whole labels.
    ("Responsible owners lock their sheds.", "response", "Responsible owners lock their sheds."),
    ("The answer: it depends.", "response", "The answer: it depends."),
    ("He said Revision: no.", "revision", "He said Revision: no."),
    ("A\n\n\n\nB", "response", "A\n\nB"),
])
def test_clean_strips_labels_and_next_turns(raw, step, text):
    assert clean(raw, step).text == text


def test_a_revision_keeps_a_critique_label_and_is_flagged_wrong_role():
    c = clean("Critique: the response is harmful.", "revision")
    assert c.text == "Critique: the response is harmful." and c.flags == ("wrong_role",)
    # In a critique the same label is simply the answer's label.
    assert clean("Critique: the response is harmful.", "critique").flags == ()


@pytest.mark.parametrize(("raw", "step", "finish", "flags"), [
    (PROSE, "response", "stop", ()),
    ("", "response", "stop", ("empty",)),
    ("Revision:", "revision", "stop", ("empty",)),
    ("   \n ", "critique", "stop", ("empty",)),
    (PROSE, "response", "length", ("truncated",)),
    (PROSE, "revision", "length", ("truncated",)),
    # A critique's token cap is a budget: not flagged.
    (PROSE, "critique", "length", ()),
    ("no no no " * 20, "response", "length", ("degenerate", "truncated")),
    ("", "revision", "length", ("empty", "truncated")),
    # Any other finish reason is kept as the engine said it, and the text is not an answer.
    (PROSE, "response", "abort", ("unfinished",)),
    (PROSE, "critique", "error", ("unfinished",)),
    (PROSE, "revision", "unknown", ("unfinished",)),
])
def test_flags(raw, step, finish, flags):
    assert clean(raw, step, finish).flags == flags
    assert set(flags) <= set(FLAGS)


@pytest.mark.parametrize(("text", "degenerate"), [
    (PROSE, False),
    ("Ha ha ha, that is a good one.", False),
    ("1. Lock the door.\n2. Lock the window.\n3. Lock the shed.\n4. Lock the car.", False),
    ("Step one. " + "Sure! " * 40, True),  # a one-word loop at the end
    (PROSE + " I am sorry. I am sorry. I am sorry. I am sorry. I am sorry.", True),  # a tail loop
    ("I can help. " * 12, True),  # few distinct 4-grams
    ("!" * 60, True),
    ("Wait" + "a" * 45, True),
    ("Heading\n" + "-" * 60 + "\nText under it.", False),  # a markdown rule is not a loop
    ("the the the", False),  # too short to tell
])
def test_is_degenerate(text, degenerate):
    assert is_degenerate(text) is degenerate


def test_a_copy_of_a_fewshot_answer_is_flagged():
    fewshot = ("Pull weeds by hand after rain, when the roots come out easily.", "Ok.")
    assert clean("Revision: pull weeds by hand after rain,  when the roots come out easily.", "revision",
                 fewshot=fewshot).flags == ("fewshot_copy",)
    assert clean("Ok. Let me help with your question.", "revision", fewshot=fewshot).flags == ()  # too short
    assert clean("Pull weeds by hand.", "revision", fewshot=fewshot).flags == ()


@pytest.mark.parametrize(("make", "key", "empty_means"), [
    (lambda flags: ExportConfig(skip_flags=flags), "export.skip_flags", "export everything"),
    (lambda flags: LabelConfig(input=Path("in"), out=Path("out"), skip_flags=flags), "skip_flags", "judge everything"),
])
def test_an_unknown_skip_flag_is_named_with_the_flags_there_are(make, key, empty_means):
    make(FLAGS[:2])
    with pytest.raises(ConfigError) as e:
        make(("truncated", "bogus", "nope"))
    assert e.value.message == f"{key}: unknown flag(s) 'bogus', 'nope'"
    assert e.value.fix == f"use some of: {', '.join(FLAGS)} (or [] to {empty_means})"
