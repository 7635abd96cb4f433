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


# --- `cai eval` on scripted engines (test_eval_hacking.py, test_eval_cost.py) ---------------------

EVAL_ANSWER = "Here is a complete and useful answer for you."
"""A 9-word answer (9 tokens for the FakeEngine)."""


def eval_suite_specs(folder: Path, harmful: int = 2, benign: int = 2, helpful: int = 6) -> tuple[str, ...]:
    """`--suite NAME=FILE` values of three small suites written to `folder`; prompt k of a suite
    reads "<suite> question number k?"."""
    specs = []
    for name, n in (("harmful", harmful), ("benign-risky", benign), ("helpful", helpful)):
        path = write_jsonl(folder / f"{name}.jsonl", [{"id": f"{name}-{k}", "prompt": f"{name} question number {k}?"}
                                                      for k in range(1, n + 1)])
        specs.append(f"{name}={path}")
    return tuple(specs)


def length_judge(prompt: str, option: str) -> float:
    """A FakeEngine judge score: prefers the response with more words, in either position; equal
    lengths get no preference."""
    a, b = (len(t.split()) for t in shown(prompt))
    mine, other = (a, b) if option == "A" else (b, a)
    return 0.0 if mine >= other else -10.0
