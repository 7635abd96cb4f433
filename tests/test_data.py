"""Reading prompts: formats, ids, rejects and located errors."""

from __future__ import annotations

import json

import pytest

from cai.data import content_id, read_prompts, reject_too_long
from cai.engine.fake import FakeEngine
from cai.errors import InputError
from cai.label_inputs import read_response_groups


def write(path, lines):
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_jsonl_prompt_and_conversation_rows(tmp_path):
    f = write(tmp_path / "p.jsonl", [
        {"id": "a", "prompt": "hi"},
        {"prompt": "no id"},
        {"id": "c", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]},
    ])
    recs, rejects = read_prompts(f)
    assert [r.id for r in recs] == ["a", content_id((("user", "no id"),)), "c"]
    assert recs[2].conversation == [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    assert recs[0].source == f"{f}:1" and not rejects


def test_bad_rows_become_rejects_with_reasons(tmp_path):
    f = write(tmp_path / "p.jsonl", [
        {"id": "1", "prompt": ""},
        {"id": "2", "prompt": 7},
        {"id": "3", "prompt": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]},
        {"id": "4", "prompt": "fine"},
        {"id": "4", "prompt": "again"},
        {"id": "5", "text": "wrong column"},
    ])
    recs, rejects = read_prompts(f)
    assert [r.id for r in recs] == ["4"]
    reasons = {r.id: r.reason for r in rejects}
    assert reasons["1"] == "empty prompt"
    assert reasons["2"].startswith("'prompt': expected a string or a non-empty list")
    assert reasons["3"] == "'prompt': the conversation must end with a user turn (the prompt to answer)"
    assert reasons["4"] == f"duplicate id (first at {f}:4)"
    assert reasons["5"] == "no 'prompt' column"


@pytest.mark.parametrize("column", ["prompt", "question"])
def test_prompts_and_responses_readers_reject_a_missing_or_bad_prompt_alike(tmp_path, column):
    """Both readers read a row's prompt and id through cai.data.row_prompt: same reasons, same fixes."""
    responses = {"responses": ["x", "y"]}
    f = write(tmp_path / "p.jsonl", [
        {"id": 1, column: "fine", **responses},
        {"id": "", "text": "no prompt here", **responses},
        {"id": "3", column: 7, **responses},
    ])
    got = [[(r.id, r.source, r.reason, r.fix) for r in read(f, prompt_column=column)[1]]
           for read in (read_prompts, read_response_groups)]
    bad = "expected a string or a non-empty list of {role, content}, got int"
    assert got[0] == got[1] == [
        (None, f"{f}:2", f"no {column!r} column", f"add a {column!r} field or pass --prompt-column"),
        ("3", f"{f}:3", f"{column!r}: {bad}", "fix the row's prompt"),
    ]


def test_invalid_json_line_names_file_and_line(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "ok"}\n{"prompt": oops}\n')
    with pytest.raises(InputError, match=rf"{f}:2:\d+: invalid JSON"):
        read_prompts(f)


def test_missing_file_and_wrong_column(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_prompts(tmp_path / "missing.jsonl")
    f = write(tmp_path / "p.jsonl", [{"question": "a"}, {"question": "b"}])
    with pytest.raises(InputError, match=r"no row has a 'prompt' column \(columns found: question\)"):
        read_prompts(f)
    assert [r.text for r in read_prompts(f, prompt_column="question")[0]] == ["a", "b"]


def test_csv_json_and_hf_folder(tmp_path):
    import datasets

    (tmp_path / "p.csv").write_text("id,prompt\nx,hello\ny,world\n")
    assert [r.id for r in read_prompts(tmp_path / "p.csv")[0]] == ["x", "y"]
    (tmp_path / "p.json").write_text(json.dumps([{"id": "j", "prompt": "q"}]))
    assert [r.id for r in read_prompts(tmp_path / "p.json")[0]] == ["j"]
    datasets.Dataset.from_list([{"id": "h", "prompt": "q"}]).save_to_disk(str(tmp_path / "ds"))
    assert [r.id for r in read_prompts(tmp_path / "ds")[0]] == ["h"]


def test_too_long_prompts_are_rejected_with_the_numbers(tmp_path):
    f = write(tmp_path / "p.jsonl", [{"id": "short", "prompt": "a b"}, {"id": "long", "prompt": "w " * 50}])
    recs, _ = read_prompts(f)
    keep, rejects = reject_too_long(recs, FakeEngine(context=40), budget=10)
    assert [r.id for r in keep] == ["short"]
    assert rejects[0].id == "long"
    assert "exceeds the model context of 40" in rejects[0].reason
