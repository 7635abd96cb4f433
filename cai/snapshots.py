"""Policy snapshots of a `cai ppo` run: the policy's weights every `snapshot_every` steps, each a
plain Hugging Face model folder (weights, config, generation config, tokenizer) that transformers
and vLLM load as they are, kept after the run. `cai eval --hacking` reads them to follow the
reward model's score against the judge's win rate over the run (cai/eval/hacking.py).

OUT/snapshots/step-NNNNNN/ holds the policy after step N. A snapshot is written into a temporary
folder and renamed into place, so a folder under its final name is complete. A run that resumes
from its checkpoint at step N first drops the snapshots after N (`drop_after`): they were written
by the part of the run that is redone, perhaps under a config --force changed since, or with
rollouts that do not repeat bit for bit (vLLM on a GPU), so every snapshot is the policy this run
passed through on its way to the final one; and it writes snapshot N itself when a Ctrl-C cut its
writing short (the checkpoint at N was still saved). Otherwise snapshots/ is kept after the run,
unlike checkpoints/.
"""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path
from typing import Any

SNAPSHOTS = "snapshots"
_NAME = re.compile(r"^step-(\d+)$")


def snapshot_dir(out: str | Path, step: int) -> Path:
    return Path(out) / SNAPSHOTS / f"step-{step:06d}"


def list_snapshots(out: str | Path) -> dict[int, Path]:
    """The complete snapshots of a run folder by step, in step order (temporary folders of a
    snapshot cut short are not listed)."""
    root = Path(out) / SNAPSHOTS
    found = {}
    if root.is_dir():
        for d in root.iterdir():
            m = _NAME.match(d.name)
            if m and d.is_dir():
                found[int(m.group(1))] = d
    return dict(sorted(found.items()))


def drop_after(out: str | Path, step: int) -> list[int]:
    """Remove the snapshots after `step` (the step a run resumes from); returns their steps. Each
    is renamed away before it is deleted, so a crash midway leaves no half-deleted folder under a
    snapshot's name."""
    dropped = [k for k in list_snapshots(out) if k > step]
    for k in dropped:
        d = snapshot_dir(out, k)
        gone = d.with_name(f".{d.name}.dropped")
        shutil.rmtree(gone, ignore_errors=True)
        d.rename(gone)
        shutil.rmtree(gone)
    return dropped


def save_snapshot(out: str | Path, step: int, policy: Any, tokenizer: Any, generation_config: Any,
                  source_path: str) -> Path:
    """Write the policy as OUT/snapshots/step-N (atomically); an existing one is kept as it is
    (after `drop_after` at the run's start, only a step the run already passed has one).

    The policy object is not changed (it is still training, and stays on its device): the config
    written is a copy with the source's dropout probabilities put back (training
    zeroes them) and the generation config as loaded (rollouts neutralize it), as the final
    policy is saved (cai.ppo_models.save_models)."""
    from transformers import AutoConfig

    final = snapshot_dir(out, step)
    if final.is_dir():
        return final
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    policy.save_pretrained(tmp, safe_serialization=True)  # safetensors copies each tensor to the CPU
    config = copy.deepcopy(policy.config)
    for name, value in vars(AutoConfig.from_pretrained(source_path)).items():
        if "dropout" in name and isinstance(value, float):
            setattr(config, name, value)
    config.save_pretrained(tmp)
    generation_config.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(final)
    return final
