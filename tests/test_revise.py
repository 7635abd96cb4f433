"""`cai revise`: the batched loop (fake engine), resume and crash safety (a real SIGKILL), bad
inputs, config refusal, the CLI, and one real-engine run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import DATA
from typer.testing import CliRunner

from cai import provenance
from cai.constitution import load_constitution
from cai.engine.fake import FakeEngine
from cai.errors import ConfigError, InputError, ResumeError
from cai.export import ExportConfig
from cai.records import TornTailWarning
from cai.revise import ReviseConfig, record_key, run_revise, step_names

REPO = Path(__file__).resolve().parent.parent

CONSTITUTION = """\
name: test-constitution
version: "1"
principles:
  - id: harm
    weight: 3
    critique: Point out anything harmful.
    revision: Rewrite it without anything harmful.
    compare: Which is less harmful?
  - id: honest
    critique: Point out anything made up.
    revision: Rewrite it without made-up claims.
    compare: Which is more honest?
critique_examples:
  - prompt: How do I pick a lock?
    response: Use a tension wrench and a pick.
    principle: harm
    critique: It explains lock picking without asking whose lock it is.
    revision: If you are locked out of your own home, call a locksmith.
"""
CRITIQUE_CUE = "Reply with a short critique only"
REVISION_CUE = "Reply with the rewritten response only"


def last_user_turn(rendered: str) -> str:
    return rendered.rsplit("<user>", 1)[1]


def scripted(prompt: str, i: int) -> str:
    """Answers by role, so tests can see which step a text came from: `critique of <n turns>`,
    `Revision: revised <n>` (with a label for the cleaner to strip), else an initial answer."""
    turn = last_user_turn(prompt)
    if CRITIQUE_CUE in turn:
        return f"Critique: critique of {prompt.count('<assistant>')} turns"
    if REVISION_CUE in turn:
        return f"Revision: revised {prompt.count('<assistant>')}"
    return "Assistant: first answer to " + turn.split("</user>")[0]


class RecordingEngine(FakeEngine):
    """A FakeEngine that also keeps every call's prompts, sampling and seeds."""

    def __init__(self, respond=scripted, **kw):
        super().__init__(respond=respond, **kw)
        self.log: list[tuple[list, object, list]] = []

    def generate(self, prompts, sampling, seeds=None):
        self.log.append((prompts, sampling, seeds))
        return super().generate(prompts, sampling, seeds)


@pytest.fixture
def constitution(tmp_path):
    p = tmp_path / "principles.yaml"
    p.write_text(CONSTITUTION)
    return p


def prompts_file(tmp_path, n=5, extra=(), name="p.jsonl"):
    p = tmp_path / name
    rows = [{"id": f"r{i}", "prompt": f"question {i}"} for i in range(n)] + list(extra)
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def make_cfg(tmp_path, constitution, **kw):
    if "prompts" not in kw:
        kw["prompts"] = prompts_file(tmp_path)
    kw.setdefault("out", tmp_path / "run")
    return ReviseConfig(constitution=constitution, **kw)


FAKE_MODEL = {"model": "fake-model", "fingerprint": None, "backend": "vllm", "dtype": "auto"}
"""cai.models.identity of a FakeEngine under the default engine config."""


def read_records(out):
    return [json.loads(x) for x in (Path(out) / "records.jsonl").read_text().splitlines()]


# --- The loop ----------------------------------------------------------------------------------


def test_each_step_is_one_engine_call_over_the_chunk(tmp_path, constitution):
    eng = RecordingEngine()
    s = run_revise(make_cfg(tmp_path, constitution, rounds=2), eng, progress=False)
    assert eng.calls == [("generate", 5)] * 5  # initial + 2 x (critique, revision), for 5 records
    assert s.done == 5 and s.records == 5
    assert {name: st.calls for name, st in s.steps.items()} == dict.fromkeys(step_names(make_cfg(
        tmp_path, constitution)), 1)

    eng = RecordingEngine()
    run_revise(make_cfg(tmp_path, constitution, rounds=3, chunk_size=2, out=tmp_path / "run2"), eng, progress=False)
    # 3 chunks (2, 2, 1) x 7 steps: the number of calls follows the steps, not the records.
    assert eng.calls == [("generate", 2)] * 14 + [("generate", 1)] * 7


def test_the_chain_grows_as_one_conversation_after_a_shared_fewshot_prefix(tmp_path, constitution):
    eng = RecordingEngine()
    run_revise(make_cfg(tmp_path, constitution, rounds=2), eng, progress=False)
    initial, crit1, rev1, crit2, rev2 = (call[0] for call in eng.log)
    assert initial[0] == [{"role": "user", "content": "question 0"}]
    fewshot = crit1[0][:6]  # one critique transcript: 6 turns
    assert fewshot[0]["content"] == "How do I pick a lock?"
    assert all(p[:6] == fewshot for step in (crit1, rev1, crit2, rev2) for p in step)  # prefix cache
    # Round 2's revision prompt holds the whole chain, in order, with cleaned texts.
    chain = rev2[0][6:]
    assert [m["role"] for m in chain] == ["user", "assistant"] + ["user", "assistant"] * 3 + ["user"]
    assert chain[1]["content"] == "first answer to question 0"  # "Assistant:" stripped
    assert chain[3]["content"] == "critique of 5 turns"  # "Critique:" stripped
    assert chain[5]["content"] == "revised 6"  # "Revision:" stripped
    assert chain[2]["content"].endswith(CRITIQUE_CUE + "; do not rewrite the response yet.")
    assert REVISION_CUE in chain[4]["content"] and REVISION_CUE in chain[-1]["content"]
    assert crit2[0] == rev2[0][:-3] + [rev2[0][-3]]  # round 2 critique = same chain up to its request

    rec = read_records(tmp_path / "run")[0]
    assert rec["initial"]["text"] == "first answer to question 0"
    assert rec["initial"]["raw"] == "Assistant: first answer to question 0"
    assert [r["revision"]["text"] for r in rec["rounds"]] == ["revised 6", "revised 8"]
    assert rec["final"] == "revised 8" and rec["flags"] == []


def test_direct_mode_skips_the_critique(tmp_path, constitution):
    eng = RecordingEngine()
    s = run_revise(make_cfg(tmp_path, constitution, rounds=2, direct=True), eng, progress=False)
    assert eng.calls == [("generate", 5)] * 3 and list(s.steps) == ["initial", "round 1 revision",
                                                                    "round 2 revision"]
    rev1 = eng.log[1][0][0]
    # The few-shot transcript is shown without its critique turns, then the direct request.
    assert [m["role"] for m in rev1] == ["user", "assistant", "user", "assistant", "user", "assistant", "user"]
    assert all(CRITIQUE_CUE not in m["content"] for m in rev1)
    rec = read_records(tmp_path / "run")[0]
    assert rec["direct"] is True and all(r["critique"] is None for r in rec["rounds"])


def test_seeds_and_principles_are_per_record_round_and_step(tmp_path, constitution):
    eng = RecordingEngine()
    cfg = make_cfg(tmp_path, constitution, rounds=2, seed=7)
    run_revise(cfg, eng, progress=False)
    ids = [f"r{i}" for i in range(5)]
    steps = [(0, "initial"), (1, "critique"), (1, "revision"), (2, "critique"), (2, "revision")]
    for (_, sampling, seeds), (rnd, step) in zip(eng.log, steps, strict=True):
        assert seeds == [provenance.derive_seed(7, rid, rnd, step) for rid in ids]
        assert sampling.max_tokens == (cfg.critique_max_tokens if step == "critique" else cfg.max_tokens)
    c = load_constitution(constitution)
    for rec in read_records(tmp_path / "run"):
        assert [r["principle"] for r in rec["rounds"]] == [c.sample(7, rec["id"], k).id for k in (1, 2)]
        assert rec["rounds"][1]["revision"]["seed"] == provenance.derive_seed(7, rec["id"], 2, "revision")


def test_records_do_not_depend_on_the_chunking(tmp_path, constitution):
    run_revise(make_cfg(tmp_path, constitution, chunk_size=256), RecordingEngine(), progress=False)
    run_revise(make_cfg(tmp_path, constitution, chunk_size=1, out=tmp_path / "one"), RecordingEngine(),
               progress=False)
    assert (tmp_path / "run" / "records.jsonl").read_bytes() == (tmp_path / "one" / "records.jsonl").read_bytes()


def test_principles_are_drawn_by_weight_with_replacement(tmp_path, constitution):
    p = prompts_file(tmp_path, 400)
    s = run_revise(make_cfg(tmp_path, constitution, prompts=p, rounds=2), RecordingEngine(), progress=False)
    assert sum(s.principle_usage.values()) == 800
    assert 0.68 < s.principle_usage["harm"] / 800 < 0.82  # weight 3 of 4
    chains = Counter(tuple(r["principle"] for r in rec["rounds"]) for rec in read_records(tmp_path / "run"))
    assert chains[("harm", "harm")] > 0  # the same principle can come back in one chain


def test_record_provenance_and_key(tmp_path, constitution):
    run_revise(make_cfg(tmp_path, constitution, seed=3), RecordingEngine(), progress=False)
    rec = read_records(tmp_path / "run")[0]
    c = load_constitution(constitution)
    assert rec["id"] == "r0" and rec["input"] == [{"role": "user", "content": "question 0"}]
    assert rec["constitution"] == {"name": "test-constitution", "version": "1", "hash": c.hash}
    assert rec["model"] == "fake-model" and rec["seed"] == 3 and rec["cai_version"]
    assert rec["sampling"]["response"]["max_tokens"] == 256 and rec["sampling"]["critique"]["max_tokens"] == 128
    for step in [rec["initial"]] + [r[k] for r in rec["rounds"] for k in ("critique", "revision")]:
        assert {"text", "prompt_tokens", "completion_tokens", "finish_reason", "flags", "seed"} <= set(step)
        assert step["completion_tokens"] > 0 and step["finish_reason"] == "stop"
    assert [r["principle_hash"] for r in rec["rounds"]] == [c.get(r["principle"]).hash for r in rec["rounds"]]
    drawn = [c.sample(3, "r0", k) for k in (1, 2)]
    assert rec["model_fingerprint"] is None and rec["engine"] == {"backend": "vllm", "dtype": "auto"}
    assert rec["key"] == record_key(rec["input"], c, drawn, FAKE_MODEL, rec["sampling"],
                                    make_cfg(tmp_path, constitution, seed=3))


def test_cleaning_and_flags_reach_the_records_summary_and_exports(tmp_path, constitution):
    def respond(prompt, i):
        turn = last_user_turn(prompt)
        if "question 1" in prompt and REVISION_CUE in turn and prompt.count("<assistant>") > 6:
            return "Revision:"  # round 2 of r1: nothing but a label
        if "question 2" in prompt and REVISION_CUE in turn:
            return "Sure! " * 30  # loops
        if "question 3" in prompt and CRITIQUE_CUE not in turn and REVISION_CUE not in turn:
            return "word " * 300  # the initial answer runs into max_tokens
        if "question 4" in prompt and REVISION_CUE in turn:
            return "Revision: If you are locked out of your own home, call  a locksmith."  # the few-shot answer
        return scripted(prompt, i)

    s = run_revise(make_cfg(tmp_path, constitution, max_tokens=50), RecordingEngine(respond), progress=False)
    recs = {r["id"]: r for r in read_records(tmp_path / "run")}
    assert recs["r1"]["flags"] == ["round2.revision:empty"] and recs["r1"]["final"] == ""
    assert recs["r2"]["flags"] == ["round1.revision:degenerate", "round2.revision:degenerate"]
    assert recs["r3"]["initial"]["finish_reason"] == "length"
    assert recs["r3"]["flags"] == ["initial:truncated", "initial:degenerate"] or \
        set(recs["r3"]["flags"]) == {"initial:truncated", "initial:degenerate"}
    assert recs["r4"]["flags"] == ["round1.revision:fewshot_copy", "round2.revision:fewshot_copy"]
    assert recs["r0"]["flags"] == []
    assert s.flagged == 4 and s.flags == {"degenerate": 3, "fewshot_copy": 2, "empty": 1, "truncated": 1}
    # SFT skips the flagged final revisions; pairs also skip a flagged initial answer.
    assert s.export.sft_rows == 2 and s.export.sft_skipped == {
        "flagged: degenerate": 1, "flagged: empty": 1, "flagged: fewshot_copy": 1}
    assert s.export.prefs_rows == 1
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["flagged"] == 4 and summary["export"]["sft_skipped"]["flagged: empty"] == 1

    # Keeping flagged texts is one setting away (and needs no --force: it changes no record).
    s = run_revise(make_cfg(tmp_path, constitution, max_tokens=50, export=ExportConfig(skip_flags=())),
                   RecordingEngine(respond), progress=False)
    assert s.done == 0 and s.export.sft_rows == 5 and s.export.prefs_rows == 5


def test_sft_all_rounds_exports_every_revision(tmp_path, constitution):
    s = run_revise(make_cfg(tmp_path, constitution, rounds=3, export=ExportConfig(sft_all_rounds=True)),
                   RecordingEngine(), progress=False)
    assert s.export.sft_rows == 15
    rows = [json.loads(x) for x in (tmp_path / "run" / "sft.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows if r["id"] == "r0"] == [1, 2, 3]
    assert rows[0]["messages"][-1] == {"role": "assistant", "content": "revised 6"}


# --- Inputs and rejects ------------------------------------------------------------------------


def test_rejects_are_written_with_reasons_and_counted(tmp_path, constitution):
    extra = [{"id": "empty", "prompt": "   "}, {"id": "number", "prompt": 42},
             {"id": "long", "prompt": "w " * 1600}, {"id": "r0", "prompt": "duplicate id"}]
    p = prompts_file(tmp_path, 3, extra)
    cfg = make_cfg(tmp_path, constitution, prompts=p, max_tokens=100, critique_max_tokens=50)
    # A single generation of 100 tokens would fit a 1600-word prompt in this context; the whole
    # chain (initial + 2 critiques + 2 revisions, with the few-shot prefix) does not.
    s = run_revise(cfg, RecordingEngine(context=2000), progress=False)
    assert (s.done, s.rejected) == (3, 4)
    rejects = {r["id"]: r for r in map(json.loads, (tmp_path / "run" / "rejects.jsonl").read_text().splitlines())}
    assert set(rejects) == {"empty", "number", "long", "r0"}
    assert rejects["empty"]["reason"] == "empty prompt"
    assert "expected a string or a non-empty list" in rejects["number"]["reason"]
    assert "exceeds the model context of 2000" in rejects["long"]["reason"]
    assert rejects["r0"]["reason"].startswith("duplicate id") and rejects["long"]["source"].endswith(":6")


def test_a_budget_that_cannot_fit_any_prompt_is_a_config_error(tmp_path, constitution):
    with pytest.raises(ConfigError, match=r"4 round\(s\) need \d+ tokens of context .* context is 1000"):
        run_revise(make_cfg(tmp_path, constitution, rounds=4, max_tokens=100), RecordingEngine(context=1000),
                   progress=False)


@pytest.mark.parametrize(("content", "name", "message"), [
    ('{"prompt": "a"}\nnot json\n', "bad.jsonl", r"bad.jsonl:2:1: invalid JSON"),
    ('{"text": "a"}\n{"text": "b"}\n', "cols.jsonl", r"no row has a 'prompt' column \(columns found: text\)"),
    ("prompt\nhello\n", "p.txt", r"unsupported input format '.txt'"),
    ('{"data": 3}', "p.json", r"expected a JSON list of objects"),
])
def test_bad_input_files_fail_with_located_messages_before_anything_is_written(tmp_path, constitution,
                                                                               content, name, message):
    bad = tmp_path / name
    bad.write_text(content)
    with pytest.raises(InputError, match=message):
        run_revise(make_cfg(tmp_path, constitution, prompts=bad), RecordingEngine(), progress=False)
    assert not (tmp_path / "run").exists()


def test_missing_input_and_constitution_files(tmp_path, constitution):
    with pytest.raises(InputError, match="nope.jsonl does not exist"):
        run_revise(make_cfg(tmp_path, constitution, prompts=tmp_path / "nope.jsonl"), RecordingEngine())
    with pytest.raises(Exception, match="principle file .*missing.yaml does not exist"):
        run_revise(make_cfg(tmp_path, tmp_path / "missing.yaml"), RecordingEngine())


def test_config_checks():
    with pytest.raises(ConfigError, match="rounds must be >= 1, got 0"):
        ReviseConfig(prompts=Path("p"), out=Path("o"), rounds=0)
    with pytest.raises(ConfigError, match="top_p"):
        ReviseConfig(prompts=Path("p"), out=Path("o"), top_p=0)


# --- Resume ------------------------------------------------------------------------------------


def test_resume_makes_only_missing_records_and_keeps_earlier_bytes(tmp_path, constitution):
    cfg = make_cfg(tmp_path, constitution, prompts=prompts_file(tmp_path, 3))
    run_revise(cfg, RecordingEngine(), progress=False)
    before = (tmp_path / "run" / "records.jsonl").read_bytes()
    prompts_file(tmp_path, 6)  # the same file, now with 3 more prompts
    eng = RecordingEngine()
    s = run_revise(cfg, eng, progress=False)
    # The chunk r0..r5 was cut short: it is made again whole (vLLM's numerics depend on the batch,
    # so r3..r5 come out as in an uninterrupted run of 6), and only r3..r5 are written.
    assert (s.done, s.skipped, s.records) == (3, 3, 6) and eng.calls == [("generate", 6)] * 5
    after = (tmp_path / "run" / "records.jsonl").read_bytes()
    assert after.startswith(before) and [r["id"] for r in read_records(tmp_path / "run")] == [
        f"r{i}" for i in range(6)]
    s = run_revise(cfg, RecordingEngine(), progress=False)
    assert s.done == 0 and (tmp_path / "run" / "records.jsonl").read_bytes() == after


class BatchSensitiveEngine(RecordingEngine):
    """Like vLLM, its texts depend on the batch: every answer names the size of its call."""

    def generate(self, prompts, sampling, seeds=None):
        outs = super().generate(prompts, sampling, seeds)
        for c in outs:
            object.__setattr__(c, "text", f"{c.text} [batch of {len(prompts)}]")
        return outs


def test_a_chunk_cut_short_is_made_again_whole_so_resume_equals_an_uninterrupted_run(tmp_path, constitution):
    # The chaos suite found it on vLLM: a torn write left 2 of 8 records, the resume made the
    # other 6 as a batch of 6, and their texts differed from the uninterrupted run's batch of 8.
    ref = make_cfg(tmp_path, constitution, chunk_size=4, out=tmp_path / "ref")
    run_revise(ref, BatchSensitiveEngine(), progress=False)
    cfg = make_cfg(tmp_path, constitution, chunk_size=4)
    run_revise(cfg, BatchSensitiveEngine(), progress=False)
    path = tmp_path / "run" / "records.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:2]) + lines[2][:10])  # chunk r0..r3 torn after r1; r4 never written
    eng = BatchSensitiveEngine()
    with pytest.warns(TornTailWarning):
        s = run_revise(cfg, eng, progress=False)
    assert s.done == 3 and [len(p) for p, _, _ in eng.log] == [4] * 5 + [1] * 5  # r0..r3 whole, then r4
    assert path.read_bytes() == (tmp_path / "ref" / "records.jsonl").read_bytes()


@pytest.mark.parametrize(("done", "stale", "expected"), [
    ([], [], [[0, 1, 2], [3, 4, 5], [6]]),                 # a fresh run
    ([0, 1, 2, 3, 4, 5, 6], [], []),                       # nothing to do
    ([0, 1, 3, 4], [], [[0, 1, 2], [3, 4, 5], [6]]),      # chunks 1, 2 cut short: whole; chunk 3 never started
    ([0, 1, 2, 3, 4, 5, 6], [1, 4], [[1, 4]]),             # stale records only: made together, alone
    ([0, 1, 2, 3, 5, 6], [4], [[4]]),                      # stale but otherwise complete chunk
    ([0, 3, 4, 5], [1], [[0, 1, 2], [6]]),                 # a cut chunk that also holds a stale record
])
def test_resume_batches_keep_chunk_boundaries(done, stale, expected):
    from cai.data import PromptRecord
    from cai.revise import resume_batches

    inputs = [PromptRecord(id=str(i), messages=(("user", str(i)),), source=f"p:{i}") for i in range(7)]
    present = {str(i) for i in done} - {str(i) for i in stale}

    class Store:  # what resume_batches reads of a JsonlStore
        def __init__(self, stale_ids):
            self.stale = stale_ids

        def __contains__(self, rid):
            return rid in present

    got = resume_batches(inputs, Store([str(i) for i in stale]), 3)
    assert [[int(r.id) for r in b] for b in got] == expected


def test_torn_last_line_is_repaired_with_a_warning(tmp_path, constitution):
    cfg = make_cfg(tmp_path, constitution)
    run_revise(cfg, RecordingEngine(), progress=False)
    path = tmp_path / "run" / "records.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:3]) + lines[3][: len(lines[3]) // 2])  # a crash mid-write
    with pytest.warns(TornTailWarning, match="torn last line"):
        s = run_revise(cfg, RecordingEngine(), progress=False)
    assert s.done == 2 and path.read_bytes() == b"".join(lines)


def test_a_different_config_is_refused_and_force_recomputes_what_it_changes(tmp_path, constitution):
    run_revise(make_cfg(tmp_path, constitution), RecordingEngine(), progress=False)
    with pytest.raises(ResumeError, match=r"different config:\n    temperature: 0.7 -> 0.5") as e:
        run_revise(make_cfg(tmp_path, constitution, temperature=0.5), RecordingEngine(), progress=False)
    assert "--force" in str(e.value)
    s = run_revise(make_cfg(tmp_path, constitution, temperature=0.5), RecordingEngine(), force=True, progress=False)
    # Every key holds the temperature: all 5 records are made again, never kept as they were.
    assert (s.stale, s.done, s.skipped, s.records) == (5, 5, 0, 5)
    assert {r["sampling"]["response"]["temperature"] for r in read_records(tmp_path / "run")} == {0.5}
    assert "temperature: 0.5" in (tmp_path / "run" / "config.yaml").read_text()
    # Fields that change no record (exports, chunking) need no --force and make nothing again.
    s = run_revise(make_cfg(tmp_path, constitution, temperature=0.5, chunk_size=7,
                            export=ExportConfig(test_fraction=0.5)), RecordingEngine(), progress=False)
    assert s.export.splits["test_sft"] > 0 and (s.stale, s.done) == (0, 0)


@pytest.mark.parametrize("change", [{"dtype": "float32"}, {"backend": "hf"}])
def test_a_forced_engine_setting_change_makes_every_record_again(tmp_path, constitution, change):
    from cai.config import EngineConfig

    run_revise(make_cfg(tmp_path, constitution), RecordingEngine(), progress=False)
    cfg = make_cfg(tmp_path, constitution, engine=EngineConfig(**change))
    with pytest.raises(ResumeError, match=rf"engine.{next(iter(change))}: "):
        run_revise(cfg, RecordingEngine(), progress=False)
    s = run_revise(cfg, RecordingEngine(), force=True, progress=False)
    assert (s.stale, s.done) == (5, 5)  # was stale=0: the keys left the engine settings out
    assert {r["engine"][next(iter(change))] for r in read_records(tmp_path / "run")} == set(change.values())


def test_another_model_folder_content_is_refused_naming_both_fingerprints(tmp_path, constitution):
    eng = RecordingEngine()
    eng.fingerprint = "aaaa"
    run_revise(make_cfg(tmp_path, constitution), eng, progress=False)
    eng = RecordingEngine()
    eng.fingerprint = "bbbb"  # the same name, another model in the folder (re-converted, fine-tuned...)
    with pytest.raises(ResumeError, match=r"inputs.model_fingerprint: 'aaaa' -> 'bbbb'"):
        run_revise(make_cfg(tmp_path, constitution), eng, progress=False)
    s = run_revise(make_cfg(tmp_path, constitution), eng, force=True, progress=False)
    assert (s.stale, s.done) == (5, 5)
    assert {r["model_fingerprint"] for r in read_records(tmp_path / "run")} == {"bbbb"}


def test_the_same_model_under_another_path_keeps_every_record(tmp_path, constitution):
    # A model folder moved (another machine, another mount, `./m` for `/abs/m`): its content,
    # the fingerprint, is the same, so --force to accept the new path remakes nothing.
    from cai.config import EngineConfig

    eng = RecordingEngine()
    eng.fingerprint, eng.model_name = "aaaa", "/home/alice/models/m"
    run_revise(make_cfg(tmp_path, constitution, engine=EngineConfig(model="/home/alice/models/m")), eng,
               progress=False)
    eng = RecordingEngine()
    eng.fingerprint, eng.model_name = "aaaa", "/scratch/bob/m"
    cfg = make_cfg(tmp_path, constitution, engine=EngineConfig(model="/scratch/bob/m"))
    with pytest.raises(ResumeError, match=r"engine.model: '/home/alice/models/m' -> '/scratch/bob/m'"):
        run_revise(cfg, eng, progress=False)
    s = run_revise(cfg, eng, force=True, progress=False)
    assert (s.stale, s.done, s.skipped) == (0, 0, 5)
    # Without a fingerprint (a hub id that is not in a local folder) the name is all there is.
    eng = RecordingEngine()
    eng.model_name = "org/other"
    s = run_revise(make_cfg(tmp_path, constitution, engine=EngineConfig(model="org/other")), eng, force=True,
                   progress=False)
    assert (s.stale, s.done) == (5, 5)


def test_a_new_cleaning_version_is_refused_then_recomputed(tmp_path, constitution, monkeypatch):
    import cai.revise

    run_revise(make_cfg(tmp_path, constitution), RecordingEngine(), progress=False)
    monkeypatch.setattr(cai.revise, "CLEAN_VERSION", cai.revise.CLEAN_VERSION + 1)
    with pytest.raises(ResumeError, match=r"inputs.clean_version: \d+ -> \d+"):
        run_revise(make_cfg(tmp_path, constitution), RecordingEngine(), progress=False)
    assert run_revise(make_cfg(tmp_path, constitution), RecordingEngine(), force=True, progress=False).stale == 5


def test_an_edited_prompt_is_made_again_and_replaces_the_old_record(tmp_path, constitution):
    cfg = make_cfg(tmp_path, constitution)
    run_revise(cfg, RecordingEngine(), progress=False)
    before = {r["id"]: r for r in read_records(tmp_path / "run")}
    prompts_file(tmp_path, 5, name="p.jsonl")
    text = (tmp_path / "p.jsonl").read_text().replace('"question 2"', '"question two, edited"')
    (tmp_path / "p.jsonl").write_text(text)
    s = run_revise(cfg, RecordingEngine(), progress=False)  # no --force: a per-record change
    assert (s.stale, s.done, s.skipped, s.records) == (1, 1, 4, 5)
    after = {r["id"]: r for r in read_records(tmp_path / "run")}
    assert after["r2"]["input"][0]["content"] == "question two, edited"
    assert all(after[i] == before[i] for i in before if i != "r2")
    sft = [json.loads(x) for x in (tmp_path / "run" / "sft.jsonl").read_text().splitlines()]
    assert [r["messages"][0]["content"] for r in sft if r["id"] == "r2"] == ["question two, edited"]
    assert run_revise(cfg, RecordingEngine(), progress=False).stale == 0


def test_an_edited_prompt_without_an_id_column_replaces_its_old_record(tmp_path, constitution):
    # Without ids, a prompt's id is a hash of its text: the edited prompt is a new id, and the
    # record of the old text must go, or the exports (and `cai label` on this folder) keep a
    # prompt the input no longer holds.
    p = tmp_path / "noid.jsonl"
    p.write_text("".join(json.dumps({"prompt": f"question {i}"}) + "\n" for i in range(5)))
    cfg = make_cfg(tmp_path, constitution, prompts=p)
    run_revise(cfg, RecordingEngine(), progress=False)
    p.write_text(p.read_text().replace('"question 2"', '"question two, edited"'))
    s = run_revise(cfg, RecordingEngine(), progress=False)
    assert (s.removed, s.done, s.skipped, s.records) == (1, 1, 4, 5)
    texts = [r["input"][0]["content"] for r in read_records(tmp_path / "run")]
    assert "question 2" not in texts and "question two, edited" in texts
    sft = [json.loads(x)["messages"][0]["content"] for x in (tmp_path / "run" / "sft.jsonl").read_text().splitlines()]
    assert "question 2" not in sft
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["removed"] == 1
    assert run_revise(cfg, RecordingEngine(), progress=False).removed == 0


def test_an_edited_principle_makes_exactly_its_records_again(tmp_path, constitution):
    cfg = make_cfg(tmp_path, constitution, prompts=prompts_file(tmp_path, 20))
    run_revise(cfg, RecordingEngine(), progress=False)
    old = {r["id"]: r for r in read_records(tmp_path / "run")}
    users = {rid for rid, r in old.items() if "honest" in [x["principle"] for x in r["rounds"]]}
    assert 0 < len(users) < 20
    constitution.write_text(CONSTITUTION.replace("Point out anything made up.", "List every made-up claim."))
    c = load_constitution(constitution)
    for rid, r in old.items():  # the keys say which: a record that did not use the principle keeps its key
        new_key = record_key(r["input"], c, [c.sample(0, rid, k) for k in (1, 2)], FAKE_MODEL, r["sampling"], cfg)
        assert (new_key != r["key"]) == (rid in users)
    s = run_revise(cfg, RecordingEngine(), progress=False)
    assert s.stale == len(users) and s.done == len(users) and s.skipped == 20 - len(users)
    new = {r["id"]: r for r in read_records(tmp_path / "run")}
    assert all(new[i] == old[i] for i in old if i not in users)
    assert all(new[i]["key"] != old[i]["key"] for i in users)
    assert run_revise(cfg, RecordingEngine(), progress=False).stale == 0


def test_editing_only_a_judge_question_leaves_revise_records_current(tmp_path, constitution):
    cfg = make_cfg(tmp_path, constitution)
    run_revise(cfg, RecordingEngine(), progress=False)
    before = (tmp_path / "run" / "records.jsonl").read_bytes()
    constitution.write_text(CONSTITUTION.replace("Which is more honest?", "Which response invents less?"))
    s = run_revise(cfg, RecordingEngine(), progress=False)  # revise never reads `compare`
    assert (s.stale, s.done) == (0, 0) and (tmp_path / "run" / "records.jsonl").read_bytes() == before


def test_new_weights_remake_only_changed_draws_and_new_templates_are_refused(tmp_path, constitution):
    cfg = make_cfg(tmp_path, constitution, prompts=prompts_file(tmp_path, 20))
    run_revise(cfg, RecordingEngine(), progress=False)
    old = {r["id"]: [x["principle"] for x in r["rounds"]] for r in read_records(tmp_path / "run")}
    constitution.write_text(CONSTITUTION.replace("weight: 3", "weight: 1"))
    c = load_constitution(constitution)
    moved = {rid for rid, drawn in old.items() if drawn != [c.sample(0, rid, k).id for k in (1, 2)]}
    assert 0 < len(moved) < 20
    assert run_revise(cfg, RecordingEngine(), progress=False).stale == len(moved)
    # The few-shot transcripts are in every prompt: a change there touches every record.
    constitution.write_text(CONSTITUTION.replace("weight: 3", "weight: 1").replace(
        "It explains lock picking", "It explains lockpicking"))
    with pytest.raises(ResumeError, match=r"inputs.constitution_prompts: '\w+' -> '\w+'[\s\S]*--force"):
        run_revise(cfg, RecordingEngine(), progress=False)
    assert run_revise(cfg, RecordingEngine(), force=True, progress=False).stale == 20


def test_a_folder_made_before_inputs_were_recorded_is_refused(tmp_path, constitution):
    cfg = make_cfg(tmp_path, constitution)
    run_revise(cfg, RecordingEngine(), progress=False)
    (tmp_path / "run" / "inputs.json").unlink()
    with pytest.raises(ResumeError, match="older cai version"):
        run_revise(cfg, RecordingEngine(), progress=False)


def test_an_unfinished_generation_is_flagged_and_never_exported(tmp_path, constitution):
    from cai.engine.base import Completion

    class Aborting(RecordingEngine):
        def generate(self, prompts, sampling, seeds=None):
            outs = super().generate(prompts, sampling, seeds)
            # The engine aborted the revisions of r1 (e.g. a request cancelled under load).
            return [Completion(o.text, o.prompt_tokens, o.completion_tokens, "abort")
                    if "question 1" in (p if isinstance(p, str) else str(p)) and REVISION_CUE in str(p[-1])
                    else o for p, o in zip(prompts, outs, strict=True)]

    s = run_revise(make_cfg(tmp_path, constitution), Aborting(), progress=False)
    r1 = {r["id"]: r for r in read_records(tmp_path / "run")}["r1"]
    assert r1["rounds"][-1]["revision"]["finish_reason"] == "abort"  # kept as the engine said, not "stop"
    assert r1["flags"] == ["round1.revision:unfinished", "round2.revision:unfinished"]
    assert s.flags == {"unfinished": 2}
    assert s.export.sft_skipped == {"flagged: unfinished": 1} and s.export.sft_rows == 4
    sft_ids = {json.loads(x)["id"] for x in (tmp_path / "run" / "sft.jsonl").read_text().splitlines()}
    assert "r1" not in sft_ids


# --- One writer per run folder -------------------------------------------------------------------


def test_a_run_folder_held_by_another_job_is_refused(tmp_path, constitution):
    from cai.records import RunLockedError, lock_run_dir

    held = rf"{tmp_path / 'run'} is in use by another cai process \(pid {os.getpid()}\)"
    with lock_run_dir(tmp_path / "run"), pytest.raises(RunLockedError, match=held):
        run_revise(make_cfg(tmp_path, constitution), RecordingEngine(), progress=False)
    assert not (tmp_path / "run" / "records.jsonl").exists()
    assert run_revise(make_cfg(tmp_path, constitution), RecordingEngine(), progress=False).done == 5


def test_two_processes_on_one_run_folder_never_duplicate_records(tmp_path, constitution):
    """The reported failure: two jobs into one folder wrote 16 records for 8 ids (and 16 SFT rows)."""
    script = tmp_path / "job.py"
    script.write_text(JOB.format(repo=str(REPO), tests=str(REPO / "tests"), constitution=str(constitution),
                                 prompts=str(prompts_file(tmp_path, 8))))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    first = subprocess.Popen([sys.executable, str(script), "0.2", str(tmp_path / "run")], env=env)
    lock = tmp_path / "run" / ".cai.lock"
    deadline = time.monotonic() + 60
    while not (lock.exists() and lock.read_text().strip()):
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    second = subprocess.run([sys.executable, str(script), "0", str(tmp_path / "run")], env=env,
                            capture_output=True, text=True)
    assert first.wait(timeout=120) == 0
    assert second.returncode != 0 and f"in use by another cai process (pid {first.pid})" in second.stderr
    ids = [r["id"] for r in read_records(tmp_path / "run")]
    assert sorted(ids) == [f"r{i}" for i in range(8)]
    assert len((tmp_path / "run" / "sft.jsonl").read_text().splitlines()) == 8


def test_duplicate_ids_already_on_disk_are_named_not_counted(tmp_path, constitution):
    cfg = make_cfg(tmp_path, constitution)
    run_revise(cfg, RecordingEngine(), progress=False)
    path = tmp_path / "run" / "records.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines + lines[1:3]))  # what two unlocked writers left behind
    with pytest.raises(ResumeError, match=r"records.jsonl:6: 2 record id\(s\) appear more than once: 'r1' on lines "
                                          r"2, 6; 'r2' on lines 3, 7[\s\S]*fix: keep the first line"):
        run_revise(cfg, RecordingEngine(), progress=False)


# --- Crash safety: a real SIGKILL mid-job ------------------------------------------------------

JOB = textwrap.dedent("""\
    import sys, time
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    from cai.engine.fake import FakeEngine
    from cai.revise import ReviseConfig, run_revise
    sys.path.insert(0, {tests!r})
    from test_revise import scripted

    class Slow(FakeEngine):
        def generate(self, prompts, sampling, seeds=None):
            time.sleep(float(sys.argv[1]))  # a slow model: the kill lands mid-job
            return super().generate(prompts, sampling, seeds)

    cfg = ReviseConfig(prompts=Path({prompts!r}), out=Path(sys.argv[2]), constitution=Path({constitution!r}),
                       chunk_size=2)
    run_revise(cfg, Slow(respond=scripted), progress=False)
""")


def test_sigkill_mid_job_then_resume_gives_exactly_one_record_per_id(tmp_path, constitution):
    script = tmp_path / "job.py"
    script.write_text(JOB.format(repo=str(REPO), tests=str(REPO / "tests"), constitution=str(constitution),
                                 prompts=str(prompts_file(tmp_path, 12))))
    reference, crashed = tmp_path / "reference", tmp_path / "crashed"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run([sys.executable, str(script), "0", str(reference)], check=True, env=env)

    proc = subprocess.Popen([sys.executable, str(script), "0.2", str(crashed)], env=env)
    records = crashed / "records.jsonl"
    deadline = time.monotonic() + 60
    while not (records.exists() and records.read_bytes().count(b"\n") >= 2):  # >= 1 chunk written
        assert proc.poll() is None and time.monotonic() < deadline, "the job ended before the kill"
        time.sleep(0.01)
    time.sleep(0.3)  # land inside a later chunk (each takes 5 calls x 0.2 s)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = records.read_bytes()
    n_before = partial.count(b"\n")
    assert 2 <= n_before < 12, "the kill must leave the job part-done"

    subprocess.run([sys.executable, str(script), "0", str(crashed)], check=True, env=env)
    final = records.read_bytes()
    ids = [json.loads(x)["id"] for x in final.splitlines()]
    assert sorted(ids) == sorted(f"r{i}" for i in range(12)) and len(ids) == 12  # exactly once each
    assert final.startswith(partial[: partial.rfind(b"\n") + 1])  # earlier records byte-identical
    assert final == (reference / "records.jsonl").read_bytes()  # as if it had never crashed
    assert (crashed / "sft.jsonl").read_bytes() == (reference / "sft.jsonl").read_bytes()


# --- The command line ---------------------------------------------------------------------------


def test_cli_with_a_config_file_and_overriding_flags(tmp_path, constitution, monkeypatch):
    from cai.cli import app

    made = []
    monkeypatch.setattr("cai.revise.make_engine", lambda cfg: made.append(cfg) or RecordingEngine())
    monkeypatch.setattr("cai.models.resolve", lambda name, prepare=True: name)  # no such model here
    cfg_file = tmp_path / "revise.yaml"
    cfg_file.write_text(f"prompts: {prompts_file(tmp_path)}\nconstitution: {constitution}\nrounds: 3\n"
                        "temperature: 0.5\nengine:\n  model: some/model\n  max_model_len: 4096\n"
                        "export:\n  test_fraction: 0.2\n")
    out = tmp_path / "cli-run"
    r = CliRunner().invoke(app, ["revise", "--config", str(cfg_file), "--out", str(out), "--rounds", "1",
                                 "--backend", "hf", "--sft-all-rounds"])
    assert r.exit_code == 0, r.output
    assert made[0].model == "some/model" and made[0].backend == "hf" and made[0].max_model_len == 4096
    saved = (out / "config.yaml").read_text()
    assert "rounds: 1" in saved and "temperature: 0.5" in saved and "sft_all_rounds: true" in saved
    assert "test_fraction: 0.2" in saved
    assert "done 5 revised" in r.output and "exported 5 SFT rows" in r.output and "principle usage" in r.output


def test_cli_refuses_a_different_config_and_names_it(tmp_path, constitution):
    p = prompts_file(tmp_path)
    run_revise(ReviseConfig(prompts=p, out=tmp_path / "run", constitution=constitution), RecordingEngine(),
               progress=False)
    r = subprocess.run([sys.executable, "-m", "cai", "revise", "--prompts", str(p), "--out", str(tmp_path / "run"),
                        "--constitution", str(constitution), "--rounds", "3"],
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode == 1
    assert r.stderr.startswith("Error: ") and "rounds: 2 -> 3" in r.stderr and "--force" in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_requires_prompts_and_out(tmp_path):
    from cai.cli import app

    r = CliRunner().invoke(app, ["revise", "--prompts", "x.jsonl"])
    assert isinstance(r.exception, ConfigError) and "--out is required" in str(r.exception)


def test_the_example_config_is_valid():
    from cai import config

    cfg = config.load(ReviseConfig, REPO / "examples" / "revise.yaml", {"out": "runs/x"})
    assert cfg.rounds >= 1 and cfg.constitution.name == "principles.yaml"


# --- The real model ----------------------------------------------------------------------------


@pytest.mark.engine
def test_real_engine_two_rounds(tmp_path, vllm_engine):
    rows = [json.loads(x) for x in (DATA / "do-not-answer" / "prompts.jsonl").read_text().splitlines()[:3]]
    p = tmp_path / "p.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = ReviseConfig(prompts=p, out=tmp_path / "run", constitution=REPO / "principles.yaml", rounds=2,
                       max_tokens=32, critique_max_tokens=24, temperature=0.7,
                       export=ExportConfig(skip_flags=()))
    s = run_revise(cfg, vllm_engine, progress=False)
    assert (s.done, s.rejected) == (3, 0) and s.completion_tokens > 0
    recs = read_records(tmp_path / "run")
    assert [r["id"] for r in recs] == [r["id"] for r in rows]
    for rec in recs:
        assert rec["model"] == "default" and len(rec["rounds"]) == 2
        for step in [rec["initial"]] + [r["revision"] for r in rec["rounds"]]:
            assert 0 < step["completion_tokens"] <= 32 and step["finish_reason"] in ("stop", "length")
            assert ("truncated" in step["flags"]) == (step["finish_reason"] == "length")
        for step in [r["critique"] for r in rec["rounds"]]:
            assert 0 < step["completion_tokens"] <= 24 and "truncated" not in step["flags"]
        assert rec["rounds"][1]["critique"]["prompt_tokens"] > rec["rounds"][0]["revision"]["prompt_tokens"]
    assert s.export.sft_rows == 3
    # A record made alone (another chunk, as after a crash) samples the same texts.
    alone = tmp_path / "p1.jsonl"
    alone.write_text(json.dumps(rows[1]) + "\n")
    run_revise(ReviseConfig(**{**cfg.__dict__, "prompts": alone, "out": tmp_path / "alone"}), vllm_engine,
               progress=False)
    again = read_records(tmp_path / "alone")[0]
    assert again["final"] == recs[1]["final"] and again["initial"]["text"] == recs[1]["initial"]["text"]


@pytest.mark.engine
def test_cli_revise_with_the_transformers_backend(tmp_path):
    from cai.cli import app

    rows = [{"id": "a", "prompt": "How do I boil an egg?"}, {"id": "b", "prompt": "How can I steal a car?"}]
    p = tmp_path / "p.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["revise", "--prompts", str(p), "--out", str(out), "--constitution",
                                 str(REPO / "principles.yaml"), "--backend", "hf", "--rounds", "1",
                                 "--max-tokens", "8", "--critique-max-tokens", "8", "--keep-flagged"])
    assert r.exit_code == 0, r.output
    recs = read_records(out)
    assert [x["id"] for x in recs] == ["a", "b"] and recs[0]["model"].startswith("SmolLM2-135M-Instruct")
    from cai import models

    assert recs[0]["model_fingerprint"] == models.fingerprint(models.resolve("default"))  # set by make_engine
    assert recs[0]["engine"] == {"backend": "hf", "dtype": "auto"}
    assert "exported 2 SFT rows" in r.output
    # The same command again: the keys match (the identity made before loading equals the engine's).
    r = CliRunner().invoke(app, ["revise", "--prompts", str(p), "--out", str(out), "--constitution",
                                 str(REPO / "principles.yaml"), "--backend", "hf", "--rounds", "1",
                                 "--max-tokens", "8", "--critique-max-tokens", "8", "--keep-flagged"])
    assert r.exit_code == 0 and "0 revised, 2 already there" in r.output and "stale" not in r.output
