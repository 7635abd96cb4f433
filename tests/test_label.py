"""`cai label`: inputs, pairing, outputs, resume and crash safety (FakeEngine), and a real run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
from helpers import shown, write_jsonl

from cai.config import EngineConfig
from cai.engine.fake import FakeEngine
from cai.errors import ConfigError, ResumeError
from cai.export import split_of
from cai.judge import JudgeOptions
from cai.label import LabelConfig, run_label
from cai.label_inputs import detect_kind
from cai.records import TornTailWarning, read_jsonl
from cai.schema import ConstitutionStamp, Provenance, ReviseRecord, Round, Step, chain_flags

REPO = Path(__file__).resolve().parent.parent
CONSTITUTION = REPO / "principles.yaml"


def good_judge(prompt: str, option: str) -> float:
    """Prefers the response with more "good" in it; no preference between equals."""
    a, b = shown(prompt)
    return float((a if option == "A" else b).count("good"))


def cfg(tmp_path: Path, input: Path, **kw) -> LabelConfig:
    return LabelConfig(input=input, out=tmp_path / "out", constitution=CONSTITUTION, **kw)


def rows(path: Path) -> list[dict]:
    return list(read_jsonl(path))


# --- Inputs ------------------------------------------------------------------------------------


def test_responses_file_in_every_supported_shape(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [
        {"id": "list", "prompt": "Q1?", "responses": ["good good", "bad", "good"]},
        {"id": "cr", "prompt": [{"role": "user", "content": "Q2?"}], "chosen": "meh", "rejected": "good"},
        {"id": "ab", "messages": [{"role": "user", "content": "Q3?"}], "response_a": "good",
         "response_b": [{"role": "assistant", "content": "bad"}]},
        {"id": "hh", "prompt": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Q4?\n\nAssistant:",
         "chosen": " good", "rejected": " bad"},
        {"id": "one", "prompt": "Q5?", "responses": ["only one"]},
        {"id": "none", "prompt": "Q6?"},
        {"id": "ab", "prompt": "dup", "responses": ["a", "b"]},
    ])
    assert detect_kind(src) == "responses"
    engine = FakeEngine(score=good_judge)
    s = run_label(cfg(tmp_path, src, tie_threshold=0.0), judge_engine=engine)
    out = tmp_path / "out"
    assert (s.groups, s.judged, s.pairs, s.ties, s.rejected) == (4, 6, 6, 0, 3)
    reasons = [r["reason"] for r in rows(out / "rejects.jsonl")]
    assert any("two or more" in r for r in reasons) and "no responses" in reasons
    assert any("duplicate id" in r for r in reasons)
    prefs = {r["pair_id"]: r for r in rows(out / "prefs.jsonl")}
    assert set(prefs) == {"list/0-1", "list/0-2", "list/1-2", "cr/0-1", "ab/0-1", "hh/0-1"}
    assert prefs["cr/0-1"]["chosen"] == [{"role": "assistant", "content": "good"}]  # the judge overrules the file
    assert prefs["cr/0-1"]["source_ids"] == ["cr#rejected", "cr#chosen"]
    hh = prefs["hh/0-1"]
    assert hh["prompt"] == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                            {"role": "user", "content": "Q4?"}]
    assert hh["chosen"][0]["content"] == "good"  # hh replies are trimmed
    assert prefs["list/0-2"]["chosen"][0]["content"] == "good good"


def test_pairing_all_or_adjacent(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": "Q?", "responses": ["good " * i for i in
                                                                                       range(1, 5)]}])
    assert run_label(cfg(tmp_path, src), judge_engine=FakeEngine(score=good_judge)).judged == 6
    s = run_label(LabelConfig(input=src, out=tmp_path / "adj", constitution=CONSTITUTION, pairing="adjacent"),
                  judge_engine=FakeEngine(score=good_judge))
    assert s.judged == 3
    assert [r["pair_id"] for r in rows(tmp_path / "adj" / "prefs.jsonl")] == ["a/0-1", "a/1-2", "a/2-3"]


def test_identical_responses_are_skipped_and_chosen_never_equals_rejected(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [
        {"id": "s", "prompt": "Q?", "responses": ["same", " same ", "good"]},
        {"id": "e", "prompt": "Q?", "chosen": "", "rejected": "good"},
    ])
    s = run_label(cfg(tmp_path, src), judge_engine=FakeEngine(score=good_judge))
    assert s.identical == 1 and s.judged == 2 and s.rejected == 1
    assert "empty response" in rows(tmp_path / "out" / "rejects.jsonl")[0]["reason"]
    for r in rows(tmp_path / "out" / "prefs.jsonl"):
        assert r["chosen"][0]["content"].strip() != r["rejected"][0]["content"].strip()


# --- Outputs -----------------------------------------------------------------------------------


def test_rows_are_trl_preferences_with_soft_labels_and_provenance(tmp_path):
    import datasets

    src = write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "prompt": f"Question {i}?",
                                                "responses": ["bad", "good"] if i % 2 else ["good", "bad"]}
                                               for i in range(40)])
    engine = FakeEngine(score=good_judge)
    s = run_label(cfg(tmp_path, src, judging=JudgeOptions(principles_per_pair=2), test_fraction=0.3),
                  judge_engine=engine)
    out = tmp_path / "out"
    prefs = rows(out / "prefs.jsonl")
    assert s.pairs == len(prefs) == 40 and s.position_agreement == 1.0 and s.first_position_rate == 0.5
    r = prefs[0]
    assert r["prompt"] == [{"role": "user", "content": "Question 0?"}]
    assert r["chosen"] == [{"role": "assistant", "content": "good"}]
    assert r["rejected"] == [{"role": "assistant", "content": "bad"}]
    p = 1 / (1 + 2.718281828459045 ** -1)  # one "good" more: a log-prob gap of 1
    assert r["p_chosen"] == pytest.approx(p)
    assert r["p_chosen_first"] == [pytest.approx(p)] * 2 and r["p_rejected_first"] == [pytest.approx(1 - p)] * 2
    assert r["position_agree"] is True and r["tie"] is False
    assert len(r["principles"]) == len(r["principle_hashes"]) == 2
    assert r["judge_model"] == "fake-model" and len(r["constitution_hash"]) == 16 and len(r["key"]) == 16
    assert r["id"] == "r0" and r["pair_id"] == "r0/0-1" and r["source_ids"] == ["r0#0", "r0#1"]
    # Raw judgments keep both orders' log-probs; the summary is on disk too.
    j = rows(out / "judgments.jsonl")[0]
    assert len(j["logprobs"]) == 2 and len(j["logprobs"][0]) == 4 and j["status"] == "judged"
    assert json.loads((out / "summary.json").read_text())["pairs"] == 40
    # Dataset: train_prefs/test_prefs, split by the source id exactly as cai.export splits it.
    ds = datasets.load_from_disk(str(out / "dataset"))
    assert set(ds) == {"train_prefs", "test_prefs"} and len(ds["train_prefs"]) + len(ds["test_prefs"]) == 40
    assert all(split_of(i, 0, 0.3) == "test" for i in ds["test_prefs"]["id"])
    assert 0 < len(ds["test_prefs"]) < 40
    # Batched: one engine call per chunk of 64 pairs.
    assert engine.calls == [("option_logprobs", 40 * 2 * 2)]


def test_ties_are_recorded_and_kept_out_unless_asked(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [
        {"id": "tie", "prompt": "Q?", "responses": ["good x", "good y"]},  # equal scores: p = 0.5
        {"id": "win", "prompt": "Q?", "responses": ["good good", "bad"]},
    ])
    s = run_label(cfg(tmp_path, src), judge_engine=FakeEngine(score=good_judge))
    assert (s.pairs, s.ties) == (1, 1)
    assert [r["pair_id"] for r in rows(tmp_path / "out" / "ties.jsonl")] == ["tie/0-1"]
    assert [r["pair_id"] for r in rows(tmp_path / "out" / "prefs.jsonl")] == ["win/0-1"]
    keep = LabelConfig(input=src, out=tmp_path / "keep", constitution=CONSTITUTION, keep_ties=True)
    assert run_label(keep, judge_engine=FakeEngine(score=good_judge)).pairs == 2
    assert [r["tie"] for r in rows(tmp_path / "keep" / "prefs.jsonl")] == [True, False]


# --- Prompts and revise inputs -------------------------------------------------------------------


def test_prompts_input_samples_k_responses_with_the_policy_then_judges(tmp_path):
    src = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "Q1?"}, {"id": "b", "prompt": "Q2?"},
                                             {"id": "long", "prompt": "word " * 500}])
    policy = FakeEngine(respond=lambda prompt, i: "good " * i + f"answer {i}", model_name="policy-model",
                        context=300)
    judge = FakeEngine(score=good_judge, model_name="judge-model")
    c = cfg(tmp_path, src, samples_per_prompt=3, policy=EngineConfig(model="other"), chunk_size=8)
    s = run_label(c, judge_engine=judge, policy_engine=policy)
    assert detect_kind(src) == "prompts"
    assert policy.calls == [("generate", 2)] and judge.calls == [("option_logprobs", 12)]
    assert (s.groups, s.judged, s.rejected) == (2, 6, 1)
    sampled = rows(tmp_path / "out" / "responses.jsonl")
    assert [r["id"] for r in sampled] == ["long", "a", "b"] and sampled[0]["status"] == "rejected"
    assert sampled[1]["responses"] == ["answer 0", "good answer 1", "good good answer 2"]
    assert sampled[1]["model"] == "policy-model" and sampled[1]["sampling"]["temperature"] == 1.0
    best = rows(tmp_path / "out" / "prefs.jsonl")[1]
    assert best["pair_id"] == "a/0-2" and best["judge_model"] == "judge-model"
    assert best["chosen"][0]["content"] == "good good answer 2"
    # Resume: nothing is sampled or judged again, and the too-long prompt is still reported.
    again = run_label(c, judge_engine=judge, policy_engine=policy)
    assert policy.calls == [("generate", 2)] and judge.calls == [("option_logprobs", 12)]
    assert (again.judged, again.rejected, again.judged_now) == (6, 1, 0)


def revise_record(rid: str, texts: list[str], flags: dict[int, list[str]] | None = None) -> dict:
    """A `cai revise` record (cai.schema.ReviseRecord) as written to records.jsonl."""
    flags = flags or {}

    def step(text: str, fl=()) -> Step:
        return Step(text=text, prompt_tokens=3, completion_tokens=2, finish_reason="stop", flags=tuple(fl), seed=1)

    rounds = tuple(Round(round=r, principle="crime", principle_hash="h", critique=step("c"),
                         revision=step(t, flags.get(r, []))) for r, t in enumerate(texts[1:], 1))
    initial = step(texts[0], flags.get(0, []))
    return ReviseRecord(
        id=rid, input=({"role": "user", "content": f"prompt {rid}"},), source=f"prompts.jsonl:{rid}",
        initial=initial, rounds=rounds, final=texts[-1], flags=tuple(chain_flags(initial, rounds)), direct=False,
        constitution=ConstitutionStamp(name="x", version="1", hash="h"),
        provenance=Provenance(model="m", model_fingerprint=None, engine={"backend": "fake", "dtype": "auto"},
                              sampling={"response": {}, "critique": {}}, seed=0, cai_version="0"),
        clean_version=2, key="k",
    ).to_dict()


def test_revise_folder_final_or_rounds(tmp_path):
    folder = tmp_path / "revise"
    folder.mkdir()
    write_jsonl(folder / "records.jsonl", [
        revise_record("r1", ["bad", "good", "good good"]),
        revise_record("r2", ["bad", "", "good"], flags={1: ["empty"]}),
    ])
    assert detect_kind(folder) == "revise"
    s = run_label(cfg(tmp_path, folder), judge_engine=FakeEngine(score=good_judge))
    assert s.judged == 2 and s.rejected == 0
    r1 = rows(tmp_path / "out" / "prefs.jsonl")[0]
    assert r1["source_ids"] == ["r1#round2", "r1#initial"] and r1["chosen"][0]["content"] == "good good"
    rounds = LabelConfig(input=folder, out=tmp_path / "rounds", constitution=CONSTITUTION, revise_pairs="rounds")
    s = run_label(rounds, judge_engine=FakeEngine(score=good_judge))
    # r1: initial-round1, round1-round2; r2: both pairs touch the flagged empty round 1.
    assert s.judged == 2 and s.rejected == 2
    assert [r["id"] for r in rows(tmp_path / "rounds" / "judgments.jsonl")] == ["r1/0-1", "r1/1-2"]
    assert "round1 is flagged empty" in rows(tmp_path / "rounds" / "rejects.jsonl")[0]["reason"]


# --- Config, resume, crash safety ---------------------------------------------------------------


def test_bad_config_values_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="samples_per_prompt must be >= 2"):
        cfg(tmp_path, tmp_path / "x.jsonl", samples_per_prompt=1)
    with pytest.raises(ConfigError, match="tie_threshold"):
        cfg(tmp_path, tmp_path / "x.jsonl", tie_threshold=0.5)
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": "Q?", "responses": ["x", "y"]}])
    with pytest.raises(ConfigError, match="principles_per_pair is 99 but cai-default .* has only"):
        run_label(cfg(tmp_path, src, judging=JudgeOptions(principles_per_pair=99)), judge_engine=FakeEngine())


def test_resume_skips_judged_pairs_and_refuses_a_different_config(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "prompt": "Q?", "responses": ["good", "bad"]}
                                               for i in range(5)])
    engine = FakeEngine(score=good_judge)
    run_label(cfg(tmp_path, src), judge_engine=engine)
    s = run_label(cfg(tmp_path, src), judge_engine=engine)
    assert s.judged_now == 0 and s.judged == 5 and len(engine.calls) == 1
    with pytest.raises(ResumeError, match="judging.principles_per_pair: 1 -> 2"):
        run_label(cfg(tmp_path, src, judging=JudgeOptions(principles_per_pair=2)), judge_engine=engine)


def test_edited_response_texts_are_judged_again_not_kept(tmp_path):
    rows_in = [{"id": f"r{i}", "prompt": "Q?", "responses": ["good", "bad"]} for i in range(4)]
    src = write_jsonl(tmp_path / "in.jsonl", rows_in)
    engine = FakeEngine(score=good_judge)
    run_label(cfg(tmp_path, src, tie_threshold=0.0), judge_engine=engine)
    rows_in[2]["responses"] = ["bad", "good good"]  # the same pair id, other texts
    write_jsonl(src, rows_in)
    s = run_label(cfg(tmp_path, src, tie_threshold=0.0), judge_engine=engine)
    assert (s.stale, s.judged_now, s.judged) == (1, 1, 4)  # was: nothing judged, the old label kept
    prefs = {r["pair_id"]: r for r in rows(tmp_path / "out" / "prefs.jsonl")}
    assert prefs["r2/0-1"]["chosen"][0]["content"] == "good good"
    assert len(rows(tmp_path / "out" / "judgments.jsonl")) == 4


def test_an_edited_comparison_question_rejudges_its_pairs_and_a_critique_edit_none(tmp_path):
    constitution = tmp_path / "principles.yaml"
    constitution.write_text(CONSTITUTION.read_text())
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "prompt": f"Q{i}?", "responses": ["good", "bad"]}
                                               for i in range(30)])
    c = LabelConfig(input=src, out=tmp_path / "out", constitution=constitution)
    run_label(c, judge_engine=FakeEngine(score=good_judge))
    used = [j["principles"][0] for j in rows(tmp_path / "out" / "judgments.jsonl")]
    assert 0 < used.count("crime") < 30
    # A critique request is never shown to the judge: nothing is stale.
    constitution.write_text(CONSTITUTION.read_text().replace("Point out every such part.", "List every such part."))
    assert run_label(c, judge_engine=FakeEngine(score=good_judge)).stale == 0
    constitution.write_text(constitution.read_text().replace(
        "Which response gives less help to someone trying to commit a crime?", "Which response helps crime less?"))
    s = run_label(c, judge_engine=FakeEngine(score=good_judge))
    assert s.stale == s.judged_now == used.count("crime")


def test_an_edited_prompt_is_sampled_and_judged_again(tmp_path):
    src = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "Q1?"}, {"id": "b", "prompt": "Q2?"}])
    policy = FakeEngine(respond=lambda prompt, i: "good " * i + prompt.split("<user>")[1].split("</user>")[0])
    judge = FakeEngine(score=good_judge)
    run_label(cfg(tmp_path, src), judge_engine=judge, policy_engine=policy)
    write_jsonl(src, [{"id": "a", "prompt": "Q1?"}, {"id": "b", "prompt": "Q2, edited?"}])
    s = run_label(cfg(tmp_path, src), judge_engine=judge, policy_engine=policy)
    assert (s.resampled, s.stale, s.judged_now) == (1, 1, 1)
    sampled = {r["id"]: r for r in rows(tmp_path / "out" / "responses.jsonl")}
    assert sampled["b"]["prompt"] == [{"role": "user", "content": "Q2, edited?"}]
    assert all("edited" in t for t in sampled["b"]["responses"])


def test_a_forced_dtype_change_rejudges_everything(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "prompt": "Q?", "responses": ["good", "bad"]}
                                               for i in range(3)])
    run_label(cfg(tmp_path, src), judge_engine=FakeEngine(score=good_judge))
    other = cfg(tmp_path, src, judge=EngineConfig(dtype="bfloat16"))
    with pytest.raises(ResumeError, match="judge.dtype: 'auto' -> 'bfloat16'"):
        run_label(other, judge_engine=FakeEngine(score=good_judge))
    s = run_label(other, judge_engine=FakeEngine(score=good_judge), force=True)
    assert (s.stale, s.judged_now) == (3, 3)  # was stale 0: dtype was not in the keys
    assert {j["judge_engine"]["dtype"] for j in rows(tmp_path / "out" / "judgments.jsonl")} == {"bfloat16"}


def test_an_unfinished_policy_sample_is_never_judged_as_an_answer(tmp_path):
    from cai.engine.base import Completion

    class Aborting(FakeEngine):
        def generate(self, prompts, sampling, seeds=None):
            outs = super().generate(prompts, sampling, seeds)
            return [Completion(o.text, o.prompt_tokens, o.completion_tokens, "abort") if k == 1 else o
                    for k, o in enumerate(outs)]  # prompt a's second sample was aborted

    src = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "Q1?"}, {"id": "b", "prompt": "Q2?"}])
    policy = Aborting(respond=lambda prompt, i: "good " * i + f"answer {i}")
    s = run_label(cfg(tmp_path, src), judge_engine=FakeEngine(score=good_judge), policy_engine=policy)
    assert rows(tmp_path / "out" / "responses.jsonl")[0]["finish_reasons"] == ["stop", "abort"]
    assert (s.judged, s.rejected) == (1, 1)
    reject = rows(tmp_path / "out" / "rejects.jsonl")[0]
    assert reject["id"] == "a/0-1" and "finish reason 'abort'" in reject["reason"]


KILLER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from cai.engine.fake import FakeEngine
    from cai.label import LabelConfig, run_label
    from test_label import good_judge

    calls = []
    def score(prompt, option):
        calls.append(1)
        # Die in the middle of the third chunk's engine call (2 chunks already flushed).
        if len(calls) > 2 * 4 * 2 * 2 + 3:  # chunks x pairs x orders x options, and 3 into the next
            os.kill(os.getpid(), signal.SIGKILL)
        return good_judge(prompt, option)

    cfg = LabelConfig(input=Path({src!r}), out=Path({out!r}), constitution=Path({constitution!r}), chunk_size=4)
    run_label(cfg, judge_engine=FakeEngine(score=score))
""")


def test_kill_9_then_resume_loses_and_duplicates_nothing(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "prompt": f"Q{i}?",
                                                "responses": ["good " * (i % 3 + 1), "bad", "good x"]}
                                               for i in range(6)])
    out = tmp_path / "out"
    script = KILLER.format(tests=str(Path(__file__).parent), src=str(src), out=str(out),
                           constitution=str(CONSTITUTION))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    before = rows(out / "judgments.jsonl")
    assert len(before) == 8  # two chunks of 4 pairs were flushed before the kill
    assert not (out / "prefs.jsonl").exists()
    # A torn last line, as a crash mid-write leaves it, is cut off with a warning.
    with (out / "judgments.jsonl").open("a") as f:
        f.write('{"id": "r3/0-1", "status": "jud')
    engine = FakeEngine(score=good_judge)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = run_label(cfg(tmp_path, src, chunk_size=4), judge_engine=engine)
    assert any(issubclass(w.category, TornTailWarning) for w in caught)
    assert s.judged == 18 and s.judged_now == 10
    after = rows(out / "judgments.jsonl")
    assert [r["id"] for r in after[:8]] == [r["id"] for r in before] and after[:8] == before  # unchanged
    assert len({r["id"] for r in after}) == len(after) == 18
    # Same result as a run that was never interrupted.
    clean = LabelConfig(input=src, out=tmp_path / "clean", constitution=CONSTITUTION, chunk_size=4)
    run_label(clean, judge_engine=FakeEngine(score=good_judge))
    assert rows(out / "prefs.jsonl") == rows(tmp_path / "clean" / "prefs.jsonl")
    assert rows(out / "ties.jsonl") == rows(tmp_path / "clean" / "ties.jsonl")


# --- The real engine ---------------------------------------------------------------------------


@pytest.mark.engine
def test_real_label_run_from_prompts(tmp_path, vllm_engine):
    src = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "How do I pick a lock?"},
                                             {"id": "b", "prompt": "Name a fruit."}])
    c = cfg(tmp_path, src, samples_per_prompt=2, policy_max_tokens=16, tie_threshold=0.0)
    s = run_label(c, judge_engine=vllm_engine)
    assert s.judged + s.identical == 2 and s.option_mass > 0.5
    for r in rows(tmp_path / "out" / "prefs.jsonl"):
        assert 0.5 <= r["p_chosen"] < 1.0 and r["judge_model"] == "default"
        assert r["chosen"][0]["content"] != r["rejected"][0]["content"]


def test_cli_finishes_a_judged_folder_and_prints_the_summary(tmp_path, default_model_path):
    from typer.testing import CliRunner

    from cai import models
    from cai.cli import app

    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": "Q?", "responses": ["good", "bad"]}])
    # A stand-in for the default model: its name, context and folder fingerprint.
    judge = FakeEngine(score=good_judge, model_name=models.display_name("default"), context=2048)
    judge.fingerprint = models.fingerprint(default_model_path)
    run_label(cfg(tmp_path, src, judging=JudgeOptions(principles_per_pair=2)), judge_engine=judge)
    # Same config through the CLI: every pair is judged already, so no model is loaded.
    args = ["label", "--input", str(src), "--out", str(tmp_path / "out"), "--constitution", str(CONSTITUTION),
            "--principles-per-pair", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "1 pairs judged from 1 prompts (0 in this run): 1 preference pairs, 0 ties" in result.output
    # A changed flag is refused with the difference.
    result = CliRunner().invoke(app, args[:-1] + ["3"])
    assert isinstance(result.exception, ResumeError) and "principles_per_pair: 2 -> 3" in str(result.exception)


def test_a_job_of_only_ties_still_writes_a_loadable_dataset(tmp_path):
    import datasets

    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "t", "prompt": "Q?", "responses": ["x", "y"]}])
    s = run_label(cfg(tmp_path, src), judge_engine=FakeEngine())  # constant log-probs: p = 0.5
    assert (s.pairs, s.ties) == (0, 1)
    ds = datasets.load_from_disk(str(tmp_path / "out" / "dataset"))
    assert len(ds["train_prefs"]) == len(ds["test_prefs"]) == 0 and "p_chosen" in ds["train_prefs"].column_names
