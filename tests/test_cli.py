"""How commands are declared (cai.cli.common): one flag per config field, help from its docstring."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from cai import config
from cai.cli import app
from cai.cli.common import Flag, config_command
from cai.errors import ConfigError
from cai.eval.run import EvalConfig
from cai.judge import JudgeOptions
from cai.label import LabelConfig
from cai.revise import ReviseConfig
from cai.reward_eval import RMEvalConfig

CLI = Path(__file__).resolve().parent.parent / "cai" / "cli"
STAGES = [["generate"], ["revise"], ["label"], ["judge", "eval"], ["sft"], ["rm", "train"], ["rm", "eval"],
          ["rm", "score"], ["ppo"], ["eval"]]


def click_command(path: list[str]):
    cmd = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]
    return cmd


def help_text(path: list[str]) -> str:
    r = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "1000"})
    assert r.exit_code == 0, r.output
    return " ".join(r.output.split())


@pytest.mark.parametrize("path", STAGES, ids=" ".join)
def test_every_flag_of_every_stage_has_help(path):
    undocumented = [p.opts[0] for p in click_command(path).params if not p.help]
    assert not undocumented, f"cai {' '.join(path)}: flags without help: {undocumented}"


@pytest.mark.parametrize(("path", "flag", "cls", "field"), [
    (["revise"], "--rounds", ReviseConfig, "rounds"),
    (["revise"], "--top-p", ReviseConfig, "top_p"),
    (["label"], "--max-tokens", LabelConfig, "policy_max_tokens"),
    (["judge", "eval"], "--cot-max-tokens", JudgeOptions, "cot_max_tokens"),
    (["rm", "eval"], "--calibration-bins", RMEvalConfig, "calibration_bins"),
    (["eval"], "--policy", EvalConfig, "policies"),
    (["eval"], "--tie-margin", EvalConfig, "tie_margin"),
])
def test_a_flags_help_is_its_config_fields_docstring(path, flag, cls, field):
    param = next(p for p in click_command(path).params if flag in p.opts)
    assert param.help.startswith(config.field_docs(cls)[field])


def test_help_shows_the_defaults_and_brackets_of_the_docstrings():
    text = help_text(["rm", "eval"])
    assert "Sequences per forward pass. [default: 16]" in text
    assert "Equal-width confidence bins over [0.5, 1]. [default: 5]" in text
    text = help_text(["label"])
    assert "clamped to [low, high]" in text and "[default: 0.4 0.6]" in text
    assert "[default: no-cot]" in text and "[default: drop-ties]" in text
    # A section's default is the one the stage gives it: PPO rollouts default to hf, not vllm.
    assert "--rollout-backend" in help_text(["ppo"]) and "[default: hf]" in help_text(["ppo"])


def test_a_bool_flag_keeps_its_switch_names_and_short_options_stay():
    params = {p.name: p for p in click_command(["revise"]).params}
    assert (params["direct"].opts, params["direct"].secondary_opts) == (["--direct"], ["--critique"])
    assert (params["keep_flagged"].opts, params["keep_flagged"].secondary_opts) == (["--keep-flagged"], [])
    assert (params["enforce_eager"].secondary_opts) == ["--compile"]
    label = {p.name: p for p in click_command(["label"]).params}
    assert set(label["samples_per_prompt"].opts) == {"--samples-per-prompt", "-k"}


def test_flags_set_nested_fields_and_override_the_yaml_file(tmp_path):
    got = []
    group = typer.Typer()
    config_command(group, "x", LabelConfig, got.append, help="x", flags=[
        Flag("input"), Flag("out"), Flag("judge.model", "--judge"), Flag("judge.dtype"), Flag("judging.cot_clamp"),
        Flag("policy_max_tokens", "--max-tokens"), Flag("skip_flags", "--all", off="", type=bool,
                                                         value=lambda on: [] if on else None, help="h")])
    group.command("y")(lambda: None)  # a group of two: `x` stays a subcommand
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("input: i.jsonl\nout: o\njudge:\n  backend: hf\n  dtype: float16\n")
    r = CliRunner().invoke(group, ["x", "--config", str(cfg_file), "--judge", "m", "--max-tokens", "9",
                                   "--cot-clamp", "0.3", "0.7", "--all"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    cfg = got[0]
    assert (cfg.judge.model, cfg.judge.backend, cfg.judge.dtype) == ("m", "hf", "float16")  # merged field by field
    assert cfg.policy_max_tokens == 9 and cfg.judging.cot_clamp == (0.3, 0.7) and cfg.skip_flags == ()
    r = CliRunner().invoke(group, ["x", "--config", str(cfg_file)])
    assert got[1].skip_flags == LabelConfig.__dataclass_fields__["skip_flags"].default  # --all not given


def test_revise_without_a_config_file_names_the_missing_flags(tmp_path):
    r = CliRunner().invoke(app, ["revise", "--out", str(tmp_path / "o")])
    assert isinstance(r.exception, ConfigError)
    assert str(r.exception).startswith("--prompts is required")
    assert "set prompts: and out: in a --config file" in str(r.exception)


def test_command_modules_take_the_app_from_its_own_module_not_the_package():
    # `cai.cli` imports every command module to register it; a module importing `app` back from
    # `cai.cli` made an import cycle.
    offenders = []
    for path in sorted(CLI.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "cai.cli" and path.name != "__init__.py":
                offenders.append(f"{path.name}: from cai.cli import {', '.join(a.name for a in node.names)}")
    assert not offenders


def test_no_stage_command_declares_an_option_by_hand():
    # One way to declare a command: config_command; only `models`, `principles` and `report` (no
    # config: they run no stage, they read files) differ.
    manual = [p.name for p in CLI.glob("*.py") if "typer.Option(" in p.read_text()
              and p.name not in ("common.py", "root.py", "models.py", "principles.py", "report.py")]
    extras = {"train.py", "judge.py"}  # their --json switch is not a config field
    assert set(manual) <= extras, manual


def test_every_config_field_flag_exists_for_the_train_stages():
    from cai.sft import SFTConfig

    flags = {o for p in click_command(["sft"]).params for o in p.opts}
    missing = [f.name for f in dataclasses.fields(SFTConfig) if "--" + f.name.replace("_", "-") not in flags]
    assert not missing
