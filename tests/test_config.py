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
