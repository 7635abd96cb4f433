"""`cai generate`: batching, resume, rejects, and the real CLI."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cai.cli import app
from cai.engine.fake import FakeEngine
from cai.errors import InputError
from cai.generate import GenerateConfig, run_generate


def prompts_file(tmp_path, n=5, extra=()):
    p = tmp_path / "p.jsonl"
    rows = [{"id": f"r{i}", "prompt": f"question {i}"} for i in range(n)] + list(extra)
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_one_engine_call_per_chunk_and_provenance(tmp_path):
    eng = FakeEngine(respond=lambda p, i: "an answer")
    cfg = GenerateConfig(prompts=prompts_file(tmp_path), out=tmp_path / "o.jsonl", chunk_size=2)
    s = run_generate(cfg, eng)
    assert s.done == 5 and [c for c in eng.calls if c[0] == "generate"] == [("generate", 2)] * 2 + [("generate", 1)]
    rows = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(5)]
    assert {"model", "sampling", "seed", "cai_version", "key"} <= set(rows[0])
    assert rows[0]["sampling"]["max_tokens"] == 256


def test_resume_skips_done_ids_and_keeps_earlier_lines(tmp_path):
    out = tmp_path / "o.jsonl"
    run_generate(GenerateConfig(prompts=prompts_file(tmp_path, 3), out=out), FakeEngine())
    before = out.read_text()
    s = run_generate(GenerateConfig(prompts=prompts_file(tmp_path, 5), out=out), FakeEngine())
    assert (s.done, s.skipped) == (2, 3)
    assert out.read_text().startswith(before) and len(out.read_text().splitlines()) == 5


def test_an_edited_prompt_or_another_setting_is_made_again(tmp_path):
    out = tmp_path / "o.jsonl"
    run_generate(GenerateConfig(prompts=prompts_file(tmp_path, 3), out=out), FakeEngine())
    p = prompts_file(tmp_path, 3)
    p.write_text(p.read_text().replace("question 1", "question one"))
    s = run_generate(GenerateConfig(prompts=p, out=out), FakeEngine())
    assert (s.stale, s.done, s.skipped) == (1, 1, 2)  # was: kept the answer to the old prompt
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert len(rows) == 3 and rows["r1"]["prompt"][0]["content"] == "question one"
    from cai.config import EngineConfig

    s = run_generate(GenerateConfig(prompts=p, out=out, engine=EngineConfig(dtype="float32")), FakeEngine())
    assert (s.stale, s.done) == (3, 3)  # dtype is in the key


def test_finish_reasons_are_kept_and_unfinished_answers_flagged(tmp_path):
    from cai.engine.base import Completion

    class Aborting(FakeEngine):
        def generate(self, prompts, sampling, seeds=None):
            outs = super().generate(prompts, sampling, seeds)
            return [Completion(o.text, o.prompt_tokens, o.completion_tokens, "abort" if k == 0 else o.finish_reason)
                    for k, o in enumerate(outs)]

    s = run_generate(GenerateConfig(prompts=prompts_file(tmp_path, 2), out=tmp_path / "o.jsonl"), Aborting())
    rows = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [(r["finish_reason"], r["flags"]) for r in rows] == [("abort", ["unfinished"]), ("stop", [])]
    assert s.unfinished == 1


def test_a_second_writer_into_the_same_file_is_refused(tmp_path):
    from cai.records import RunLock, RunLockedError

    out = tmp_path / "o.jsonl"
    with RunLock(tmp_path / "o.jsonl.lock"), pytest.raises(RunLockedError, match=f"{out} is in use"):
        run_generate(GenerateConfig(prompts=prompts_file(tmp_path, 2), out=out), FakeEngine())
    assert not out.exists()


def test_bad_input_never_touches_existing_output(tmp_path):
    out = tmp_path / "o.jsonl"
    run_generate(GenerateConfig(prompts=prompts_file(tmp_path, 2), out=out), FakeEngine())
    before = out.read_text()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\nnot json\n')
    with pytest.raises(InputError, match=rf"{bad}:2:1: invalid JSON"):
        run_generate(GenerateConfig(prompts=bad, out=out), FakeEngine())
    assert out.read_text() == before


def test_rejects_are_written_and_counted(tmp_path):
    p = prompts_file(tmp_path, 2, extra=[{"id": "empty", "prompt": "  "}, {"id": "long", "prompt": "w " * 100}])
    s = run_generate(GenerateConfig(prompts=p, out=tmp_path / "o.jsonl", max_tokens=8), FakeEngine(context=50))
    assert (s.done, s.rejected) == (2, 2)
    rejects = [json.loads(x) for x in s.rejects_path.read_text().splitlines()]
    assert {r["id"] for r in rejects} == {"empty", "long"}


@pytest.mark.engine
def test_cli_generate_runs_the_real_model(tmp_path):
    out = tmp_path / "o.jsonl"
    r = CliRunner().invoke(app, ["generate", "--prompts", str(prompts_file(tmp_path, 3)), "--out", str(out),
                                 "--backend", "hf", "--max-tokens", "8", "--temperature", "0"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 3 and all(row["response"] for row in rows)
    assert rows[0]["model"].startswith("SmolLM2-135M-Instruct")


def test_cli_prints_typed_errors_without_traceback(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "cai", "generate", "--prompts", str(tmp_path / "nope.jsonl"),
                        "--out", str(tmp_path / "o.jsonl")], capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.startswith("Error: ") and "does not exist" in r.stderr and "Traceback" not in r.stderr
