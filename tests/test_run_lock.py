"""One job per run folder: every stage that writes a run folder holds its lock (cai.records.RunLock)."""

from __future__ import annotations

import pytest

from cai.records import RunLockedError, lock_run_dir


def _sft(out):
    from cai.sft import SFTConfig, train_sft

    return train_sft, SFTConfig(out=str(out), data="d.jsonl")


def _rm(out):
    from cai.reward import RMConfig, train_reward

    return train_reward, RMConfig(out=str(out), prefs="p.jsonl")


def _ppo(out):
    from cai.ppo import PPOConfig, train_ppo

    return train_ppo, PPOConfig(out=str(out), prompts="p.jsonl", reward="judge")


@pytest.mark.parametrize("stage", [_sft, _rm, _ppo])
def test_training_stages_refuse_a_folder_another_job_holds(tmp_path, stage):
    run, cfg = stage(tmp_path / "run")
    # Refused before anything is read or loaded: the (missing) data files are never opened.
    with lock_run_dir(tmp_path / "run"), pytest.raises(RunLockedError, match=f"{tmp_path / 'run'} is in use"):
        run(cfg)
