"""`cai ppo`: a thin layer over cai.ppo.train_ppo.

Every top-level field of PPOConfig is a flag (`kl_coef` -> `--kl-coef`) with the field's
docstring as its help, so the flags, the YAML keys and docs/ppo.md cannot drift apart. The two
engine sections are set in the YAML file (`rollout_engine:`, `judge_engine:`), with flags for the
fields one changes most. Precedence: defaults < --config YAML < flags.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from pathlib import Path
from typing import Any, Literal

import typer
import yaml
from rich.table import Table

from cai import config, terminal
from cai.cli import app
from cai.cli.train import field_docs
from cai.ppo import PPOConfig, train_ppo

out_console = terminal.out
NESTED = {f.name for f in dataclasses.fields(PPOConfig)
          if dataclasses.is_dataclass(typing.get_type_hints(PPOConfig)[f.name])}

# Flags for the engine sections: (parameter, section, field, annotation, help).
ENGINE_FLAGS = [
    ("rollout_backend", "rollout_engine", "backend", str,
     "Rollouts: hf (transformers on the policy in memory) or vllm (one engine, weights reloaded in place)."),
    ("rollout_dtype", "rollout_engine", "dtype", str, "vllm rollouts: auto, bfloat16, float16 or float32."),
    ("rollout_max_model_len", "rollout_engine", "max_model_len", int, "Rollout engine: longest prompt + response."),
    ("rollout_gpu_memory_utilization", "rollout_engine", "gpu_memory_utilization", float,
     "vllm rollouts: the engine's memory fraction (leave room for training on a shared GPU)."),
    ("judge_model", "judge_engine", "model", str, "--reward judge: the judge model (`default`, a folder or a hub id)."),
    ("judge_backend", "judge_engine", "backend", str, "--reward judge: vllm, hf or http."),
    ("judge_base_url", "judge_engine", "base_url", str, "--reward judge with the http backend: the server URL."),
]


def _flag_type(tp: Any) -> tuple[Any, str]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if typing.get_origin(tp) is Literal:
        return str, "one of: " + ", ".join(map(str, typing.get_args(tp)))
    return tp, ""


def resolve_config(config_file: Path | None, flags: dict[str, Any]) -> PPOConfig:
    """defaults < YAML < flags; `flags` maps PPOConfig field names and ENGINE_FLAGS parameters to
    values, None meaning "not given"."""
    flags = dict(flags)
    overrides: dict[str, Any] = {}
    for pname, section, fname, _, _ in ENGINE_FLAGS:
        value = flags.pop(pname, None)
        if value is not None:
            overrides.setdefault(section, {})[fname] = value
    overrides.update({k: v for k, v in flags.items() if v is not None})
    # A partial engine section (in the file or from flags) fills in from PPOConfig's own default
    # for that section (rollouts default to hf), not from EngineConfig's class defaults.
    data: Any = {}
    if config_file is not None and Path(config_file).is_file():
        try:
            data = yaml.safe_load(Path(config_file).read_text()) or {}
        except yaml.YAMLError:
            data = {}  # config.load reports it with its line and column
    for section in NESTED:
        from_file = data.get(section) if isinstance(data, dict) and isinstance(data.get(section), dict) else {}
        from_flags = overrides.get(section, {})
        if from_file or from_flags:
            default = PPOConfig.__dataclass_fields__[section].default_factory()
            overrides[section] = {**config.to_jsonable(default), **from_file, **from_flags}
    return config.load(PPOConfig, config_file, overrides)


def _run(cfg: PPOConfig, force: bool, quiet: bool) -> None:
    terminal.capture(cfg.out)
    s = train_ppo(cfg, force=force, progress=not quiet)
    title = f"cai ppo -> {cfg.out}" + (" (already finished; nothing to do)" if s.get("already_finished") else "")
    table = Table(title=title, show_header=False)
    for k, v in s.items():
        if k != "final_metrics":
            table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    for k in ("objective/reward", "objective/kl", "objective/entropy", "response/length"):
        if k in s.get("final_metrics", {}):
            table.add_row(f"last step {k}", f"{s['final_metrics'][k]:.4g}")
    out_console.print(table)


def _register() -> None:
    hints, docs = typing.get_type_hints(PPOConfig), field_docs(PPOConfig)
    params = [inspect.Parameter("config_file", inspect.Parameter.KEYWORD_ONLY, annotation=Path | None,
                                default=typer.Option(None, "--config", help="YAML config file; flags override it."))]
    for f in dataclasses.fields(PPOConfig):
        if f.name in NESTED:
            continue
        tp, hint = _flag_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        decl = f"{flag}/--no-{flag[2:]}" if tp is bool else flag
        default = "" if f.default in ("", None) else f" [default: {f.default}]"
        text = " ".join(x for x in (docs.get(f.name, ""), hint) if x) + default
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=tp | None,
                                        default=typer.Option(None, decl, help=text, show_default=False)))
    for pname, _, _, tp, text in ENGINE_FLAGS:
        params.append(inspect.Parameter(pname, inspect.Parameter.KEYWORD_ONLY, annotation=tp | None,
                                        default=typer.Option(None, "--" + pname.replace("_", "-"), help=text)))
    params.append(inspect.Parameter("force", inspect.Parameter.KEYWORD_ONLY, annotation=bool, default=typer.Option(
        False, "--force", help="Resume into a folder made with a different config.")))
    params.append(inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                                    default=typer.Option(False, "--quiet", help="No progress bar.")))

    def ppo(**kwargs: Any) -> None:
        force, quiet = kwargs.pop("force"), kwargs.pop("quiet")
        _run(resolve_config(kwargs.pop("config_file"), kwargs), force, quiet)

    ppo.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    ppo.__annotations__ = {p.name: p.annotation for p in params}
    ppo.__doc__ = ("PPO on a policy against a reward model (or the AI judge with --reward judge), "
                   "KL-regularized to the starting policy. See docs/ppo.md.")
    app.command("ppo", help=ppo.__doc__)(ppo)


_register()
