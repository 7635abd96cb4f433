"""`cai ppo`: a thin layer over cai.ppo.train_ppo.

Every top-level field of PPOConfig is a flag (`kl_coef` -> `--kl-coef`, see cai.cli.common), so
the flags, the YAML keys and docs/ppo.md cannot drift apart. The two engine sections are set in
the YAML file (`rollout_engine:`, `judge_engine:`), with flags for the fields one changes most.
Precedence: defaults < --config YAML < flags.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from cai import terminal
from cai.cli.common import FORCE, QUIET, Flag, config_command, field_flags, load_config
from cai.cli.root import app
from cai.ppo import PPOConfig, train_ppo

out_console = terminal.out

# Flags for the engine sections; their help says what the field means for that engine.
ENGINE_FLAGS = [
    Flag("rollout_engine.backend", "--rollout-backend", help="Rollouts: hf (transformers on the policy in memory) "
         "or vllm (one engine, weights reloaded in place)."),
    Flag("rollout_engine.dtype", "--rollout-dtype", help="vllm rollouts: auto, bfloat16, float16 or float32."),
    Flag("rollout_engine.max_model_len", "--rollout-max-model-len",
         help="Rollout engine: longest prompt + response."),
    Flag("rollout_engine.gpu_memory_utilization", "--rollout-gpu-memory-utilization",
         help="vllm rollouts: the engine's memory fraction (leave room for training on a shared GPU)."),
    Flag("judge_engine.model", "--judge-model",
         help="--reward judge: the judge model (`default`, a folder or a hub id)."),
    Flag("judge_engine.backend", "--judge-backend", help="--reward judge: vllm, hf or http."),
    Flag("judge_engine.base_url", "--judge-base-url", help="--reward judge with the http backend: the server URL."),
]
FLAGS = [*field_flags(PPOConfig), *ENGINE_FLAGS]


def resolve_config(config_file: Path | None, flags: dict[str, Any]) -> PPOConfig:
    """defaults < YAML < flags; `flags` maps flag parameters (`kl_coef`, `rollout_backend`) to
    values, None meaning "not given"."""
    return load_config(PPOConfig, FLAGS, config_file, flags)


def _run(cfg: PPOConfig, force: bool, quiet: bool) -> None:
    terminal.capture(cfg.out)
    s = train_ppo(cfg, force=force, progress=not quiet)
    title = f"cai ppo -> {escape(str(cfg.out))}" + (
        " (already finished; nothing to do)" if s.get("already_finished") else "")
    table = Table(title=title, show_header=False)
    for k, v in s.items():
        if k != "final_metrics":
            table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    for k in ("objective/reward", "objective/kl", "objective/entropy", "response/length"):
        if k in s.get("final_metrics", {}):
            table.add_row(f"last step {k}", f"{s['final_metrics'][k]:.4g}")
    out_console.print(table)


config_command(app, "ppo", PPOConfig, _run, flags=FLAGS, extra={"force": FORCE, "quiet": QUIET},
               help="PPO on a policy against a reward model (or the AI judge with --reward judge), "
                    "KL-regularized to the starting policy. See docs/ppo.md.")
