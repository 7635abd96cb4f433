"""The judge over HTTP (a real vLLM OpenAI-compatible server) against the in-process engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import DATA

from cai.config import EngineConfig
from cai.constitution import load_constitution
from cai.judge import JudgeOptions, judge_pairs
from cai.label import LabelConfig, run_label
from cai.label_inputs import form_pairs, read_response_groups
from cai.records import read_jsonl

REPO = Path(__file__).resolve().parent.parent
HH = DATA / "hh-rlhf-harmless-dev" / "pairs.jsonl"

pytestmark = [pytest.mark.engine, pytest.mark.server]


def short_pairs(tmp_path: Path, n: int) -> Path:
    """The n shortest dev pairs (small prompts keep the server test quick)."""
    rows = [json.loads(x) for x in HH.read_text().splitlines()]
    rows = [r for r in rows if r["chosen"].strip() and r["rejected"].strip() and r["chosen"] != r["rejected"]]
    rows.sort(key=lambda r: len(r["prompt"]) + len(r["chosen"]) + len(r["rejected"]))
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:n]))
    return path


def test_http_judge_log_probs_equal_in_process(vllm_server, vllm_engine, default_model_path, tmp_path):
    from cai.engine.http import HTTPEngine

    cfg = EngineConfig(backend="http", model="default", base_url=vllm_server, served_model_name="default")
    http = HTTPEngine.load(default_model_path, cfg, model_name="default")
    constitution = load_constitution(REPO / "principles.yaml")
    groups, _ = read_response_groups(short_pairs(tmp_path, 3))
    pairs = [p for p, _, _, _ in form_pairs(groups)[0]]
    assert len(pairs) == 3
    local = judge_pairs(vllm_engine, constitution, pairs, JudgeOptions(), seed=0)
    remote = judge_pairs(http, constitution, pairs, JudgeOptions(), seed=0)
    for a, b in zip(local, remote, strict=True):
        assert a.principles == b.principles and a.prompt_tokens == b.prompt_tokens
        for la, lb in zip(a.logprobs[0], b.logprobs[0], strict=True):
            assert la == pytest.approx(lb, abs=1e-3)
        assert a.p == pytest.approx(b.p, abs=1e-3)


def test_label_stage_with_an_http_judge(vllm_server, vllm_engine, tmp_path):
    src = short_pairs(tmp_path, 2)
    judge = EngineConfig(backend="http", model="default", base_url=vllm_server, served_model_name="default")
    s = run_label(LabelConfig(input=src, out=tmp_path / "http", constitution=REPO / "principles.yaml",
                              judge=judge, tie_threshold=0.0))
    assert s.judged == 2
    local = LabelConfig(input=src, out=tmp_path / "local", constitution=REPO / "principles.yaml", tie_threshold=0.0)
    run_label(local, judge_engine=vllm_engine)
    remote_j = {r["id"]: r["p"] for r in read_jsonl(tmp_path / "http" / "judgments.jsonl")}
    local_j = {r["id"]: r["p"] for r in read_jsonl(tmp_path / "local" / "judgments.jsonl")}
    assert remote_j.keys() == local_j.keys()
    for k, p in local_j.items():
        assert remote_j[k] == pytest.approx(p, abs=1e-3)
