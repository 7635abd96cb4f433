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


def test_a_failed_conversion_keeps_the_original_message(monkeypatch, tmp_path):
    monkeypatch.setenv("CAI_CACHE_DIR", str(tmp_path))

    def broken(gguf, out):
        raise RuntimeError("tensor 'blk.0.attn_q.weight' has an unknown quantization type 99")

    monkeypatch.setattr(models, "_convert_gguf", broken)
    with pytest.raises(ModelNotFoundError, match=r"converting the embedded model .* failed: RuntimeError: tensor "
                                                  r"'blk.0.attn_q.weight' has an unknown quantization type 99"):
        models.prepare_default()
    assert list((tmp_path / "models").iterdir()) == []  # no half-made folder left


def test_a_failed_hub_download_keeps_its_message(monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")

    def refuse(*a, **kw):
        raise OSError("401 Client Error: gated repo, ask for access")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    with pytest.raises(ModelNotFoundError, match="could not be fetched \\(OSError: 401 Client Error: gated repo"):
        models.resolve("someorg/gated-model")


def test_fingerprint_sees_config_tokenizer_template_and_weights_but_not_other_files(tmp_path):
    (tmp_path / "config.json").write_text('{"a": 1}')
    (tmp_path / "chat_template.jinja").write_text("{{ messages }}")
    (tmp_path / "model.safetensors").write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    base = models.fingerprint(tmp_path)
    (tmp_path / "README.md").write_text("notes")
    (tmp_path / ".cai.lock").write_text("123")
    assert models.fingerprint(tmp_path) == base
    changes = [("config.json", b'{"a": 2}'), ("chat_template.jinja", b"{{ messages|upper }}"),
               ("tokenizer.json", b"{}")]
    for name, data in changes:
        old = (tmp_path / name).read_bytes() if (tmp_path / name).exists() else None
        (tmp_path / name).write_bytes(data)
        assert models.fingerprint(tmp_path) != base, name
        (tmp_path / name).unlink() if old is None else (tmp_path / name).write_bytes(old)
    assert models.fingerprint(tmp_path) == base
    # Weights trained in place: same size and header, other bytes in the middle of the file.
    w = bytearray((tmp_path / "model.safetensors").read_bytes())
    w[len(w) // 2 : len(w) // 2 + 70000] = bytes(70000)
    (tmp_path / "model.safetensors").write_bytes(bytes(w))
    assert models.fingerprint(tmp_path) != base
    assert models.fingerprint(tmp_path / "nope") is None


def test_make_engine_stamps_the_fingerprint(monkeypatch, tmp_path):
    from cai.config import EngineConfig
    from cai.engine import make_engine
    from cai.engine.fake import FakeEngine
    from cai.engine.hf import HFEngine

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "tokenizer.json").write_text("{}")  # enough for models.check_folder
    (tmp_path / "pytorch_model.bin").write_bytes(b"\0" * 64)
    monkeypatch.setattr(HFEngine, "load", classmethod(lambda cls, path, cfg, model_name=None: FakeEngine()))
    engine = make_engine(EngineConfig(backend="hf", model=str(tmp_path)))
    assert engine.fingerprint == models.fingerprint(tmp_path)
    assert models.identity(EngineConfig(backend="hf", model=str(tmp_path)), engine)["fingerprint"] == \
        models.identity(EngineConfig(backend="hf", model=str(tmp_path)))["fingerprint"]


@pytest.mark.parametrize("name", ["consolidated.pth", "model.ckpt", "pytorch_model.bin", "model.safetensors"])
def test_fingerprint_sees_every_weight_format_a_backend_loads(tmp_path, name):
    # Keys know a fingerprinted model by its content alone (cai.models.key_identity), so weights
    # the fingerprint skipped would make two fine-tunes with one config.json look the same.
    (tmp_path / "config.json").write_text('{"a": 1}')
    (tmp_path / name).write_bytes(b"\0" * 4096)
    base = models.fingerprint(tmp_path)
    (tmp_path / name).write_bytes(b"\1" * 4096)
    assert models.fingerprint(tmp_path) != base


def test_a_sharded_folder_missing_a_shard_is_refused_naming_it(tmp_path):
    import json

    import torch
    from safetensors.torch import save_file

    from cai.errors import ModelNotFoundError
    from cai.models import check_folder

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "tokenizer.json").write_text("{}")
    save_file({"a": torch.zeros(2)}, str(tmp_path / "model-00001-of-00002.safetensors"))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(ModelNotFoundError, match=r"model.safetensors.index.json: 1 of the 2 weight shards listed "
                                                 r"in model.safetensors.index.json are missing: model-00002-of-00002"):
        check_folder(tmp_path)
    save_file({"b": torch.zeros(2)}, str(tmp_path / "model-00002-of-00002.safetensors"))
    check_folder(tmp_path)
