"""Resolving and preparing models."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cai import models
from cai.errors import ModelNotFoundError


def test_missing_hub_model_offline_names_what_was_looked_for(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match=r"model 'someorg/no-such-model' was looked for as a local folder "
                       r"and as a hub id: HF_HUB_OFFLINE=1 is set[\s\S]*cai models prepare default"):
        models.resolve("someorg/no-such-model")


def test_missing_local_folder_and_non_model_folder(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        models.resolve(str(tmp_path / "nope"))
    with pytest.raises(ModelNotFoundError, match=r"is not a Hugging Face model folder \(no config.json\)"):
        models.resolve(str(tmp_path))


def test_local_folder_resolves_to_itself(default_model_path):
    assert models.resolve(default_model_path) == default_model_path
    assert models.is_prepared(models.cache_dir() / models.DEFAULT_MODEL_DIRNAME)


def test_unprepared_default_without_prepare_says_how(monkeypatch, tmp_path):
    monkeypatch.setenv("CAI_CACHE_DIR", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="run: cai models prepare default"):
        models.resolve("default", prepare=False)


def test_two_processes_preparing_at_once_leave_one_complete_model(tmp_path):
    """Both processes convert into private temporary folders and rename; the loser keeps the
    winner's copy. A leftover temporary folder (a crash half-way) is never taken for a model."""
    cache = tmp_path / "cache"
    (cache / "models").mkdir(parents=True)
    crashed = cache / "models" / ".SmolLM2-135M-Instruct.tmp-crashed"
    crashed.mkdir()
    (crashed / "config.json").write_text("{}")
    code = "from cai import models; print(models.prepare_default())"
    env = {"CAI_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    final = cache / "models" / models.DEFAULT_MODEL_DIRNAME
    assert {o[0].strip() for o in outs} == {str(final)}
    assert models.is_prepared(final)
    assert {p.name for p in final.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json",
                                                  "chat_template.jinja", models.MARKER}
    # Only the crashed leftover remains beside it; no half-written copy from the two runs.
    assert sorted(p.name for p in (cache / "models").iterdir()) == [crashed.name, models.DEFAULT_MODEL_DIRNAME]
