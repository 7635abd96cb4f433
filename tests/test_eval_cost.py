"""The cost of each rung (cai/eval/cost.py): run folders constructed as each stage writes them
(config.yaml, summary.json or train_done.json, the records) give the known totals; a folder whose
summary is missing gives a note, not a crash; and in `cai eval`'s report and table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import EVAL_ANSWER, write_jsonl
from helpers import eval_suite_specs as suites
from helpers import length_judge as prefers_longer

from cai.engine.fake import FakeEngine
from cai.eval.cost import BASE_NOTE, trace
from cai.eval.run import EvalConfig, run_eval


def folder(path: Path, config: dict, summary: dict | None = None, done: dict | None = None) -> Path:
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    if summary is not None:
        (path / "summary.json").write_text(json.dumps(summary))
    if done is not None:
        (path / "train_done.json").write_text(json.dumps(done))
    return path


def ladder(root: Path) -> dict[str, Path]:
    """revise -> sft; revise -> label -> rm; sft + rm -> ppo. Known figures:
    revise: 3 records of 10 + 2 x (4 + 6) = 30 tokens each -> 90 generated, 100 s on cuda;
    label: 2 judgments of 700 prompt tokens -> 1400 judged, 50 s on cpu;
    sft: 10 steps, 30 s cuda; rm: 5 steps, 20 s cuda; ppo: 4 steps, 40 s cuda, 300 response tokens."""
    step = lambda n: {"text": "t", "prompt_tokens": 999, "completion_tokens": n}  # noqa: E731
    revise = folder(root / "revise", {"prompts": "p.jsonl", "rounds": 2, "engine": {"model": "default"}},
                    summary={"seconds": 100.0, "device": "cuda", "skipped": 0, "completion_tokens": 1})
    write_jsonl(revise / "records.jsonl", [{"id": f"r{i}", "initial": step(10),
                                            "rounds": [{"critique": step(4), "revision": step(6)}] * 2}
                                           for i in range(3)])
    write_jsonl(revise / "sft.jsonl", [{"messages": []}])
    label = folder(root / "label", {"input": str(revise), "judge": {"model": "default"}, "policy": None},
                   summary={"seconds": 50.0, "device": "cpu", "judged": 2, "judged_now": 2})
    write_jsonl(label / "judgments.jsonl", [{"id": f"j{i}", "verdict": {"prompt_tokens": 700}} for i in range(2)])
    write_jsonl(label / "prefs.jsonl", [{"id": "x"}])
    sft = folder(root / "sft", {"model": "default", "data": str(revise / "sft.jsonl")},
                 done={"stage": "sft", "steps": 10, "seconds": 30.0, "device": "cuda", "resumed_from": 0})
    rm = folder(root / "rm", {"base": str(sft), "prefs": str(label / "prefs.jsonl")},
                done={"stage": "rm", "steps": 5, "seconds": 20.0, "device": "cuda", "resumed_from": 0})
    ppo = folder(root / "ppo", {"policy": str(sft), "reward": "rm", "reward_model": str(rm)},
                 done={"stage": "ppo", "steps": 4, "seconds": 40.0, "device": "cuda", "response_tokens": 300,
                       "resumed_from": 0})
    return {"revise": revise, "label": label, "sft": sft, "rm": rm, "ppo": ppo}


def test_a_ppo_rung_costs_every_stage_behind_it_once(tmp_path):
    runs = ladder(tmp_path)
    stages, notes = trace(str(runs["ppo"]))
    # Upstream first; the revise folder (reached through sft and through label) counted once.
    assert [(s["stage"], s["folder"]) for s in stages] == [
        ("revise", str(runs["revise"])), ("sft", str(runs["sft"])), ("label", str(runs["label"])),
        ("rm", str(runs["rm"])), ("ppo", str(runs["ppo"]))]
    by = {s["stage"]: s for s in stages}
    assert by["revise"]["tokens_generated"] == 90 and by["revise"]["tokens_judged"] == 0
    assert by["label"]["tokens_judged"] == 1400 and by["label"]["tokens_generated"] is None  # no responses.jsonl
    assert by["ppo"]["tokens_generated"] == 300 and by["ppo"]["training_steps"] == 4
    assert by["label"]["gpu_seconds"] is None and by["sft"]["gpu_seconds"] == 30.0
    # "default" is named by revise, label and sft: one note, not three.
    assert notes == [f"default: {BASE_NOTE}"]

    from cai.eval.cost import total_cost

    t = total_cost(stages)
    assert t == {"tokens_generated": 390, "tokens_judged": 1400, "training_steps": 19, "seconds": 240.0,
                 "gpu_seconds": 190.0}


def test_records_are_read_once_per_version_and_again_after_an_edit(tmp_path):
    runs = ladder(tmp_path)
    before = {s["stage"]: s for s in trace(str(runs["sft"]))[0]}["revise"]["tokens_generated"]
    with (runs["revise"] / "records.jsonl").open("a") as f:
        f.write(json.dumps({"id": "r9", "initial": {"completion_tokens": 7}}) + "\n")
    after = {s["stage"]: s for s in trace(str(runs["ppo"]))[0]}["revise"]["tokens_generated"]
    assert (before, after) == (90, 97)


def test_an_sft_rung_costs_its_revise_data_and_its_training(tmp_path):
    runs = ladder(tmp_path)
    stages, _ = trace(str(runs["sft"]))
    assert [s["stage"] for s in stages] == ["revise", "sft"]


def test_a_folder_without_its_summary_is_a_note_not_a_crash(tmp_path):
    runs = ladder(tmp_path)
    (runs["rm"] / "train_done.json").unlink()  # an rm run that never finished
    (runs["revise"] / "summary.json").unlink()  # a revise run cut short
    stages, _ = trace(str(runs["ppo"]))
    by = {s["folder"]: s for s in stages}
    rm = by[str(runs["rm"])]
    assert rm["stage"] == "unknown" and "no summary (train_done.json)" in rm["notes"][0] and rm["seconds"] is None
    revise = by[str(runs["revise"])]
    assert revise["tokens_generated"] == 90 and revise["seconds"] is None and "no summary.json" in revise["notes"][0]


def test_an_older_summary_without_a_device_has_unknown_gpu_seconds(tmp_path):
    runs = ladder(tmp_path)
    done = json.loads((runs["sft"] / "train_done.json").read_text())
    del done["device"]
    done["resumed_from"] = 4
    (runs["sft"] / "train_done.json").write_text(json.dumps(done))
    sft = trace(str(runs["sft"]))[0][-1]
    assert sft["gpu_seconds"] is None and sft["seconds"] == 30.0
    assert any("does not record the device" in n for n in sft["notes"])
    assert any("resumed at step 4" in n for n in sft["notes"])


def test_a_data_file_outside_any_run_is_noted(tmp_path):
    data = write_jsonl(tmp_path / "mine.jsonl", [{"messages": []}])
    sft = folder(tmp_path / "sft", {"model": "default", "data": str(data)},
                 done={"stage": "sft", "steps": 2, "seconds": 3.0, "device": "cpu"})
    stages, notes = trace(str(sft))
    assert [s["stage"] for s in stages] == ["sft"]
    assert any("a data file, not a cai run folder" in n for n in notes)


def test_an_input_moved_since_its_run_is_named_missing_not_a_base_model(tmp_path):
    """The SFT folder a PPO run names was moved away, and the revise data of the SFT too: their
    cost is not in the totals, and the notes say the inputs are not here (not "a base model",
    which costs nothing to train), naming each."""
    runs = ladder(tmp_path)
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    runs["sft"].rename(moved / "sft")
    stages, notes = trace(str(runs["ppo"]))
    assert [s["stage"] for s in stages] == ["revise", "label", "rm", "ppo"]
    assert f"{runs['sft']}: no such file or folder here" in " ".join(notes)
    assert not any(n.startswith(str(runs["sft"])) and "base model" in n for n in notes)
    shutil.rmtree(runs["revise"])
    _, notes = trace(str(moved / "sft"))
    assert any(n.startswith(f"{runs['revise'] / 'sft.jsonl'}: no such file or folder here") for n in notes)
    assert any(n == f"default: {BASE_NOTE}" for n in notes)


def test_the_report_has_a_cost_per_policy_and_the_table_a_cost_column(tmp_path):
    runs = ladder(tmp_path)
    policies = ("base=fake", "prompted=fake+prompted", f"ppo={runs['ppo']}")
    cfg = EvalConfig(policies=policies, baseline="base", out=tmp_path / "eval", suites=suites(tmp_path),
                     refusal="patterns", default_suites=False, max_tokens=12, resamples=50)
    s = run_eval(cfg, engines={name: FakeEngine(respond=lambda prompt, i: EVAL_ANSWER)
                               for name in ("base", "prompted", "ppo")}, judge_engine=FakeEngine(score=prefers_longer))
    cost = s.report["cost"]
    assert cost["base"]["stages"] == [] and cost["base"]["total"]["seconds"] == 0.0
    assert cost["ppo"]["total"]["seconds"] == 240.0 and cost["ppo"]["model"] == str(runs["ppo"])
    # The prompted rung's system prompt, in prompt tokens per answer over the same model unprompted.
    answers = [json.loads(x) for x in (tmp_path / "eval" / "answers.jsonl").read_text().splitlines()]
    extra = [a["prompt_tokens"] for a in answers if a["policy"] == "prompted"]
    plain = [a["prompt_tokens"] for a in answers if a["policy"] == "base"]
    assert cost["prompted"]["extra_prompt_tokens_per_answer"] == (sum(extra) - sum(plain)) / len(extra) > 0
    assert "extra_prompt_tokens_per_answer" not in cost["base"]

    from rich.console import Console

    from cai.cli.eval import report_table

    console = Console(width=400, record=True)
    console.print(report_table(s.report))
    text = console.export_text()
    assert "cost" in text and "19 steps, 240 s (190 GPU-s), 0.4k tok gen, 1.4k judged" in text
    assert "prompt tok/answer" in text


def test_the_cost_of_real_revise_and_label_folders_matches_their_records(tmp_path):
    """revise and label run on scripted engines, then traced: the figures are read from what the
    stages really write (the field names the reader assumes are the writers')."""
    from cai.label import LabelConfig, run_label
    from cai.revise import ReviseConfig, run_revise

    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": f"r{i}", "prompt": f"question {i}"} for i in range(3)])
    answer = lambda prompt, i: f"a good answer of {len(prompt)} chars"  # noqa: E731  (6 words, each text its own)
    rev = run_revise(ReviseConfig(prompts=prompts, out=tmp_path / "revise", rounds=1, max_tokens=20),
                     FakeEngine(respond=answer), progress=False)
    lab = run_label(LabelConfig(input=tmp_path / "revise", out=tmp_path / "label"),
                    judge_engine=FakeEngine(score=prefers_longer))
    stages, _ = trace(str(tmp_path / "label"))
    by = {s["stage"]: s for s in stages}
    summary = json.loads((tmp_path / "revise" / "summary.json").read_text())
    assert summary["device"] in ("cpu", "cuda") and json.loads((tmp_path / "label" / "summary.json").read_text())[
        "device"] == summary["device"]
    assert by["revise"]["tokens_generated"] == rev.completion_tokens == 3 * 3 * 6  # response, critique, revision
    assert by["revise"]["seconds"] == pytest.approx(rev.seconds) and by["revise"]["device"] == summary["device"]
    assert by["label"]["tokens_judged"] == lab.prompt_tokens > 0
    assert by["label"]["seconds"] == pytest.approx(lab.seconds)
