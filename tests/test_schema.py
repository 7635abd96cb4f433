"""The typed records between stages (cai.schema): what is written reads back to the same bytes,
records written before the types existed still read, and a malformed record is a located error."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from cai.engine.fake import FakeEngine
from cai.errors import InputError, Location, RecordError
from cai.export import revision_features
from cai.judge_eval import JudgeEvalConfig, run_judge_eval
from cai.label import LabelConfig, preference_features, run_label
from cai.revise import ReviseConfig, run_revise
from cai.schema import (
    FORMAT_VERSION,
    VERSION_KEY,
    EvalJudgment,
    JudgedPreference,
    PairJudgment,
    PromptSamples,
    ReviseRecord,
    RevisionPreference,
    SftRow,
    columns,
    read_records,
    sample_record,
)

V1 = Path(__file__).resolve().parent / "records_v1"
PRINCIPLES = Path(__file__).resolve().parents[1] / "principles.yaml"


def answer(prompt: str, i: int) -> str:
    """A scripted policy: "good" a varying number of times, with a label for the cleaner to strip."""
    return "Revision: " + "good " * (len(prompt) % 3) + f"answer {i}"


def good_judge(prompt: str, option: str) -> float:
    """Prefers the response with more "good" in it (A and B as the judge prompt shows them)."""
    a = prompt.rsplit("(A) <response>\n", 1)[1].split("\n</response>", 1)[0]
    b = prompt.rsplit("(B) <response>\n", 1)[1].split("\n</response>", 1)[0]
    return float((a if option == "A" else b).count("good"))


def lines(path: Path) -> list[str]:
    return [x for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def written(record) -> str:
    """A record as the stores write it (cai.records: one json.dumps per line)."""
    return json.dumps(record.to_dict(), ensure_ascii=False)


READERS = {
    "revise_records.jsonl": ReviseRecord.from_dict,
    "revise_sft.jsonl": SftRow.from_dict,
    "revise_prefs.jsonl": RevisionPreference.from_dict,
    "label_responses.jsonl": sample_record,
    "label_judgments.jsonl": PairJudgment.from_dict,
    "label_prefs.jsonl": JudgedPreference.from_dict,
    "eval_judgments.jsonl": EvalJudgment.from_dict,
}


# --- Round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(READERS))
def test_records_written_before_the_types_read_back_to_the_same_bytes(name):
    # tests/records_v1 holds lines written by cai before cai.schema existed: a run folder made
    # then resumes, and its records feed the next stage, unchanged.
    for line in lines(V1 / name):
        assert written(READERS[name](json.loads(line))) == line


def test_the_fixtures_cover_the_optional_shapes():
    recs = [ReviseRecord.from_dict(json.loads(x)) for x in lines(V1 / "revise_records.jsonl")]
    assert any(r.direct and all(rnd.critique is None for rnd in r.rounds) for r in recs)
    assert any(r.initial.raw is not None for r in recs) and any(r.flags for r in recs)
    samples = [sample_record(json.loads(x)) for x in lines(V1 / "label_responses.jsonl")]
    assert {type(s).__name__ for s in samples} == {"PromptSamples", "RejectedPrompt"}
    evals = [EvalJudgment.from_dict(json.loads(x)) for x in lines(V1 / "eval_judgments.jsonl")]
    assert {e.verdict.status for e in evals} == {"judged", "too_long"}
    judged = [PairJudgment.from_dict(json.loads(x)) for x in lines(V1 / "label_judgments.jsonl")]
    assert any(j.verdict.rationales for j in judged)  # CoT, two principles


def test_samples_stored_before_finish_reasons_were_recorded_still_read():
    d = json.loads(next(x for x in lines(V1 / "label_responses.jsonl") if '"sampled"' in x))
    del d["finish_reasons"]
    s = sample_record(d)
    assert isinstance(s, PromptSamples) and s.finish_reasons is None
    assert s.to_dict() == d  # and written back without it


def test_a_fresh_run_reads_back_to_the_same_bytes(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"r{i}", "prompt": f"question {i} ü"}) + "\n" for i in range(4)))
    run_revise(ReviseConfig(prompts=prompts, out=tmp_path / "rev", constitution=PRINCIPLES),
               FakeEngine(respond=answer), progress=False)
    run_label(LabelConfig(input=prompts, out=tmp_path / "lab", constitution=PRINCIPLES, keep_ties=True),
              judge_engine=FakeEngine(score=good_judge, respond=lambda p, i: "good " * (i % 3) + "answer"))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "Q?", "chosen": "good", "rejected": "bad"}) + "\n")
    run_judge_eval(JudgeEvalConfig(pairs=pairs, out=tmp_path / "je", constitution=PRINCIPLES),
                   FakeEngine(score=good_judge))
    files = {"rev/records.jsonl": ReviseRecord.from_dict, "rev/sft.jsonl": SftRow.from_dict,
             "rev/prefs.jsonl": RevisionPreference.from_dict, "lab/responses.jsonl": sample_record,
             "lab/judgments.jsonl": PairJudgment.from_dict, "lab/prefs.jsonl": JudgedPreference.from_dict,
             "je/judgments.jsonl": EvalJudgment.from_dict}
    for name, read in files.items():
        got = lines(tmp_path / name)
        assert got, name
        assert [written(read(json.loads(x))) for x in got] == got, name


def test_dataset_columns_are_the_row_fields_in_order():
    features = revision_features()
    assert list(features["sft"]) == columns(SftRow)
    assert list(features["prefs"]) == columns(RevisionPreference)
    assert list(preference_features()) == columns(JudgedPreference)


def test_a_verdict_is_written_inline():
    assert columns(EvalJudgment)[:3] == ["id", "status", "p"]


# --- Malformed records --------------------------------------------------------------------------


def v1(name: str, i: int = 0) -> dict:
    return json.loads(lines(V1 / name)[i])


def _set(d: dict, path: list, value=KeyError) -> dict:
    d = copy.deepcopy(d)
    target = d
    for k in path[:-1]:
        target = target[k]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return d


BAD = [
    ("revise_records.jsonl", ["rounds", 0, "revision", "text"], KeyError, "field 'rounds[0].revision.text' is missing"),
    ("revise_records.jsonl", ["rounds"], "x", "field 'rounds' must be a list, got str 'x'"),
    ("revise_records.jsonl", ["initial", "flags"], "empty", "field 'initial.flags' must be a list"),
    ("revise_records.jsonl", ["initial", "seed"], 1.5, "field 'initial.seed' must be a whole number, got float 1.5"),
    ("revise_records.jsonl", ["direct"], 1, "field 'direct' must be true or false, got int 1"),
    ("revise_records.jsonl", ["input", 0], {"role": "user"}, "field 'input[0]' must be a turn with a string 'content'"),
    ("revise_records.jsonl", ["constitution"], None, "field 'constitution' must be a JSON object, got NoneType"),
    ("label_judgments.jsonl", ["status"], "maybe", "field 'status' must be one of 'judged', 'too_long'"),
    ("label_judgments.jsonl", ["logprobs", 0], [1.0, 2.0], "field 'logprobs[0]' must be a list of 4"),
    ("label_judgments.jsonl", ["p"], "0.5", "field 'p' must be a number, got str '0.5'"),
    ("label_prefs.jsonl", ["chosen"], "text", "field 'chosen' must be one assistant turn"),
    ("eval_judgments.jsonl", ["chosen_chars"], KeyError, "field 'chosen_chars' is missing"),
]


@pytest.mark.parametrize("name, path, value, message", BAD, ids=[f"{b[0]}:{b[3][:30]}" for b in BAD])
def test_a_malformed_record_names_file_line_record_and_field(name, path, value, message):
    d = _set(v1(name), path, value)
    with pytest.raises(RecordError) as e:
        READERS[name](d, Location("run/x.jsonl", 7))
    text = str(e.value)
    assert text.startswith(f"run/x.jsonl:7, record {d['id']!r}: {message}"), text
    assert "\n  fix: " in text and isinstance(e.value, InputError)


def test_not_an_object_and_newer_formats_are_refused():
    with pytest.raises(RecordError, match="the record must be a JSON object, got list"):
        ReviseRecord.from_dict([1, 2])
    newer = {**v1("revise_records.jsonl"), VERSION_KEY: FORMAT_VERSION + 1}
    with pytest.raises(RecordError, match=f"record format {FORMAT_VERSION + 1}; this cai .* cannot read it"):
        ReviseRecord.from_dict(newer)
    with pytest.raises(RecordError, match=f"{VERSION_KEY} must be a whole number"):
        ReviseRecord.from_dict({**v1("revise_records.jsonl"), VERSION_KEY: "1"})
    # Version 1 written explicitly is version 1.
    assert ReviseRecord.from_dict({**v1("revise_records.jsonl"), VERSION_KEY: 1}).id


def test_read_records_names_the_line(tmp_path):
    path = tmp_path / "records.jsonl"
    good, bad = v1("revise_records.jsonl", 0), _set(v1("revise_records.jsonl", 1), ["final"], 3)
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(bad) + "\n")
    with pytest.raises(RecordError, match=rf"records.jsonl:3, record '{bad['id']}': field 'final' must be a string"):
        list(read_records(path, ReviseRecord))


def test_label_on_a_malformed_revise_record_is_a_located_error(tmp_path):
    folder = tmp_path / "revise"
    folder.mkdir()
    good = v1("revise_records.jsonl", 0)
    bad = _set(v1("revise_records.jsonl", 1), ["rounds", 1, "revision", "text"], 5)
    (folder / "records.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(RecordError) as e:
        run_label(LabelConfig(input=folder, out=tmp_path / "out", constitution=PRINCIPLES),
                  judge_engine=FakeEngine(score=good_judge))
    assert str(e.value).startswith(f"{folder / 'records.jsonl'}:2, record {bad['id']!r}: field "
                                   "'rounds[1].revision.text' must be a string, got int 5")
    assert "pass the output folder of `cai revise`" in str(e.value)
    assert e.value.fix.endswith("or pass --input-kind responses")  # as before the typed records


def test_a_hand_edited_judgment_is_a_located_error_on_resume(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "a", "prompt": "Q?", "responses": ["good", "bad", "good good"]}) + "\n")
    cfg = LabelConfig(input=src, out=tmp_path / "out", constitution=PRINCIPLES)
    run_label(cfg, judge_engine=FakeEngine(score=good_judge))
    path = tmp_path / "out" / "judgments.jsonl"
    rows = lines(path)
    rows[1] = json.dumps({k: v for k, v in json.loads(rows[1]).items() if k != "agree"}, ensure_ascii=False)
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(RecordError, match=r"judgments.jsonl:2, record 'a/0-2': field 'agree' is missing\n  fix: "
                                          r"delete the line from judgments.jsonl"):
        run_label(cfg, judge_engine=FakeEngine(score=good_judge))


def test_hand_edited_samples_of_the_wrong_count_are_a_located_error_on_resume(tmp_path):
    # A stored line whose lists are shorter than samples_per_prompt (its key unchanged) failed as
    # an IndexError when the pairs indexed it; a line of a prompt no longer in the input is not read.
    src = tmp_path / "p.jsonl"
    src.write_text("".join(json.dumps({"id": i, "prompt": f"question {i}"}) + "\n" for i in ("a", "b")))
    cfg = LabelConfig(input=src, out=tmp_path / "out", constitution=PRINCIPLES)
    policy = FakeEngine(respond=lambda p, i: "good " * (i + 1) + "answer")
    run_label(cfg, judge_engine=FakeEngine(score=good_judge), policy_engine=policy)
    path = tmp_path / "out" / "responses.jsonl"
    rows = [json.loads(x) for x in lines(path)]
    (tmp_path / "out" / "judgments.jsonl").unlink()
    src.write_text(json.dumps({"id": "b", "prompt": "question b"}) + "\n")
    rows[0]["responses"] = rows[0]["responses"][:1]  # prompt a: no longer an input, not read
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    assert run_label(cfg, judge_engine=FakeEngine(score=good_judge), policy_engine=policy)
    rows[1]["finish_reasons"] = rows[1]["finish_reasons"][:1]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    with pytest.raises(RecordError, match=r"responses.jsonl:2, record 'b': stored samples must hold 2 responses, "
                                          r"finish_reasons and completion_tokens \(samples_per_prompt\); this line "
                                          r"has 2, 1 and 2\n  fix: delete the line from responses.jsonl"):
        run_label(cfg, judge_engine=FakeEngine(score=good_judge), policy_engine=policy)


def test_the_architecture_doc_lists_every_record_with_its_keys():
    import re

    import cai.schema as schema

    doc = (Path(__file__).resolve().parents[1] / "docs" / "architecture.md").read_text()
    table = doc.split("## Records between stages", 1)[1].split("\n\n", 3)[2]
    listed = {}
    for row in table.splitlines()[2:]:
        name, _, keys = (c.strip() for c in row.strip("|").split("|"))
        listed[name.strip("`")] = re.findall(r"`([^`]+)`", keys)
    records = {n: c for n, c in vars(schema).items()
               if isinstance(c, type) and issubclass(c, schema.Record) and c is not schema.Record}
    assert set(listed) == set(records)
    for name, cls in records.items():
        assert listed[name] == columns(cls), name
