"""Checkpoints and the finished marker of every training stage (`cai sft`, `cai rm train`,
`cai ppo`).

A checkpoint is a folder OUT/checkpoints/step-NNNNNNNN holding one `<part>.pt` per stateful
part (models, optimizers, schedulers; a stage names its parts), `rng.pt` (every RNG state) and
`state.json` (the step and whatever else the stage needs to continue: the data position, the KL
controller...). It is written into a temporary folder and renamed into place, and state.json is
written last, so a folder with state.json is complete: a crash never leaves half a checkpoint.

A finished run leaves OUT/train_done.json (its summary); running the same config again returns
that summary instead of training, and a different config or changed inputs are refused.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from cai.atomic import write_json_atomic
from cai.errors import ResumeError

CHECKPOINTS = "checkpoints"
DONE_FILE = "train_done.json"


# ---------------------------------------------------------------------------------------------
# RNG states
# ---------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuples(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(x: Any) -> Any:
    return tuple(_as_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


class Stateful(Protocol):
    """A model, optimizer or scheduler: anything torch can save and restore by state dict."""

    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> Any: ...


Part = Stateful | Mapping[str, Stateful]
"""One file of a checkpoint: one stateful object, or several saved together as {name: state}."""


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read back: its folder, state.json and the RNG state, which the caller
    restores at the right moment (after anything that reseeds, such as starting an engine)."""

    folder: Path
    state: dict[str, Any]
    """state.json: {"step": N, ...what the stage saved}."""
    rng: dict[str, Any]

    @property
    def step(self) -> int:
        return self.state["step"]


def checkpoint_dirs(out: Path) -> list[Path]:
    """Complete checkpoints (state.json is written last), oldest first."""
    root = Path(out) / CHECKPOINTS
    if not root.is_dir():
        return []
    dirs = [d for d in root.glob("step-*") if d.is_dir() and (d / "state.json").exists()]
    return sorted(dirs, key=lambda d: int(d.name.split("-")[1]))


def _state_of(part: Part) -> Any:
    if isinstance(part, Mapping):
        return {k: p.state_dict() for k, p in part.items()}
    return part.state_dict()


def _restore(part: Part, state: Any) -> None:
    if isinstance(part, Mapping):
        for k, sd in state.items():
            part[k].load_state_dict(sd)  # a name the stage no longer has: KeyError
    else:
        part.load_state_dict(state)


def save_checkpoint(out: Path, step: int, parts: Mapping[str, Part], rng: dict[str, Any],
                    state: dict[str, Any], keep: int) -> Path:
    """Write `<name>.pt` for each part, rng.pt and state.json ({"step": step, **state}) to a
    temporary folder and rename it into place, then prune all but the `keep` newest."""
    root = Path(out) / CHECKPOINTS
    final = root / f"step-{step:08d}"
    tmp = root / f".step-{step:08d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, part in parts.items():
        torch.save(_state_of(part), tmp / f"{name}.pt")
    torch.save(rng, tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=1))  # written last
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in checkpoint_dirs(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(folder: Path, parts: Mapping[str, Part]) -> Checkpoint:
    """Restore each part from `folder` (in the order given) and read its state and RNG state."""
    try:
        for name, part in parts.items():
            # Everything onto the CPU first; load_state_dict moves it to where the part lives.
            _restore(part, torch.load(folder / f"{name}.pt", map_location="cpu", weights_only=True))
        rng = torch.load(folder / "rng.pt", weights_only=True)
    except (OSError, RuntimeError, KeyError) as e:
        raise ResumeError(f"cannot resume from checkpoint {folder}: {e}",
                          fix="delete that checkpoint folder to resume from an older one, "
                              "or use a new --out") from e
    return Checkpoint(folder, json.loads((folder / "state.json").read_text()), rng)


def latest_checkpoint(out: Path, parts: Mapping[str, Part]) -> Checkpoint | None:
    """Restore `parts` from the newest complete checkpoint in `out`; None if there is none."""
    dirs = checkpoint_dirs(out)
    return load_checkpoint(dirs[-1], parts) if dirs else None


# ---------------------------------------------------------------------------------------------
# The finished marker, and what a run is compared with before it is resumed or reused
# ---------------------------------------------------------------------------------------------


def is_finished(out: Path) -> dict[str, Any] | None:
    """The summary of a finished run in `out`, or None."""
    path = Path(out) / DONE_FILE
    return json.loads(path.read_text()) if path.exists() else None


def training_inputs(models: dict[str, str | Path], data: dict[str, Any]) -> dict[str, Any]:
    """What a training run was made from beyond its config, recorded in inputs.json and compared
    on resume: each model folder's fingerprint (a model fine-tuned or re-converted in place keeps
    its path) and a hash of the data actually trained and evaluated on (a data file edited at
    the same path keeps its path too). Resuming, or reusing a finished run, after either changed
    would silently mix two runs."""
    from cai import models as models_mod
    from cai.provenance import rows_key

    return {"model_fingerprints": {role: models_mod.fingerprint(p) for role, p in models.items()},
            "data_hashes": {role: rows_key(rows) for role, rows in data.items()}}


def finished_run(out: Path, cfg: Any, inputs: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The summary of a finished run in `out` made with `cfg` (and `inputs`, see
    `training_inputs`), or None if there is none. A finished run made with another config or
    other inputs is refused: it would not be trained further."""
    import yaml

    from cai import config as cfg_mod
    from cai.records import CONFIG_FILE, INPUTS_FILE

    done = is_finished(out)
    if done is None:
        return None
    path = Path(out) / CONFIG_FILE
    old = yaml.safe_load(path.read_text()) if path.exists() else {}
    changes = cfg_mod.diff(cfg_mod.with_new_defaults(old or {}, cfg), cfg_mod.to_jsonable(cfg))
    if inputs is not None:
        old_inputs = Path(out) / INPUTS_FILE
        old_inputs = json.loads(old_inputs.read_text()) if old_inputs.exists() else {}
        changes += [f"inputs.{c}" for c in cfg_mod.diff(old_inputs, cfg_mod.to_jsonable(inputs))]
    if changes:
        raise ResumeError(f"{out} holds a finished run made with a different config:\n    "
                          + "\n    ".join(changes),
                          fix="choose a new --out folder (a finished run is not trained further)")
    return {**done, "already_finished": True}


def mark_finished(out: Path, summary: dict[str, Any], cfg: Any) -> None:
    """Write the summary as DONE_FILE; then remove checkpoints/ if cfg.delete_checkpoints_when_done."""
    write_json_atomic(Path(out) / DONE_FILE, summary, indent=1, newline=False)
    if cfg.delete_checkpoints_when_done:
        shutil.rmtree(Path(out) / CHECKPOINTS, ignore_errors=True)
