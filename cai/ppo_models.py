"""The models of `cai ppo`, loaded for training and saved afterwards: the policy and its frozen
reference, and the value model. Dropout is off in all of them (PPO's ratio must compare the same
function at rollout and update time, N+ detail); the models also stay in eval mode.

The value model starts from the reward model (method.md §4) and must start in the units of its
targets. The targets are built from the reward model's *normalized* score, gain * raw + bias
(cai_reward.json), while the reward model's weights give the raw score; so the gain and the bias
are folded into the value head at load: head(h) = gain * w.h + bias. At step 0 the value read
at a response's last token is then exactly the score the reward model gives it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cai import models
from cai.errors import ConfigError


def _no_dropout_config(path: str, loader) -> Any:
    """The model's config with every dropout probability set to 0."""
    config = loader.from_pretrained(path)
    for name, value in list(vars(config).items()):
        if "dropout" in name and isinstance(value, float):
            setattr(config, name, 0.0)
    return config


def restore_dropout(model, path: str) -> None:
    """Put the dropout probabilities of the model's source config back before saving: they were
    zeroed for training only, and whoever fine-tunes the result next expects the original."""
    from transformers import AutoConfig

    for name, value in vars(AutoConfig.from_pretrained(path)).items():
        if "dropout" in name and isinstance(value, float):
            setattr(model.config, name, value)


def load_policy(path: str, device: torch.device):
    """(policy, frozen reference copy, tokenizer)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding is masked everywhere; any id works
    policy = AutoModelForCausalLM.from_pretrained(path, config=_no_dropout_config(path, AutoConfig),
                                                  dtype=torch.float32).to(device).eval()
    ref = copy.deepcopy(policy).eval().requires_grad_(False)
    return policy, ref, tokenizer


def fold_into_head(model, gain: float, bias: float) -> None:
    """Replace the one-output `score` head w by a head with a bias: h -> gain * w.h + bias."""
    old = model.score
    head = torch.nn.Linear(old.in_features, 1, bias=True, dtype=old.weight.dtype, device=old.weight.device)
    with torch.no_grad():
        head.weight.copy_(old.weight * gain)
        head.bias.fill_(bias + (float(old.bias.detach()) * gain if old.bias is not None else 0.0))
    model.score = head


def load_value_model(reward_model: str | None, policy_path: str, tokenizer, device: torch.device):
    """The value model, read per token. With a reward model: its weights, with the gain and bias
    of its cai_reward.json folded into the head. Without (reward: judge): the policy's backbone
    and a zero head (values start at 0)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from cai.reward import read_normalization

    if reward_model is not None:
        path = str(reward_model)
        norm = read_normalization(path)  # first: a folder without it is not a cai reward model
        rm_vocab = AutoTokenizer.from_pretrained(path).get_vocab()
        if rm_vocab != tokenizer.get_vocab():
            raise ConfigError(f"the reward model {path} has a different tokenizer from the policy {policy_path}",
                              fix="train the reward model from the policy (or the model the policy came from)")
        value = AutoModelForSequenceClassification.from_pretrained(
            path, config=_no_dropout_config(path, AutoConfig), dtype=torch.float32)
        gain, bias = float(norm["gain"]), float(norm["bias"])
    else:
        config = _no_dropout_config(policy_path, AutoConfig)
        config.num_labels = 1
        with models.quiet_transformers():  # the new head is expected; no load report for it
            value = AutoModelForSequenceClassification.from_pretrained(policy_path, config=config,
                                                                       dtype=torch.float32)
        gain, bias = 0.0, 0.0
    if getattr(value, "score", None) is None or value.score.out_features != 1:
        raise ConfigError(f"{type(value).__name__} has no one-output `score` head to read values from",
                          fix="use a decoder model loaded with AutoModelForSequenceClassification")
    fold_into_head(value, gain, bias)
    return value.to(device).eval()


def save_value_model(value_model, tokenizer, folder: Path, max_length: int, source_path: str) -> None:
    """Save the value model as a cai reward-model folder: the transformers model with the head's
    weight (the architecture has no head bias), and the bias as cai_reward.json's (gain 1), so
    `RewardModel.load(folder).score` is the value read at a sequence's last token."""
    from cai.reward import RewardModel

    restore_dropout(value_model, source_path)
    value_model.to("cpu")
    folded = value_model.score
    plain = torch.nn.Linear(folded.in_features, 1, bias=False)
    with torch.no_grad():
        plain.weight.copy_(folded.weight)
    value_model.score = plain
    try:
        RewardModel(value_model, tokenizer, gain=1.0, bias=float(folded.bias.detach()), max_length=max_length).save(
            folder, source="cai ppo value model")
    finally:
        value_model.score = folded


@dataclass(frozen=True)
class PPOModels:
    """The models a PPO run trains and reads (the reward model lives inside the scorer)."""

    policy: Any
    ref: Any
    """The frozen reference: a copy of the policy as loaded."""
    value: Any
    tokenizer: Any
    path: str
    """The policy's folder."""
    generation_config: Any
    """The policy's generation config as loaded, saved unchanged with the result."""


def load_models(policy: str, reward_model: str | None, device: torch.device) -> PPOModels:
    """The policy (a model name or folder), its reference and the value model (from
    `reward_model`, or from the policy with a zero head when it is None)."""
    path = models.resolve(policy)
    policy_model, ref, tokenizer = load_policy(path, device)
    generation_config = copy.deepcopy(policy_model.generation_config)
    value = load_value_model(reward_model, path, tokenizer, device)
    return PPOModels(policy_model, ref, value, tokenizer, path, generation_config)


def save_models(m: PPOModels, out: Path, max_length: int, value_source: str) -> None:
    """The result: the policy as a plain Hugging Face folder in `out` (with its generation config
    and dropout as loaded), and the value model in out/value."""
    m.policy.generation_config = m.generation_config
    restore_dropout(m.policy, m.path)
    m.policy.to("cpu").save_pretrained(out, safe_serialization=True)
    m.tokenizer.save_pretrained(out)
    save_value_model(m.value, m.tokenizer, out / "value", max_length, value_source)
