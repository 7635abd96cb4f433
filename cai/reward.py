"""`cai rm train`: a Bradley–Terry reward model trained on soft AI-feedback labels (method.md §3).

    P(chosen > rejected) = sigmoid(r(prompt, chosen) - r(prompt, rejected))
    loss = BCE(sigmoid(r_c - r_r - margin), p)        p = the judge's P(chosen is better)

With p = 1 (a hard label; rows without `p_chosen`) this is the usual -log sigmoid(r_c - r_r),
and with a margin it is Llama 2's -log sigmoid(r_c - r_r - m). RLAIF trained its reward model
with cross-entropy against soft labels like this; TRL and OpenRLHF take hard pairs only.

The model is the policy (or SFT model) with a one-output linear head (AutoModelForSequence-
Classification, num_labels=1). It reads prompt + response rendered by the chat template, and the
score is taken at the last non-padding token (the end-of-turn token), found from the attention
mask, never from pad_token_id (SmolLM2 pads with its EOS token).

After training, rewards are normalized to mean 0 and standard deviation 1 over the training
responses: reward = gain * raw + bias, with gain, bias and their statistics in
`cai_reward.json` beside the weights. The folder itself is a plain transformers model.
"""

from __future__ import annotations

import json
import random
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cai import models, records
from cai.atomic import write_json_atomic
from cai.checkpoint import finished_run, mark_finished, seed_everything, training_inputs
from cai.conversation import as_messages, parse_dialogue
from cai.engine import tokens
from cai.errors import ConfigError, ModelNotFoundError
from cai.preferences import PreferencePair, label_agreement, preference_loss, read_pairs
from cai.reward_eval import RMEvalConfig, RMScoreConfig, evaluate_pairs, read_eval_pairs, score_file
from cai.sft import load_tokenizer
from cai.train_common import Task, TrainConfig, fit, resolve_device

Message = dict[str, str]
NORM_FILE = "cai_reward.json"


@dataclass(frozen=True, kw_only=True)
class RMConfig(TrainConfig):
    """`cai rm train`: a soft-label Bradley–Terry reward model."""

    prefs: str = ""
    """Preference pairs: a JSONL file, a dataset folder (train_prefs / test_prefs) or the output
    folder of `cai label` (its dataset/ or prefs.jsonl). Rows need prompt, chosen, rejected;
    optional p_chosen (soft label, default 1.0) and margin."""
    base: str = "default"
    """The model to start from (the policy or the SFT model): `default`, a folder or a hub id.
    Its LM head is replaced by a new one-output score head."""
    eval_prefs: str | None = None
    """Held-out pairs (same formats). Unset: the prefs' test_prefs split, if any."""
    margin_scale: float = 0.0
    """Multiplies each row's `margin` before it is subtracted from r_c - r_r. 0 ignores
    margins; 1 gives Llama 2's margin loss."""
    norm_max_responses: int = 0
    """Training responses scored for the normalization statistics (a seeded sample); 0: all."""
    score_batch_size: int = 16
    """Sequences per forward pass when scoring (normalization and evaluation)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.prefs:
            raise ConfigError("prefs is not set",
                              fix="pass --prefs FILE|DIR, or set prefs: in the config file")
        if self.margin_scale < 0:
            raise ConfigError(f"margin_scale must be >= 0, got {self.margin_scale}")
        if self.norm_max_responses < 0 or self.score_batch_size < 1:
            raise ConfigError("norm_max_responses must be >= 0 and score_batch_size >= 1, got "
                              f"{self.norm_max_responses} and {self.score_batch_size}")


# ---------------------------------------------------------------------------------------------
# Scoring: the reward at the last non-padding token
# ---------------------------------------------------------------------------------------------


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of the last attended token of each row (right or left padding)."""
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return (positions * attention_mask.to(positions.dtype)).argmax(-1)


def sequence_rewards(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Raw rewards [batch] of a sequence-classification model with one output, read at the last
    non-padding token. Only that token goes through the score head."""
    head = getattr(model, "score", None)
    if head is None:
        raise ConfigError(f"{type(model).__name__} has no `score` head; cai reward models are "
                          "decoder models loaded with AutoModelForSequenceClassification")
    hidden = getattr(model, model.base_model_prefix)(
        input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return head(hidden[rows, last_token_index(attention_mask)]).squeeze(-1)


def encode(tokenizer, prompt: list[Message], response: list[Message], max_length: int) -> list[int]:
    """Token ids of prompt + response through the chat template, ending at the end-of-turn token
    (trailing whitespace removed). Too long: the *start* is cut, keeping the scored end.
    Special-token strings inside the messages stay text (cai/engine/tokens.py): a response cannot
    forge the end of its turn."""
    rendered = tokens.render(tokenizer, prompt + response, add_generation_prompt=False).rstrip()
    return tokens.prompt_ids(tokenizer, rendered)[-max_length:]


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, :len(s)] = 1
    return ids, mask


def read_normalization(folder: str | Path) -> dict[str, Any]:
    """A reward-model folder's cai_reward.json (gain, bias, max_length, ...)."""
    norm_path = Path(folder) / NORM_FILE
    if not norm_path.exists():
        raise ModelNotFoundError(f"{folder} is not a cai reward model (no {NORM_FILE})",
                                 fix="pass the --out folder of `cai rm train`")
    return json.loads(norm_path.read_text())


class RewardModel:
    """A trained reward model: `score` gives normalized rewards (gain * raw + bias)."""

    def __init__(self, model, tokenizer, gain: float = 1.0, bias: float = 0.0, max_length: int = 1024,
                 info: dict[str, Any] | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.gain = gain
        self.bias = bias
        self.max_length = max_length
        self.info = info or {}

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32) -> RewardModel:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        folder = Path(folder)
        info = read_normalization(folder)
        with models.quiet_transformers():
            model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=dtype).to(device).eval()
        if model.config.num_labels != 1:
            raise ModelNotFoundError(f"{folder} has {model.config.num_labels} outputs; a reward model has 1")
        tokenizer = AutoTokenizer.from_pretrained(folder)
        return cls(model, tokenizer, info["gain"], info["bias"], info.get("max_length", 1024), info)

    def save(self, folder: str | Path, **extra: Any) -> None:
        """Weights and tokenizer as a plain transformers folder, plus cai_reward.json."""
        folder = Path(folder)
        with models.quiet_transformers():
            self.model.save_pretrained(folder, safe_serialization=True)
        self.tokenizer.save_pretrained(folder)
        self.info = {"format": "cai-reward/1", "gain": self.gain, "bias": self.bias,
                     "max_length": self.max_length, "score_token": "last non-padding token",
                     **extra}
        write_json_atomic(folder / NORM_FILE, self.info, indent=1, newline=False)

    def encode(self, prompt: list[Message] | str, response: str | list[Message]) -> list[int]:
        prompt = parse_dialogue(prompt) if isinstance(prompt, str) else prompt
        return encode(self.tokenizer, prompt, as_messages(response, "response", None, is_prompt=False),
                      self.max_length)

    def score_ids(self, seqs: Sequence[Sequence[int]], batch_size: int = 16) -> list[float]:
        """Raw rewards of token sequences, in input order (batched by length)."""
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        out = [0.0] * len(seqs)
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                chunk = order[start:start + batch_size]
                ids, mask = pad_batch([seqs[i] for i in chunk], self.tokenizer.pad_token_id or 0)
                rewards = sequence_rewards(self.model, ids.to(device), mask.to(device)).float().tolist()
                for i, r in zip(chunk, rewards, strict=True):
                    out[i] = r
        self.model.train(was_training)
        return out

    def score_raw(self, prompts: Sequence[list[Message] | str], responses: Sequence[str | list[Message]],
                  batch_size: int = 16) -> list[float]:
        """Rewards before normalization."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        seqs = [self.encode(p, r) for p, r in zip(prompts, responses, strict=True)]
        return self.score_ids(seqs, batch_size)

    def score(self, prompts: Sequence[list[Message] | str], responses: Sequence[str | list[Message]],
              batch_size: int = 16) -> list[float]:
        """Normalized rewards: gain * raw + bias (mean 0, std 1 over the training responses)."""
        return [self.gain * r + self.bias for r in self.score_raw(prompts, responses, batch_size)]


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------


def distinct_pad_token(tokenizer) -> None:
    """Pad with a token other than EOS where the vocabulary has one, so that plain transformers'
    own pooling (the rightmost token != pad_token_id) also lands on the end-of-turn token."""
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return
    for cand in (tokenizer.unk_token, "<|endoftext|>", "<|finetune_right_pad_id|>", "<pad>"):
        cid = tokenizer.convert_tokens_to_ids(cand) if cand else None
        # an unknown token converts to the unk id: only the unk token itself may have it
        known = cand == tokenizer.unk_token or cid != tokenizer.unk_token_id
        if isinstance(cid, int) and known and cid != tokenizer.eos_token_id:
            tokenizer.pad_token = cand
            return


def encode_pairs(tokenizer, pairs: list[PreferencePair], max_length: int) -> tuple[list[dict[str, Any]], int]:
    """Training examples and how many pairs had a side truncated to max_length."""
    examples, truncated = [], 0
    for pr in pairs:
        c = encode(tokenizer, pr.prompt, pr.chosen, max_length + 1)
        r = encode(tokenizer, pr.prompt, pr.rejected, max_length + 1)
        truncated += len(c) > max_length or len(r) > max_length
        examples.append({"chosen": c[-max_length:], "rejected": r[-max_length:],
                         "p": pr.p, "margin": pr.margin})
    return examples, truncated


def collate_pairs(examples: list[dict[str, Any]], pad_id: int, margin_scale: float) -> dict[str, Any]:
    """One forward for both sides: rows [0, B) are the chosen sequences, [B, 2B) the rejected."""
    ids, mask = pad_batch([e["chosen"] for e in examples] + [e["rejected"] for e in examples], pad_id)
    return {"input_ids": ids, "attention_mask": mask,
            "p": torch.tensor([e["p"] for e in examples], dtype=torch.float32),
            "margin": torch.tensor([e["margin"] * margin_scale for e in examples], dtype=torch.float32),
            "n": len(examples), "samples": len(examples), "tokens": int(mask.sum())}


def pair_loss(model, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
    """Summed soft-label BT loss over the micro-batch's pairs, and summed metrics."""
    r = sequence_rewards(model, batch["input_ids"], batch["attention_mask"]).float()
    n = batch["n"]
    r_c, r_r = r[:n], r[n:]
    losses = preference_loss(r_c, r_r, batch["p"], batch["margin"])
    loss = losses.sum()
    with torch.no_grad():
        metrics = {"loss": loss.item(), "accuracy": label_agreement(r_c, r_r, batch["p"]).sum().item(),
                   "reward_margin": (r_c - r_r).sum().item(), "reward_chosen": r_c.sum().item(),
                   "reward_rejected": r_r.sum().item()}
    return loss, metrics


def normalization(rm: RewardModel, pairs: list[PreferencePair], max_responses: int, seed: int,
                  batch_size: int) -> dict[str, Any]:
    """gain and bias that map the raw rewards of the distinct training responses to mean 0, std 1."""
    seqs = {}
    for pr in pairs:
        for side in (pr.chosen, pr.rejected):
            ids = encode(rm.tokenizer, pr.prompt, side, rm.max_length)
            seqs.setdefault(tuple(ids), ids)
    distinct = list(seqs.values())
    if max_responses and len(distinct) > max_responses:
        distinct = random.Random(seed).sample(distinct, max_responses)
    raw = torch.tensor(rm.score_ids(distinct, batch_size), dtype=torch.float64)
    mean, std = raw.mean().item(), raw.std(correction=0).item() if len(raw) > 1 else 0.0
    if std < 1e-8:
        warnings.warn(f"the raw rewards of the training responses have std {std:.2e}; "
                      "normalization only centers them", stacklevel=2)
        std = 1.0
    return {"gain": 1.0 / std, "bias": -mean / std,
            "stats": {"mean": mean, "std": std, "n": len(distinct), "source": "training responses"}}


@records.locked_run  # one job per run folder (cai.records.RunLock)
def train_reward(cfg: RMConfig, *, force: bool = False, progress: bool = True,
                 on_step=None) -> dict[str, Any]:
    """Run (or resume) a reward-model job; returns its summary (also in OUT/train_done.json)."""
    from transformers import AutoModelForSequenceClassification


    t0 = time.time()
    path = models.resolve(cfg.base)
    tokenizer = load_tokenizer(path)
    distinct_pad_token(tokenizer)
    pairs = read_pairs(cfg.prefs, "train")
    if cfg.margin_scale > 0 and not any(pr.margin for pr in pairs):
        raise ConfigError(f"margin_scale is {cfg.margin_scale} but no row of {cfg.prefs} has a margin",
                          fix="set margin_scale: 0, or add a `margin` column")
    held = read_pairs(cfg.eval_prefs, "train") if cfg.eval_prefs else read_pairs(cfg.prefs, "test")
    eval_pairs = held or []
    inputs = training_inputs({"base": path}, {"train": [p.content() for p in pairs],
                                              "eval": [p.content() for p in eval_pairs]})
    if (done := finished_run(Path(cfg.out), cfg, inputs)) is not None:
        return done
    out = records.open_run_dir(Path(cfg.out), cfg, force, inputs=inputs)
    examples, truncated = encode_pairs(tokenizer, pairs, cfg.max_length)
    if truncated:
        warnings.warn(f"{truncated} of {len(pairs)} pairs were longer than max_length={cfg.max_length}; "
                      "their start was cut", stacklevel=2)

    seed_everything(cfg.seed)  # the new score head is drawn from this seed
    with models.quiet_transformers():
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    rm = RewardModel(model, tokenizer, max_length=cfg.max_length)

    def evaluate(_model) -> dict[str, float]:
        report = evaluate_pairs(rm, eval_pairs, cfg.score_batch_size)
        return {k: report[k] for k in ("accuracy", "mean_prob_label", "loss", "ece")}

    pad = tokenizer.pad_token_id
    task = Task(collate=lambda exs: collate_pairs(exs, pad, cfg.margin_scale), loss=pair_loss,
                evaluate=evaluate if eval_pairs else None)
    result = fit(model, examples, task, cfg, progress=progress, description="cai rm train", on_step=on_step)

    norm = normalization(rm, pairs, cfg.norm_max_responses, cfg.seed, cfg.score_batch_size)
    rm.gain, rm.bias = norm["gain"], norm["bias"]
    report = evaluate_pairs(rm, eval_pairs, cfg.score_batch_size) if eval_pairs else None
    rm.save(out, stats=norm["stats"], base=cfg.base, prefs=cfg.prefs)
    if report is not None:
        write_json_atomic(out / "eval.json", report, indent=1, newline=False)
    summary = {
        "stage": "rm", "base": cfg.base, "prefs": cfg.prefs, "pairs": len(pairs),
        "soft_labels": sum(pr.p not in (0.0, 1.0) for pr in pairs), "truncated": truncated,
        "eval_pairs": len(eval_pairs), "steps": result.steps, "resumed_from": result.resumed_from,
        "train_loss": result.last_metrics.get("train/loss"),
        "train_accuracy": result.last_metrics.get("train/accuracy"),
        "eval_accuracy": report["accuracy"] if report else None, "gain": rm.gain, "bias": rm.bias,
        "seconds": round(time.time() - t0, 1), "device": resolve_device(cfg.device).type,
    }
    mark_finished(out, summary, cfg)
    return summary


# --- the commands `cai rm eval` and `cai rm score` -------------------------------------------------
# They live here, not in cai.reward_eval, because they load a RewardModel: cai.reward_eval never
# imports this module (training evaluates through it; the reverse would be an import cycle).


def load_reward_model(cfg: RMEvalConfig | RMScoreConfig) -> RewardModel:
    """The reward model of `cfg`, on its device, in its precision."""
    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
    return RewardModel.load(cfg.model, device=str(resolve_device(cfg.device)), dtype=dtype)


def run_rm_eval(cfg: RMEvalConfig) -> dict[str, Any]:
    """`cai rm eval`: the report of cfg.model on cfg.pairs (see cai.reward_eval), also
    written to cfg.out when it is set."""
    pairs = read_eval_pairs(cfg.pairs, cfg.split)
    report = evaluate_pairs(load_reward_model(cfg), pairs, cfg.batch_size, cfg.calibration_bins)
    report = {"model": cfg.model, "pairs": cfg.pairs, **report}
    if cfg.out:
        write_json_atomic(cfg.out, report, indent=1, newline=False)
    return report


def run_rm_score(cfg: RMScoreConfig) -> int:
    """`cai rm score`: cfg.input scored into cfg.out; returns the number of rows written."""
    return score_file(load_reward_model(cfg), cfg.input, cfg.out, cfg.batch_size, cfg.raw)
