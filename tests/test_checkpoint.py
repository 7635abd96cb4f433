"""cai.checkpoint: the one checkpoint format of sft, rm and ppo (named parts, grouped parts,
RNG states, state.json last, pruning) and its errors."""

from __future__ import annotations

import json
import random

import pytest
import torch

from cai.checkpoint import (
    CHECKPOINTS,
    checkpoint_dirs,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from cai.errors import ResumeError


def trained(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """A tiny model after one AdamW step, so the optimizer has state to save."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0 - k / 10)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    sched.step()
    return model, opt, sched


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        same(a[k], b[k]) if isinstance(a[k], dict) else
        torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a)


def test_parts_and_groups_round_trip_with_state_and_rng(tmp_path):
    model, opt, sched = trained(0)
    value, value_opt, _ = trained(1)
    seed_everything(5)
    rng = rng_state()
    draws = (random.random(), float(torch.rand(1)))
    parts = {"policy": model, "value": value, "optimizers": {"policy": opt, "value": value_opt},
             "schedulers": {"policy": sched}}
    folder = save_checkpoint(tmp_path, 3, parts, rng, {"tokens": 7, "n_prompts": 4}, keep=2)

    assert folder == tmp_path / CHECKPOINTS / "step-00000003"
    assert sorted(p.name for p in folder.iterdir()) == ["optimizers.pt", "policy.pt", "rng.pt", "schedulers.pt",
                                                      "state.json", "value.pt"]
    assert json.loads((folder / "state.json").read_text()) == {"step": 3, "tokens": 7, "n_prompts": 4}

    fresh = {"policy": trained(9)[0], "value": trained(8)[0]}
    fresh_opt = {"policy": torch.optim.AdamW(fresh["policy"].parameters(), lr=0.1),
                 "value": torch.optim.AdamW(fresh["value"].parameters(), lr=0.1)}
    fresh_sched = {"policy": torch.optim.lr_scheduler.LambdaLR(fresh_opt["policy"], lambda k: 1.0 - k / 10)}
    ckpt = latest_checkpoint(tmp_path, {**fresh, "optimizers": fresh_opt, "schedulers": fresh_sched})
    assert ckpt is not None and ckpt.step == 3 and ckpt.folder == folder and ckpt.state["tokens"] == 7
    assert same(fresh["policy"].state_dict(), model.state_dict())
    assert same(fresh["value"].state_dict(), value.state_dict())
    assert same(fresh_opt["policy"].state_dict(), opt.state_dict())
    assert fresh_sched["policy"].get_last_lr() == sched.get_last_lr()

    # The RNG state comes back for the caller to restore: the same draws follow it.
    seed_everything(123)
    set_rng_state(ckpt.rng)
    assert (random.random(), float(torch.rand(1))) == draws


def test_only_complete_checkpoints_count_and_old_ones_are_pruned(tmp_path):
    model, opt, sched = trained(0)
    parts = {"model": model, "optimizer": opt, "scheduler": sched}
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, parts, rng_state(), {}, keep=2)
    root = tmp_path / CHECKPOINTS
    (root / ".step-00000004.tmp").mkdir()  # a save cut short before its rename
    (root / "step-00000005").mkdir()  # no state.json: written last, so incomplete
    assert [d.name for d in checkpoint_dirs(tmp_path)] == ["step-00000002", "step-00000003"]
    assert latest_checkpoint(tmp_path, parts).step == 3
    assert latest_checkpoint(tmp_path / "nothing-here", parts) is None


def test_a_damaged_checkpoint_is_a_resume_error_naming_the_folder(tmp_path):
    model, opt, sched = trained(0)
    folder = save_checkpoint(tmp_path, 1, {"model": model, "optimizers": {"policy": opt}}, rng_state(), {}, keep=1)
    with pytest.raises(ResumeError, match=r"cannot resume from checkpoint .*step-00000001") as e:
        load_checkpoint(folder, {"model": model, "optimizers": {"value": opt}})  # a group name it lacks
    assert "delete that checkpoint folder" in e.value.fix
    (folder / "model.pt").unlink()
    with pytest.raises(ResumeError, match=r"cannot resume from checkpoint .*step-00000001"):
        load_checkpoint(folder, {"model": model, "optimizers": {"policy": opt}})
