"""`cai sft`: assistant-only labels through the chat template, bad data, a few real steps on
the default model, and the CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import make_tiny_model, write_jsonl

from cai.errors import InputError, MultiError
from cai.sft import (
    IGNORE,
    SFTConfig,
    collate,
    load_examples,
    load_tokenizer,
    mean_loss,
    tokenize_conversation,
    train_sft,
)

CONV = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"},
        {"role": "user", "content": "again"}, {"role": "assistant", "content": "sure thing"}]


pytestmark = pytest.mark.usefixtures("one_thread")  # one intra-op thread (conftest.py says why)


@pytest.fixture(scope="module")
def tok(default_model_path):
    return load_tokenizer(default_model_path)


def trained_text(tok, ex) -> str:
    return tok.decode([t for t, lab in zip(ex["input_ids"], ex["labels"], strict=True) if lab != IGNORE])


@pytest.mark.parametrize("turns, expected", [
    ("last", "sure thing<|im_end|>"),
    ("all", "hello there<|im_end|>sure thing<|im_end|>"),
])
def test_loss_is_on_assistant_tokens_only(tok, turns, expected):
    ex = tokenize_conversation(tok, CONV, max_length=200, turns=turns)
    assert trained_text(tok, ex) == expected
    # labels are the input ids themselves where trained (the model shifts them)
    assert all(lab in (IGNORE, t) for t, lab in zip(ex["input_ids"], ex["labels"], strict=True))
    assert tok.decode(ex["input_ids"]).startswith("<|im_start|>system\n")  # the template ran


def test_truncation_keeps_the_start_and_drops_rows_without_trained_tokens(tok, tmp_path):
    ex = tokenize_conversation(tok, CONV, max_length=40)
    assert len(ex["input_ids"]) == 40 and all(lab == IGNORE for lab in ex["labels"])
    f = write_jsonl(tmp_path / "d.jsonl", [{"messages": CONV}, {"messages": CONV[:2]}])
    cfg = SFTConfig(out=str(tmp_path / "o"), data=str(f), max_length=40)
    examples, dropped = load_examples(str(f), tok, cfg)
    assert len(examples) == 1 and dropped == 1


def test_collate_pads_right_and_counts_trained_tokens(tok):
    a = tokenize_conversation(tok, CONV, 200)
    b = tokenize_conversation(tok, CONV[:2], 200)
    batch = collate([a, b], tok.pad_token_id)
    assert batch["input_ids"].shape == (2, len(a["input_ids"]))
    assert batch["attention_mask"][1].sum() == len(b["input_ids"])
    assert (batch["labels"][1, len(b["input_ids"]):] == IGNORE).all()
    assert batch["n"] == sum(lab != IGNORE for lab in a["labels"] + b["labels"])


def test_bad_rows_are_reported_with_their_lines(tok, tmp_path):
    cfg = SFTConfig(out=str(tmp_path / "o"), data="x")
    f = write_jsonl(tmp_path / "cols.jsonl", [{"prompt": "hi", "completion": "yo"}])
    with pytest.raises(InputError, match=r"cols.jsonl:1: missing column\(s\) 'messages' "
                                         r"\(it has: prompt, completion\)"):
        load_examples(str(f), tok, cfg)

    f = write_jsonl(tmp_path / "bad.jsonl", [
        {"id": "a", "messages": CONV},
        {"id": "b", "messages": CONV[:3]},
        {"id": "c", "messages": "hello"},
    ])
    with pytest.raises(MultiError) as e:
        load_examples(str(f), tok, cfg)
    text = str(e.value)
    assert f"{f}:2, record 'b': the last turn must be the assistant's answer, got role 'user'" in text
    assert f"{f}:3, record 'c': `messages` must be a list of at least 2 {{role, content}} turns" in text


@pytest.fixture(scope="module")
def real_run(default_model_path, tok, tmp_path_factory):
    """4 real steps on the default model (max_length 64, batch 2); (cfg, loss before)."""
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("sft_real")
    data = write_jsonl(root / "d.jsonl", [
        {"messages": [{"role": "user", "content": "Name a color."},
                      {"role": "assistant", "content": "Vermilion, the color of cinnabar."}]},
        {"messages": [{"role": "user", "content": "Say something kind."},
                      {"role": "assistant", "content": "You are doing better than you think."}]},
    ])
    cfg = SFTConfig(out=str(root / "sft"), data=str(data), model="default", batch_size=2, max_steps=4,
                    learning_rate=5e-5, warmup_ratio=0.0, lr_scheduler="constant", max_length=64,
                    checkpoint_every=0, device="cpu")
    examples, _ = load_examples(cfg.data, tok, cfg)
    before_model = AutoModelForCausalLM.from_pretrained(default_model_path, dtype=torch.float32)
    before = mean_loss(before_model, examples, tok.pad_token_id)
    del before_model
    assert train_sft(cfg, progress=False)["steps"] == 4
    return cfg, examples, before


def test_a_few_real_steps_on_the_default_model_change_weights_and_lower_the_loss(
        default_model_path, tok, real_run):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    cfg, examples, before = real_run
    # a standard HF folder: transformers loads it, with the tokenizer and its chat template
    after_model = AutoModelForCausalLM.from_pretrained(cfg.out, dtype=torch.float32)
    assert load_tokenizer(cfg.out).chat_template
    after = mean_loss(after_model, examples, tok.pad_token_id)
    assert after < before - 0.1, (before, after)

    old, new = load_file(f"{default_model_path}/model.safetensors"), load_file(f"{cfg.out}/model.safetensors")
    changed = [k for k in old if not torch.equal(old[k], new[k])]
    assert len(changed) > len(old) // 2
    saved = yaml.safe_load((Path(cfg.out) / "config.yaml").read_text())
    assert saved["learning_rate"] == 5e-5 and saved["assistant_turns"] == "last"


VLLM_CHECK = """
import sys
from cai.config import EngineConfig
from cai.engine.base import Sampling
from cai.engine.vllm import VLLMEngine
engine = VLLMEngine(sys.argv[1], EngineConfig(backend="vllm", model=sys.argv[1], dtype="float32",
                                              max_model_len=512), model_name="sft")
out = engine.generate([[{"role": "user", "content": "Name a color."}]], Sampling(max_tokens=12, temperature=0.0))
print("TEXT:" + out[0].text)
engine.close()
"""


@pytest.mark.engine
def test_vllm_serves_the_fine_tuned_folder(real_run):
    """vLLM loads the output as-is and generates from the *trained* weights (the base model does
    not answer "Vermilion"). In a subprocess: vLLM pins the CPU threads of its process."""
    import os
    import subprocess

    cfg, _, _ = real_run
    env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_NO_USAGE_STATS="1", VLLM_LOGGING_LEVEL="WARNING")
    proc = subprocess.run([sys.executable, "-c", VLLM_CHECK, cfg.out], capture_output=True, text=True,
                          env=env, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = next(line for line in proc.stdout.splitlines() if line.startswith("TEXT:"))
    assert "Vermilion" in text, text


def test_cli_flags_override_the_config_file(default_model_path, tmp_path):
    from typer.testing import CliRunner

    from cai.cli import app

    tiny = make_tiny_model(tmp_path / "tiny", default_model_path)
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": CONV}] * 4)
    cfg_file = tmp_path / "sft.yaml"
    cfg_file.write_text(yaml.safe_dump({"model": tiny, "data": str(data), "max_steps": 5, "batch_size": 2,
                                        "max_length": 64, "learning_rate": 1e-4}))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["sft", "--config", str(cfg_file), "--max-steps", "2", "--out", str(out),
                                      "--quiet", "--device", "cpu"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["max_steps"] == 2 and saved["learning_rate"] == 1e-4 and saved["batch_size"] == 2
    assert json.loads((out / "train_done.json").read_text())["steps"] == 2

    bad = CliRunner().invoke(app, ["sft", "--config", str(cfg_file), "--out", str(out), "--bach-size", "2"])
    assert bad.exit_code != 0 and "No such option: --bach-size" in bad.output
