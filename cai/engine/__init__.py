"""Engines: one interface (`Engine`), one module per backend. Nothing outside this package
imports vLLM."""

from __future__ import annotations

from cai.config import EngineConfig
from cai.engine.base import Completion, Conversation, Engine, Message, Prompt, Rendered, Sampling
from cai.errors import ConfigError

__all__ = ["Completion", "Conversation", "Engine", "EngineConfig", "Message", "Prompt", "Rendered", "Sampling",
           "engine_device", "make_engine"]


def engine_device(backend: str) -> str:
    """Where an engine of this backend computes, as a stage's summary records it (`cai eval`
    counts GPU-seconds from it): `remote` for a server, else `cuda` when torch sees a GPU (the
    vLLM and transformers engines then run on it), else `cpu`."""
    if backend == "http":
        return "remote"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def make_engine(cfg: EngineConfig) -> Engine:
    """Build the configured backend. Resolves (and on first use prepares) the model. The engine's
    `fingerprint` is the model folder's (`cai.models.fingerprint`), for the records' keys."""
    from cai import models

    path = models.resolve(cfg.model)
    if cfg.backend == "http":
        from cai.engine.http import HTTPEngine

        engine: Engine = HTTPEngine.load(path, cfg, model_name=models.display_name(cfg.model))
    elif cfg.backend == "vllm":
        from cai.engine.vllm import VLLMEngine

        engine = VLLMEngine(path, cfg, model_name=models.display_name(cfg.model))
    elif cfg.backend == "hf":
        from cai.engine.hf import HFEngine

        engine = HFEngine.load(path, cfg, model_name=models.display_name(cfg.model))
    else:
        raise ConfigError(f"unknown backend {cfg.backend!r}", fix="use vllm, hf or http")
    engine.fingerprint = models.fingerprint(path)
    return engine
