"""Helpers the test modules share (fixtures are in conftest.py). Test modules import them as
`from helpers import ...`: pytest puts tests/ on sys.path for its test modules."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_tiny_model(folder: Path, tokenizer_path: str) -> str:
    """A randomly initialized 2-layer Llama with the default model's tokenizer and template."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_path)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def shown(prompt: str) -> tuple[str, str]:
    """The two responses a pairwise judge prompt shows, (A) then (B)."""
    a = prompt.rsplit("(A) <response>\n", 1)[1].split("\n</response>", 1)[0]
    b = prompt.rsplit("(B) <response>\n", 1)[1].split("\n</response>", 1)[0]
    return a, b
