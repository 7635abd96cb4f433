"""`cai sft`: supervised fine-tuning of the policy on (prompt, revision) conversations.

The supervised stage of Constitutional AI trains the model on its own revised answers
(method.md §1). Each row is a conversation in TRL's format, `messages`: the prompt turns, then
the final assistant turn. The model's chat template renders it; the loss is the token-level
cross-entropy on assistant tokens only: by default those of the *last* assistant turn (the
revision; earlier assistant turns are context), or of every assistant turn with
`assistant_turns: all`. The trained tokens of a turn are its content and the end-of-turn token
(`<|im_end|>` in ChatML), so the model learns to stop.

Output: a standard Hugging Face folder (safetensors, tokenizer, chat template, generation
config) that transformers and vLLM load as-is.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from cai import models, records
from cai.checkpoint import finished_run, mark_finished, seed_everything, training_inputs
from cai.conversation import check_messages
from cai.data import check_columns, read_rows
from cai.engine import tokens
from cai.errors import ConfigError, InputError, MultiError
from cai.train_common import Task, TrainConfig, fit, resolve_device

IGNORE = -100  # label of a token the loss skips (PyTorch's cross_entropy ignore_index)


@dataclass(frozen=True, kw_only=True)
class SFTConfig(TrainConfig):
    """`cai sft`: fine-tune a causal LM on conversations, with loss on assistant tokens only."""

    data: str = ""
    """Training conversations: a JSONL file, a dataset folder (train_sft / test_sft) or the
    output folder of `cai revise` (its dataset/ or sft.jsonl). Rows need `messages`."""
    model: str = "default"
    """The policy to fine-tune: `default`, a local Hugging Face folder or a hub id."""
    eval_data: str | None = None
    """Held-out conversations (same formats). Unset: the data's test_sft split, if any."""
    assistant_turns: Literal["last", "all"] = "last"
    """Which assistant turns carry the loss: the last one (the revision, as the paper trains on
    (prompt, revision)) or all of them. Long examples are truncated at the right end."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.data:
            raise ConfigError("data is not set", fix="pass --data FILE|DIR, or set data: in the config file")


# ---------------------------------------------------------------------------------------------
# Tokenization: chat template + assistant-token labels
# ---------------------------------------------------------------------------------------------


def render(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def assistant_spans(tokenizer, messages: list[dict[str, str]],
                    turns: Literal["last", "all"] = "last") -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of the trained assistant turns. A span
    runs from the end of the generation prompt (`<|im_start|>assistant\\n`) to the end of the
    turn, end-of-turn token included, trailing whitespace excluded."""
    text = render(tokenizer, messages)
    which = [len(messages) - 1] if turns == "last" else \
        [i for i, m in enumerate(messages) if m["role"] == "assistant" and i > 0]
    spans = []
    for i in which:
        head = render(tokenizer, messages[:i], add_generation_prompt=True)
        upto = render(tokenizer, messages[:i + 1])
        if not (upto.startswith(head) and text.startswith(upto)):
            raise ConfigError(
                "the model's chat template does not render a conversation as a prefix of its longer "
                "versions, so the assistant tokens cannot be located",
                fix="use a model whose chat template is incremental (ChatML, Llama 3, ...)")
        spans.append((len(head), len(upto.rstrip())))
    return text, spans


def tokenize_conversation(tokenizer, messages: list[dict[str, str]], max_length: int,
                          turns: Literal["last", "all"] = "last") -> dict[str, list[int]]:
    """input_ids of the rendered conversation (truncated to max_length at the right) and labels
    equal to input_ids on trained assistant tokens, IGNORE elsewhere."""
    text, spans = assistant_spans(tokenizer, messages, turns)
    # Tokenized as every engine tokenizes prompts: special-token strings inside message content
    # stay text (cai/engine/tokens.py), so training sees what generation will be fed. The
    # rendered text is `text` (the same template call), so the spans apply to it.
    rendered = tokens.render(tokenizer, messages, add_generation_prompt=False)
    all_ids, starts = tokens.rendered_encoding(tokenizer, rendered)
    ids = all_ids[:max_length]
    labels = [tok if any(a <= start < b for a, b in spans) else IGNORE
              for tok, start in zip(ids, starts, strict=False)]
    return {"input_ids": ids, "labels": labels}


def load_examples(source: str, tokenizer, cfg: SFTConfig, split: Literal["train", "test"] = "train"
                  ) -> tuple[list[dict[str, list[int]]], int] | None:
    """Tokenized examples of a split and how many were dropped because truncation left no
    trained token. None when the split does not exist (a test split of a JSONL file)."""
    rows = read_rows(source, "sft", split)
    if rows is None:
        return None
    check_columns(rows, ["messages"], source)
    examples, errors, dropped = [], [], 0
    for row in rows:
        try:
            messages = check_messages(row.data["messages"], row.where)
        except InputError as e:
            errors.append(e)
            continue
        ex = tokenize_conversation(tokenizer, messages, cfg.max_length, cfg.assistant_turns)
        if all(t == IGNORE for t in ex["labels"]):
            dropped += 1
            continue
        examples.append(ex)
    _raise_all(errors, source)
    if not examples:
        raise InputError(f"no example of {source} keeps an assistant token within "
                         f"max_length={cfg.max_length}", fix="raise max_length")
    return examples, dropped


def _raise_all(errors: list[InputError], source: Any) -> None:
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise MultiError(f"{len(errors)} bad rows in {source}:", errors=errors[:20])


def collate(examples: list[dict[str, list[int]]], pad_id: int) -> dict[str, Any]:
    """Right-pad a micro-batch; padding has attention 0 and label IGNORE."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e["labels"])
        mask[i, :n] = 1
    # a label at position t is predicted from position t-1, so the first token is never trained
    trained = int((labels[:, 1:] != IGNORE).sum())
    return {"input_ids": ids, "attention_mask": mask, "labels": labels,
            "n": trained, "samples": len(examples), "tokens": int(mask.sum())}


def loss_sum(model, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
    """Summed next-token cross-entropy over trained tokens."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten(),
                          ignore_index=IGNORE, reduction="sum")
    return nll, {"loss": nll.item()}


def mean_loss(model, examples: list[dict[str, list[int]]], pad_id: int, batch_size: int = 8) -> float:
    """Mean loss per trained token over `examples` (no gradient)."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            b = collate(examples[i:i + batch_size], pad_id)
            nll, _ = loss_sum(model, {k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()})
            total, count = total + nll.item(), count + b["n"]
    return total / max(count, 1)


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if not tok.chat_template:
        raise ConfigError(f"the tokenizer of {path} has no chat template",
                          fix="fine-tune a chat model (an -Instruct one), or add chat_template to its "
                              "tokenizer_config.json")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token  # padding is masked out; any id will do
    return tok


@records.locked_run  # one job per run folder (cai.records.RunLock)
def train_sft(cfg: SFTConfig, *, force: bool = False, progress: bool = True, on_step=None) -> dict[str, Any]:
    """Run (or resume) an SFT job; returns its summary (also in OUT/train_done.json)."""
    from transformers import AutoModelForCausalLM

    t0 = time.time()
    path = models.resolve(cfg.model)
    tokenizer = load_tokenizer(path)
    examples, dropped = load_examples(cfg.data, tokenizer, cfg, "train")
    held = load_examples(cfg.eval_data, tokenizer, cfg, "train") if cfg.eval_data else \
        load_examples(cfg.data, tokenizer, cfg, "test")
    eval_examples = held[0] if held else []
    inputs = training_inputs({"model": path}, {"train": examples, "eval": eval_examples})
    if (done := finished_run(Path(cfg.out), cfg, inputs)) is not None:
        return done
    out = records.open_run_dir(Path(cfg.out), cfg, force, inputs=inputs)
    if dropped:
        warnings.warn(f"{dropped} conversation(s) of {cfg.data} lost every assistant token to "
                      f"max_length={cfg.max_length} and were left out", stacklevel=2)

    seed_everything(cfg.seed)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    pad = tokenizer.pad_token_id
    task = Task(collate=lambda exs: collate(exs, pad), loss=loss_sum,
                evaluate=(lambda m: {"loss": mean_loss(m, eval_examples, pad, cfg.local_batch_size)})
                if eval_examples else None)
    result = fit(model, examples, task, cfg, progress=progress, description="cai sft", on_step=on_step)

    if hasattr(model.config, "use_cache"):
        model.config.use_cache = True  # gradient checkpointing turns it off; generation wants it
    model.to("cpu").save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out)
    summary = {
        "stage": "sft", "model": cfg.model, "data": cfg.data, "examples": len(examples),
        "dropped_truncated": dropped, "eval_examples": len(eval_examples), "steps": result.steps,
        "resumed_from": result.resumed_from, "train_loss": result.last_metrics.get("train/loss"),
        "eval_loss": result.eval_metrics.get("eval/loss"), "seconds": round(time.time() - t0, 1),
        "device": resolve_device(cfg.device).type,
    }
    mark_finished(out, summary, cfg)
    return summary

