"""Layered config: defaults < YAML < flags, strict keys and types."""

from __future__ import annotations

from pathlib import Path

import pytest

from cai import config
from cai.errors import ConfigError
from cai.generate import GenerateConfig


def test_yaml_then_flags_override_and_engine_merges_field_by_field(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("prompts: p.jsonl\nout: o.jsonl\nmax_tokens: 99\nengine:\n  backend: hf\n  dtype: float32\n")
    cfg = config.load(GenerateConfig, y, {"max_tokens": 7, "temperature": None, "engine": {"dtype": "bfloat16"}})
    assert cfg.max_tokens == 7 and cfg.temperature == 0.7
    assert cfg.engine.backend == "hf" and cfg.engine.dtype == "bfloat16"
    assert cfg.prompts == Path("p.jsonl")


def test_unknown_key_gets_did_you_mean(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("prompts: p\nout: o\nmax_token: 5\n")
    with pytest.raises(ConfigError, match=r"unknown key 'max_token'[\s\S]*did you mean 'max_tokens'"):
        config.load(GenerateConfig, y)


def test_wrong_type_names_the_field(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("prompts: p\nout: o\nmax_tokens: lots\n")
    with pytest.raises(ConfigError, match=r"max_tokens: expected an integer, got 'lots'"):
        config.load(GenerateConfig, y)


def test_bad_yaml_is_located(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("prompts: p\nout: [o\n")
    with pytest.raises(ConfigError, match=rf"{y}:\d+:\d+: invalid YAML"):
        config.load(GenerateConfig, y)


def test_saved_config_loads_back(tmp_path):
    cfg = config.load(GenerateConfig, None, {"prompts": "p", "out": "o", "seed": 3})
    config.save(cfg, tmp_path / "c.yaml")
    assert config.load(GenerateConfig, tmp_path / "c.yaml") == cfg


def test_a_partial_section_fills_in_from_the_stages_default_for_it(tmp_path):
    # PPO's rollout engine defaults to the hf backend; `rollout_engine: {dtype: ...}` in a file (or
    # one --rollout-* flag) must keep that, not fall back to EngineConfig's vllm.
    from cai.ppo import PPOConfig

    y = tmp_path / "ppo.yaml"
    y.write_text("prompts: p\nout: o\nreward_model: rm\nrollout_engine:\n  dtype: float32\n")
    cfg = config.load(PPOConfig, y, {"rollout_engine": {"max_model_len": 1024}})
    assert (cfg.rollout_engine.backend, cfg.rollout_engine.dtype, cfg.rollout_engine.max_model_len) == \
        ("hf", "float32", 1024)
    cfg = config.load(PPOConfig, None, {"prompts": "p", "out": "o", "reward_model": "rm",
                                        "rollout_engine": {"backend": "vllm"}})
    assert cfg.rollout_engine.backend == "vllm" and cfg.rollout_engine.dtype == "auto"


def test_field_docs_are_the_docstrings_under_the_fields():
    docs = config.field_docs(GenerateConfig)
    assert docs["max_tokens"] == "New tokens per response."
    assert docs["engine"] == "Model and backend."
    assert config.field_docs(config.EngineConfig)["enforce_eager"].startswith("Skip vLLM's graph compilation: ready")
