"""Run folders of every kind `cai report` reads, made by the stages themselves on scripted engines
(eval, revise, label, judge eval) or written as the training stages write them (metrics.jsonl,
train_done.json), for tests/test_report*.py. Texts from the runs carry HOSTILE, markup that would
log to the console if the page let it through."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import shown, write_jsonl

from cai.engine.fake import FakeEngine
from cai.eval.run import EvalConfig, run_eval
from cai.judge_eval import JudgeEvalConfig, run_judge_eval
from cai.label import LabelConfig, run_label
from cai.revise import ReviseConfig, run_revise

HOSTILE = '<script>console.error("injected")</script><img src="nowhere.png" onerror="console.error(1)">'
PPO_NAME = "ppo<svg onload=console.error(2)>"
"""A folder name is data too."""
CRITIQUE_CUE = "Reply with a short critique only"
REVISION_CUE = "Reply with the rewritten response only"
HELPFUL = [f"helpful question number {k}?" for k in range(1, 5)]


def _revise_respond(prompt: str, i: int) -> str:
    turn = prompt.rsplit("<user>", 1)[1]
    if CRITIQUE_CUE in turn:
        return "The answer could say more about safety."
    if REVISION_CUE in turn:
        return f"A revised and longer answer, round {prompt.count('<assistant>')}, with a safety note."
    return f"First answer {HOSTILE}"


def _policy(kind: str):
    def respond(prompt: str, i: int) -> str:
        if kind == "refuser":
            return "I can't help with that."
        if kind == "hostile":
            return f"Sure. {HOSTILE}"
        return "Here is a complete and useful answer for you." + (" more" * 3 if kind == "long" else "")
    return respond


def prefers_longer(prompt: str, option: str) -> float:
    a, b = shown(prompt)
    mine, other = (a, b) if option == "A" else (b, a)
    return 0.0 if len(mine.split()) >= len(other.split()) else -10.0


def make_eval(root: Path, *, extras: bool = True) -> Path:
    suites = []
    for name, prompts in (("harmful", ["harmful question number 1?", "harmful question number 2?"]),
                          ("benign-risky", ["benign question number 1?", "benign question number 2?"]),
                          ("helpful", HELPFUL)):
        path = write_jsonl(root / f"{name}.jsonl", [{"id": f"{name}-{k}", "prompt": p} for k, p in enumerate(prompts)])
        suites.append(f"{name}={path}")
    cfg = EvalConfig(policies=("base=fake", "refuser=fake", "long=fake", "hostile=fake"), baseline="base",
                     refusal="patterns",
                     out=root / "eval", suites=tuple(suites), default_suites=False, max_tokens=16, resamples=50)
    run_eval(cfg, engines={k: FakeEngine(respond=_policy(k)) for k in ("base", "refuser", "long", "hostile")},
             judge_engine=FakeEngine(score=prefers_longer))
    report = json.loads((root / "eval" / "report.json").read_text())
    if not extras:  # a report.json without the sections a reader must do without (an older cai eval's)
        report.pop("cost", None)
        report.pop("reward_hacking", None)
    else:  # what `cai eval --hacking` and the cost tracing add to report.json (docs/eval.md)
        report["cost"] = {p: _cost(i) for i, p in enumerate(report["results"])}
        report["reward_hacking"] = {
            "ppo": {"run": "runs/ppo", "suites": ["helpful"], "reward_model": {"folder": "runs/rm", "fingerprint": "f"},
                    "steps": [{"step": s, "policy": f"ppo-step-{s}", "model": "m", "n": 4,
                               "rm_score": _estimate(r, 0.1), "win_rate": _estimate(w, 0.15)}
                              for s, r, w in ((0, -0.5, 0.5), (2, 0.4, 0.62), (4, 1.1, 0.55), (6, 1.6, 0.41))],
                    "verdict": {"first_step": 0, "last_step": 6, "hacking": True,
                                "rule": "hacking: the RM score rose and the win rate fell",
                                "rm_score_rose": True, "win_rate_fell": True,
                                "rm_score_change": _estimate(2.1, 0.3), "win_rate_change": _estimate(-0.09, 0.05)}},
            "by-judge": {"run": "runs/ppo-judge", "suites": ["helpful"], "reward_model": None,
                         "error": "the run was trained on the judge's score (reward: judge): there is no reward model"}}
    (root / "eval" / "report.json").write_text(json.dumps(report))
    return root / "eval"


def _estimate(value: float, half: float) -> dict:
    return {"value": value, "low": value - half, "high": value + half, "n": 4, "method": "bootstrap over prompts"}


def _cost(i: int) -> dict:
    stages = [{"stage": "sft", "folder": f"runs/sft-{i}", "tokens_generated": 100 * i, "tokens_judged": 50,
               "training_steps": 10 * i, "seconds": 2.5 * i + 0.0123456789, "device": "cpu", "gpu_seconds": None,
               "notes": []}]
    total = {"tokens_generated": 100 * i, "tokens_judged": 50, "training_steps": 10 * i, "seconds": 2.5 * i,
             "gpu_seconds": None}
    return {"model": "fake", "recipe": None, "stages": stages if i else [], "total": total,
            "notes": [] if i else ["fake: a base model (no training cost)"], "prompt_tokens_per_answer": 12.0}


def make_revise(root: Path) -> Path:
    prompts = write_jsonl(root / "revise-prompts.jsonl", [{"id": f"r{k}", "prompt": p} for k, p in enumerate(HELPFUL)])
    run_revise(ReviseConfig(prompts=prompts, out=root / "revise", rounds=2), FakeEngine(respond=_revise_respond),
               progress=False)
    return root / "revise"


def make_label(root: Path, revise: Path) -> Path:
    def longer(prompt: str, option: str) -> float:
        a, b = shown(prompt)
        return float(len((a if option == "A" else b).split()))
    run_label(LabelConfig(input=revise, out=root / "label"), judge_engine=FakeEngine(score=longer))
    return root / "label"


def make_judge_eval(root: Path) -> Path:
    rows = [{"id": f"h{i}", "prompt": f"\n\nHuman: question {i}?\n\nAssistant:",
             "chosen": " short" if i % 3 else " a much longer reply here",
             "rejected": " a much longer reply here" if i % 3 else " short"} for i in range(9)]
    pairs = write_jsonl(root / "pairs.jsonl", rows)

    def shorter(prompt: str, option: str) -> float:
        a, b = shown(prompt)
        return -len(a if option == "A" else b) / 10
    run_judge_eval(JudgeEvalConfig(pairs=pairs, out=root / "judge-eval"), engine=FakeEngine(score=shorter))
    report = json.loads((root / "judge-eval" / "report.json").read_text())
    report["judge_model"] = HOSTILE
    (root / "judge-eval" / "report.json").write_text(json.dumps(report))
    return root / "judge-eval"


def make_ppo(root: Path) -> Path:
    out = root / PPO_NAME
    out.mkdir()
    rows = [{"step": 0, "eval/reward": -0.5, "eval/score": -0.5, "eval/kl": 0.0, "eval/response_length": 16.0}]
    for s in range(1, 7):
        rows.append({"step": s, "objective/reward": -0.4 + 0.2 * s, "objective/score": -0.3 + 0.2 * s,
                     "objective/kl": 0.3 * s, "objective/kl_coef": 0.05, "objective/entropy": 1.0 - 0.05 * s,
                     "response/length": 14.0 + s, "losses/policy": 0.01})
        if s % 3 == 0:
            rows.append({"step": s, "eval/reward": -0.5 + 0.25 * s, "eval/kl": 0.2 * s,
                         "eval/response_length": 15.0 + s})
    rows.append({"step": 3, "objective/reward": 0.25, "objective/kl": 0.9, "response/length": 17.0,
                 "objective/entropy": 0.85})  # a resumed run logs step 3 again: this row counts
    write_jsonl(out / "metrics.jsonl", rows)
    (out / "train_done.json").write_text(json.dumps({"stage": "ppo", "steps": 6, "seconds": 42.0,
                                                     "eval_reward_start": -0.5, "eval_reward_end": 1.0}))
    return out


def make_training(root: Path) -> Path:
    out = root / "rm"
    out.mkdir()
    write_jsonl(out / "metrics.jsonl", [{"step": s, "train/loss": 0.7 / s, "train/accuracy": min(1.0, 0.4 + 0.2 * s)}
                                        for s in range(1, 5)])
    (out / "train_done.json").write_text(json.dumps({"stage": f"rm {HOSTILE}", "steps": 4, "train_loss": 0.175}))
    return out


def make_all(root: Path) -> dict[str, Path]:
    """One folder of each kind under `root`, by kind."""
    revise = make_revise(root)
    return {"eval": make_eval(root), "revise": revise, "label": make_label(root, revise),
            "judge_eval": make_judge_eval(root), "ppo": make_ppo(root), "training": make_training(root)}
