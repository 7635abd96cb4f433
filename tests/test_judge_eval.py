"""`cai judge eval`: the statistics, a fake judge end to end, and the real judge on a few pairs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import DATA
from helpers import shown
from typer.testing import CliRunner

from cai.engine.fake import FakeEngine
from cai.errors import InputError
from cai.judge_eval import JudgeEvalConfig, bootstrap_mean, evaluate, run_judge_eval, wilson
from cai.schema import EvalJudgment, Verdict

REPO = Path(__file__).resolve().parent.parent
CONSTITUTION = REPO / "principles.yaml"
HH = DATA / "hh-rlhf-harmless-dev" / "pairs.jsonl"


def shorter_judge(prompt: str, option: str) -> float:
    a, b = shown(prompt)
    return -len(a if option == "A" else b) / 10


@pytest.mark.parametrize("k, n, lo, hi", [
    (8, 10, 0.4902, 0.9433),
    (0, 10, 0.0, 0.2775),
    (50, 100, 0.4038, 0.5962),
])
def test_wilson_interval(k, n, lo, hi):
    assert wilson(k, n) == (pytest.approx(lo, abs=1e-4), pytest.approx(hi, abs=1e-4))


def test_bootstrap_interval_brackets_the_mean():
    values = [0.2, 0.9, 0.6, 0.7, 0.4, 0.55, 0.8, 0.3]
    lo, hi = bootstrap_mean(values, 2000, seed=0)
    assert lo < sum(values) / len(values) < hi and 0.2 <= lo and hi <= 0.9
    assert bootstrap_mean(values, 2000, seed=0) == (lo, hi)


def row(p, chosen_chars, rejected_chars, agree=True, principle="crime"):
    verdict = Verdict(status="judged", p=p, agree=agree, p_xy=(p,), p_yx=(1 - p,), logprobs=((-1.0, -1.0, -1.0, -1.0),),
                      rationales=(), principles=(principle,), principle_hashes=("h",), prompt_tokens=10, detail="")
    return EvalJudgment(id="x", verdict=verdict, chosen_chars=chosen_chars, rejected_chars=rejected_chars,
                        judge_model="judge", judge_fingerprint=None, constitution_hash="c", key="k")


def test_evaluate_on_hand_made_rows():
    rows = [
        row(0.9, 10, 50),                # judge right, picks the shorter (chosen)
        row(0.7, 50, 10),                # judge right, picks the longer (chosen)
        row(0.4, 10, 50, agree=False),   # judge wrong, picks the longer (rejected)
        row(0.5, 20, 20),                # no preference, equal lengths
    ]
    r = evaluate(rows, bootstrap_samples=200)
    assert r["pairs"] == 4
    assert r["agreement"]["rate"] == pytest.approx((1 + 1 + 0 + 0.5) / 4)
    assert r["soft_agreement"]["mean_p_human_choice"] == pytest.approx(0.625)
    assert r["position_consistency"]["rate"] == pytest.approx(0.75)
    # Length: 3 pairs differ; the judge picked the longer in 2 of them, humans chose the longer in 1.
    assert r["length"]["judge_picks_longer"]["rate"] == pytest.approx(2 / 3)
    assert r["length"]["humans_pick_longer"]["rate"] == pytest.approx(1 / 3)
    # Shorter wins: right, wrong, right, half.
    assert r["length_baseline"]["shorter_wins"]["rate"] == pytest.approx(2.5 / 4)
    assert r["length_baseline"]["longer_wins"]["rate"] == pytest.approx(1.5 / 4)
    bins = {tuple(b["bin"]): b for b in r["calibration"]["bins"]}
    assert bins[(0.5, 0.55)]["n"] == 1 and bins[(0.5, 0.55)]["agreement"] == 0.5
    assert bins[(0.6, 0.7)]["n"] == 1 and bins[(0.6, 0.7)]["agreement"] == 0.0  # p=0.4: confident 0.6, wrong
    assert bins[(0.7, 0.8)]["agreement"] == 1.0 and bins[(0.9, 1.0)]["n"] == 1
    assert sum(b["n"] for b in r["calibration"]["bins"]) == 4
    assert r["calibration"]["ece"] == pytest.approx((0 + 0.6 + 0.3 + 0.1) / 4)


def write_pairs(path: Path, n: int) -> Path:
    rows = [{"id": f"h{i}", "prompt": f"\n\nHuman: question {i}?\n\nAssistant:",
             "chosen": " short" if i % 3 else " a much longer reply here",
             "rejected": " a much longer reply here" if i % 3 else " short"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_fake_judge_end_to_end_resumes_and_extends(tmp_path):
    pairs = write_pairs(tmp_path / "pairs.jsonl", 9)
    engine = FakeEngine(score=shorter_judge)
    cfg = JudgeEvalConfig(pairs=pairs, constitution=CONSTITUTION, limit=6, out=tmp_path / "ev")
    r = run_judge_eval(cfg, engine=engine)
    assert r["pairs"] == 6 and engine.calls == [("option_logprobs", 12)]
    # The judge always picks the shorter reply, so it matches the shorter-wins baseline exactly.
    assert r["agreement"]["rate"] == pytest.approx(r["length_baseline"]["shorter_wins"]["rate"]) == 4 / 6
    assert r["length"]["judge_picks_longer"]["rate"] == 0.0
    assert r["position_consistency"]["rate"] == 1.0
    assert json.loads((tmp_path / "ev" / "report.json").read_text())["pairs"] == 6
    # A larger --limit resumes the folder and judges only the new pairs.
    r = run_judge_eval(JudgeEvalConfig(pairs=pairs, constitution=CONSTITUTION, out=tmp_path / "ev"), engine=engine)
    assert r["pairs"] == 9 and engine.calls[1:] == [("option_logprobs", 6)]


def test_edited_pairs_are_judged_again_and_counted(tmp_path):
    pairs = write_pairs(tmp_path / "pairs.jsonl", 4)
    cfg = JudgeEvalConfig(pairs=pairs, constitution=CONSTITUTION, out=tmp_path / "ev")
    run_judge_eval(cfg, engine=FakeEngine(score=shorter_judge))
    rows = [json.loads(x) for x in pairs.read_text().splitlines()]
    rows[1]["chosen"] = " a new and much longer reply than before"  # same pair id, another text
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    engine = FakeEngine(score=shorter_judge)
    r = run_judge_eval(cfg, engine=engine)
    assert r["run"]["stale"] == r["run"]["judged"] == 1 and engine.calls == [("option_logprobs", 2)]
    stored = [json.loads(x) for x in (tmp_path / "ev" / "judgments.jsonl").read_text().splitlines()]
    assert len(stored) == 4 and len({s["id"] for s in stored}) == 4
    assert run_judge_eval(cfg, engine=FakeEngine(score=shorter_judge))["run"]["stale"] == 0


def test_a_run_folder_in_use_is_refused(tmp_path):
    from cai.records import RunLockedError, lock_run_dir

    cfg = JudgeEvalConfig(pairs=write_pairs(tmp_path / "pairs.jsonl", 2), constitution=CONSTITUTION,
                          out=tmp_path / "ev")
    with lock_run_dir(tmp_path / "ev"), pytest.raises(RunLockedError, match="in use by another cai process"):
        run_judge_eval(cfg, engine=FakeEngine(score=shorter_judge))


def test_pairs_without_labels_are_refused(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "q", "responses": ["a", "b"]}) + "\n")
    with pytest.raises(InputError, match="no chosen/rejected label"):
        run_judge_eval(JudgeEvalConfig(pairs=path, constitution=CONSTITUTION), engine=FakeEngine())


def test_cli_is_registered():
    from cai.cli import app

    result = CliRunner().invoke(app, ["judge", "eval", "--help"])
    assert result.exit_code == 0 and "--pairs" in result.output and "--limit" in result.output


@pytest.mark.engine
def test_real_judge_eval_on_a_few_dev_pairs(vllm_engine, tmp_path):
    cfg = JudgeEvalConfig(pairs=HH, constitution=CONSTITUTION, limit=3, bootstrap_samples=200)
    r = run_judge_eval(cfg, engine=vllm_engine)
    assert r["pairs"] + r["skipped"]["too_long"] + r["skipped"]["identical"] == 3
    assert 0.0 <= r["agreement"]["rate"] <= 1.0 and r["judge_model"] == "default"
    lo, hi = r["agreement"]["ci95"]
    assert lo <= r["agreement"]["rate"] <= hi
