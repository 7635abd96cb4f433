"""The cost of each rung of an eval: what it took to make each policy, read from the run folders
that made it. A policy's model folder is followed through the inputs each stage's config.yaml
names, transitively: a `cai ppo` folder names its policy (an SFT folder) and its reward model (a
`cai rm train` folder, which names its preference data, a `cai label` folder, which names its
input, a `cai revise` folder, which names its model); a `cai sft` folder names its model and its
data (a revise output). Every stage reached is counted once per policy.

report.json `cost[policy]`:

- `model`, `recipe`;
- `stages`: one row per run folder reached, upstream first: `stage` (revise, label, sft, rm,
  ppo, or ppo-snapshot), `folder`, `tokens_generated` (revise: every generated text in
  records.jsonl; label: the sampled responses in responses.jsonl; ppo: the rollouts' response
  tokens), `tokens_judged` (label: the judge's prompt tokens in judgments.jsonl; else 0, or null
  where unknown), `training_steps` (sft, rm, ppo), `seconds` (the summary's wall seconds of the
  run's last invocation: see `notes` for a resumed run), `device` (cuda, cpu, remote, or null
  where the summary does not say), `gpu_seconds` (`seconds` where `device` is cuda, else null),
  `notes`;
- `total`: the sums of `tokens_generated`, `tokens_judged`, `training_steps`, `seconds` and
  `gpu_seconds` over the stages (null values left out of a sum; a sum with none known is null);
- `prompt_tokens_per_answer`: the mean prompt tokens of the policy's answers in this eval, and
  for a prompted rung `extra_prompt_tokens_per_answer`: how many more than the same model
  answering unprompted (another policy of this eval with the same model), null without one;
- `notes`: what could not be followed (a folder with no summary, a data file that is not a cai
  run folder, a base model: no training cost, an input that is not here: a hub id, or a folder
  moved or deleted since its run, whose cost is then missing from the totals).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cai.checkpoint import DONE_FILE
from cai.eval.policies import Policy
from cai.models import ALIASES
from cai.records import CONFIG_FILE
from cai.schema import EvalAnswer
from cai.snapshots import SNAPSHOTS

SUMMARY_FILE = "summary.json"
"""The summary of `cai revise` and `cai label` (training stages write train_done.json)."""
BASE_NOTE = "not a cai run folder (a base model): no training cost counted"
MISSING_NOTE = ("no such file or folder here (a hub id, or an input moved or deleted since the run): what made it, "
                "and its cost, are not counted")
FIGURES = ("tokens_generated", "tokens_judged", "training_steps", "seconds", "gpu_seconds")


@dataclass
class Stage:
    """One run folder that went into a policy, and what it cost."""

    stage: str
    folder: str
    tokens_generated: int | None = None
    tokens_judged: int | None = None
    training_steps: int | None = None
    seconds: float | None = None
    device: str | None = None
    notes: list[str] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        gpu = self.seconds if self.device is not None and self.device.startswith("cuda") else None
        return {"stage": self.stage, "folder": self.folder, "tokens_generated": self.tokens_generated,
                "tokens_judged": self.tokens_judged, "training_steps": self.training_steps, "seconds": self.seconds,
                "device": self.device, "gpu_seconds": gpu, "notes": self.notes}


# --- Following a folder's inputs -------------------------------------------------------------------


def _locate(ref: str, near: Path | None) -> Path | None:
    """A path as a stage's config recorded it: relative to the folder the stage ran in, which is
    usually where eval runs too; else relative to the folders around the stage's own."""
    p = Path(ref).expanduser()
    if p.exists() or p.is_absolute() or near is None:
        return p if p.exists() else None
    for base in (near.parent, near.parent.parent):
        if (base / p).exists():
            return base / p
    return None


def _run_folder(path: Path) -> Path | None:
    """The cai run folder that holds `path` (a data path may name the folder itself, or a file or
    dataset folder inside it: sft.jsonl, dataset/, prefs.jsonl)."""
    for cand in (path, path.parent, path.parent.parent):
        if cand.is_dir() and (cand / CONFIG_FILE).is_file():
            return cand
    return None


class _Trace:
    """Walk one policy's inputs; `stages` upstream first, each folder once."""

    def __init__(self) -> None:
        self.stages: list[Stage] = []
        self.notes: list[str] = []
        self.seen: set[Path] = set()

    def note(self, text: str) -> None:
        """A note, once per policy (a base model named at every stage of its chain is one note)."""
        if text not in self.notes:
            self.notes.append(text)

    def model(self, ref: str, near: Path | None = None) -> None:
        path = _locate(ref, near)
        if path is None:  # a model name ("default") is a base model; anything else is not here
            self.note(f"{ref}: {BASE_NOTE if ref.lower() in ALIASES else MISSING_NOTE}")
            return
        if not path.is_dir():
            self.note(f"{ref}: {BASE_NOTE}")
            return
        snapshots = path.parent
        if snapshots.name == SNAPSHOTS and (snapshots.parent / DONE_FILE).is_file():
            return self._snapshot(path, snapshots.parent)
        if not (path / CONFIG_FILE).is_file():
            self.note(f"{ref}: {BASE_NOTE}")
            return
        self.folder(path)

    def _snapshot(self, path: Path, run: Path) -> None:
        """A PPO snapshot: the run's inputs, and the run's steps up to the snapshot's."""
        if path.resolve() in self.seen:
            return
        self.seen.add(path.resolve())
        cfg = yaml.safe_load((run / CONFIG_FILE).read_text()) or {}
        done = _read_json(run / DONE_FILE) or {}
        self.model(str(cfg.get("policy", "default")), run)
        if cfg.get("reward", "rm") == "rm" and cfg.get("reward_model"):
            self.model(str(cfg["reward_model"]), run)
        step = int(path.name.split("-")[1])
        self.stages.append(Stage("ppo-snapshot", str(path), training_steps=step, device=done.get("device"), notes=[
            f"the policy of the PPO run {run} after step {step} of {done.get('steps')}: the run's summary records "
            "its seconds and tokens for all its steps, not for this share"]))

    def data(self, ref: str | None, near: Path) -> None:
        if not ref:
            return
        path = _locate(ref, near)
        if path is None:
            self.note(f"{ref}: {MISSING_NOTE}")
            return
        folder = _run_folder(path)
        if folder is None:
            self.note(f"{ref}: a data file, not a cai run folder (its cost is not counted)")
            return
        self.folder(folder)

    def folder(self, path: Path) -> None:
        key = path.resolve()
        if key in self.seen:
            return
        self.seen.add(key)
        cfg = yaml.safe_load((path / CONFIG_FILE).read_text()) or {}
        done = _read_json(path / DONE_FILE)
        if done is not None:
            return self._training(path, cfg, done)
        if "rounds" in cfg and "engine" in cfg:
            return self._revise(path, cfg)
        if "judge" in cfg and "input" in cfg:
            return self._label(path, cfg)
        self.stages.append(Stage("unknown", str(path), notes=[
            f"no summary ({DONE_FILE}): an unfinished run, or not one of cai's stages; its cost is not known"]))

    def _training(self, path: Path, cfg: dict[str, Any], done: dict[str, Any]) -> None:
        stage = str(done.get("stage", "unknown"))
        if stage == "sft":
            self.model(str(cfg.get("model", "default")), path)
            self.data(cfg.get("data"), path)
        elif stage == "rm":
            self.model(str(cfg.get("base", "default")), path)
            self.data(cfg.get("prefs"), path)
        elif stage == "ppo":
            self.model(str(cfg.get("policy", "default")), path)
            if cfg.get("reward", "rm") == "rm" and cfg.get("reward_model"):
                self.model(str(cfg["reward_model"]), path)
        s = Stage(stage, str(path), training_steps=done.get("steps"), seconds=done.get("seconds"),
                  device=done.get("device"))
        if stage == "ppo":
            s.tokens_generated = done.get("response_tokens")
            s.tokens_judged = 0 if cfg.get("reward", "rm") == "rm" else None
            if s.tokens_judged is None:
                s.notes.append("reward: judge: the judge's tokens are not recorded")
        else:
            s.tokens_generated, s.tokens_judged = 0, 0
        if done.get("resumed_from"):
            s.notes.append(f"resumed at step {done['resumed_from']}: seconds are the last invocation's only")
        if s.device is None:
            s.notes.append("the summary does not record the device (an older cai): GPU-seconds unknown")
        self.stages.append(s)

    def _revise(self, path: Path, cfg: dict[str, Any]) -> None:
        self.model(str((cfg.get("engine") or {}).get("model", "default")), path)
        summary = _read_json(path / SUMMARY_FILE)
        s = Stage("revise", str(path), tokens_generated=_sum_field(path / "records.jsonl", "completion_tokens"),
                  tokens_judged=0, training_steps=0)
        self._engine_summary(s, summary, "skipped")
        self.stages.append(s)

    def _label(self, path: Path, cfg: dict[str, Any]) -> None:
        self.data(str(cfg["input"]), path)
        self.model(str((cfg.get("judge") or {}).get("model", "default")), path)
        if cfg.get("policy"):
            self.model(str(cfg["policy"].get("model", "default")), path)
        summary = _read_json(path / SUMMARY_FILE)
        s = Stage("label", str(path), tokens_generated=_sum_field(path / "responses.jsonl", "completion_tokens"),
                  tokens_judged=_sum_field(path / "judgments.jsonl", "prompt_tokens"), training_steps=0)
        self._engine_summary(s, summary, None)
        if summary is not None and summary.get("judged_now", 0) < summary.get("judged", 0):
            s.notes.append("resumed: seconds are the last invocation's only")
        self.stages.append(s)

    @staticmethod
    def _engine_summary(s: Stage, summary: dict[str, Any] | None, resumed_key: str | None) -> None:
        if summary is None:
            s.notes.append(f"no {SUMMARY_FILE} (a run cut short): seconds and device unknown; tokens from its records")
            return
        s.seconds, s.device = summary.get("seconds"), summary.get("device")
        if resumed_key and summary.get(resumed_key):
            s.notes.append("resumed: seconds are the last invocation's only")
        if s.device is None:
            s.notes.append("the summary does not record the device (an older cai): GPU-seconds unknown")


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _sum_field(path: Path, name: str) -> int | None:
    """The sum of every `name` value (an int, or a list of ints) anywhere in each record of a
    JSONL file; None when the file is missing."""
    if not path.is_file():
        return None
    st = path.stat()
    return _sum_file(str(path.resolve()), name, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=64)
def _sum_file(path: str, name: str, mtime_ns: int, size: int) -> int:
    """`_sum_field` of one version of a file: every rung behind one revise folder (sft, ppo, each
    PPO step) reads its records once, and an edited file (new mtime or size) is read again."""
    total = 0
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            total += sum(_values(json.loads(line), name))
    return total


def _values(obj: Any, name: str) -> Iterator[int]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == name and isinstance(v, int):
                yield v
            elif k == name and isinstance(v, list):
                yield from (x for x in v if isinstance(x, int))
            else:
                yield from _values(v, name)
    elif isinstance(obj, list):
        for v in obj:
            yield from _values(v, name)


# --- One policy, and the report --------------------------------------------------------------------


def trace(model: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The stages behind a model (a folder, a name, a URL), upstream first, and the notes."""
    t = _Trace()
    t.model(model)
    return [s.row() for s in t.stages], t.notes


def total_cost(stages: Sequence[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in FIGURES:
        known = [s[f] for s in stages if s[f] is not None]
        out[f] = sum(known) if known else None
    if not stages:  # a base model or a prompted one: nothing was trained or generated to make it
        out.update(tokens_generated=0, tokens_judged=0, training_steps=0, seconds=0.0, gpu_seconds=0.0)
    return out


def cost_report(policies: Sequence[Policy], answers: Mapping[str, EvalAnswer],
                identities: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """report.json's `cost`: one entry per policy (module docstring)."""
    prompt_tokens: dict[str, list[int]] = {p.name: [] for p in policies}
    for a in answers.values():
        prompt_tokens.setdefault(a.policy, []).append(a.prompt_tokens)
    out = {}
    traced: dict[str, tuple[list[dict[str, Any]], list[str]]] = {}  # policies of one model trace it once
    for p in policies:
        served = p.engine.backend == "http"
        if not served and p.engine.model not in traced:
            traced[p.engine.model] = trace(p.engine.model)
        stages, notes = ([], [f"{p.spec}: a served model (its training cost is not known here)"]) if served \
            else traced[p.engine.model]
        mine = prompt_tokens[p.name]
        entry: dict[str, Any] = {"model": p.engine.model, "recipe": p.recipe, "stages": stages,
                                 "total": total_cost(stages), "notes": notes,
                                 "prompt_tokens_per_answer": sum(mine) / len(mine) if mine else None}
        if p.recipe:
            entry["extra_prompt_tokens_per_answer"] = _extra_prompt_tokens(p, policies, answers, identities)
        out[p.name] = entry
    return out


def _extra_prompt_tokens(p: Policy, policies: Sequence[Policy], answers: Mapping[str, EvalAnswer],
                         identities: Mapping[str, dict[str, Any]]) -> float | None:
    """Mean prompt tokens of a prompted policy's answers minus the same model's unprompted
    answers to the same prompts (its system prompt's cost per answer, template tokens included)."""
    same = [q for q in policies if not q.recipe and identities[q.name] == identities[p.name]]
    if not same:
        return None
    plain = {(a.suite, a.prompt_id): a.prompt_tokens for a in answers.values() if a.policy == same[0].name}
    diffs = [a.prompt_tokens - plain[(a.suite, a.prompt_id)] for a in answers.values()
             if a.policy == p.name and (a.suite, a.prompt_id) in plain]
    return sum(diffs) / len(diffs) if diffs else None
