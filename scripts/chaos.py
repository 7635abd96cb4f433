"""Fault suite: SIGKILL each stage at seeded random moments, resume it, compare with a run that
was never interrupted. Results go to the "Fault suite" section of docs/reliability.md.

For every stage: one uninterrupted reference run (its wall time T), then N trials. A trial
starts the stage's real CLI command, SIGKILLs its whole process group at a moment drawn
uniformly from [0.75 W, T) (seeded; W is when the reference wrote its first record or metrics
line, so that kills fall in the working part of a run rather than in the model load; T shrinks
to kill time + resume time after each trial, since a cold reference overestimates a run), runs
the same command again to completion, and compares:

- batch stages (revise, label, judge eval): the records of the store, by id: lost (in the
  reference, not after resume), duplicated (an id twice), different (same id, other content,
  ignoring timings);
- training stages (sft, rm train, ppo): the final weights (every tensor, exactly) and the
  per-step losses of metrics.jsonl.

One extra trial per stage kills in the middle of a write: batch stages through the
CAI_CHAOS_TORN_WRITE hook of cai.records (the first chunk is half written and fsynced, then the
process SIGKILLs itself); training stages by killing the moment a checkpoint folder appears.

    flock /tmp/cai-heavy.lock python scripts/chaos.py --trials 10 --work /tmp/chaos
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
VOLATILE = {"seconds", "elapsed", "elapsed_s", "time", "timestamp", "created", "created_at", "wall_s",
            "samples_per_s", "tokens_per_s", "speed"}


@dataclass
class Stage:
    name: str
    args: list[str]  # the CLI command, `{out}` and `{ref:STAGE}` filled in per run
    store: str | None  # batch stages: the JSONL store compared by id
    key: str = "id"


# Training: a checkpoint and a metrics line every step, so a kill lands between or inside them.
TRAIN = ["--batch-size", "2", "--checkpoint-every", "1", "--log-every", "1", "--seed", "0", "--quiet"]


def stages(prompts: Path, pairs: Path, principles: Path) -> list[Stage]:
    p, c = str(prompts), str(principles)
    return [
        Stage("revise", ["revise", "--prompts", p, "--constitution", c, "--out", "{out}", "--rounds", "1",
                         "--max-tokens", "16", "--critique-max-tokens", "16", "--chunk-size", "2", "--seed", "0",
                         "--keep-flagged"],  # 16-token answers are all truncated; sft and rm train use them
              "records.jsonl"),
        Stage("label", ["label", "--input", p, "--constitution", c, "--out", "{out}", "--samples-per-prompt", "2",
                        "--max-tokens", "16", "--chunk-size", "2", "--seed", "0"], "judgments.jsonl"),
        Stage("judge eval", ["judge", "eval", "--pairs", str(pairs), "--constitution", c, "--out", "{out}",
                             "--seed", "0"], "judgments.jsonl"),
        Stage("sft", ["sft", "--data", "{ref:revise}/sft.jsonl", "--out", "{out}", "--max-steps", "4",
                      *TRAIN], None),
        Stage("rm train", ["rm", "train", "--prefs", "{ref:revise}/prefs.jsonl", "--out", "{out}", "--max-steps",
                           "4", *TRAIN], None),
        Stage("ppo", ["ppo", "--reward-model", "{ref:rm train}", "--prompts", p, "--out", "{out}", "--steps", "2",
                      "--batch-size", "4", "--num-minibatches", "2", "--ppo-epochs", "1", "--max-new-tokens", "8",
                      "--checkpoint-every", "1", "--seed", "0", "--quiet"], None),
    ]


def command(stage: Stage, out: Path, refs: dict[str, Path]) -> list[str]:
    args = []
    for a in stage.args:
        a = a.replace("{out}", str(out))
        for name, ref in refs.items():
            a = a.replace("{ref:" + name + "}", str(ref))
        args.append(a)
    return [sys.executable, "-m", "cai", *args]


def run(cmd: list[str], log: Path, env: dict[str, str] | None = None, kill_after: float | None = None,
        kill_when: Path | None = None, watch: Path | None = None) -> tuple[int, float, bool]:
    """Run `cmd`; SIGKILL its process group after `kill_after` s, or while a checkpoint is being
    written under `kill_when`. Returns (exit code, seconds, killed); with `watch`, the seconds
    until that file first existed are written beside it as `<name>.first_s`."""
    t0 = time.monotonic()
    seen = False
    with log.open("a") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **(env or {})})
        killed = False
        while proc.poll() is None:
            due = kill_after is not None and time.monotonic() - t0 >= kill_after
            # cai.checkpoint writes a checkpoint into `.step-N.tmp`, then renames it.
            new = kill_when is not None and kill_when.exists() and any(kill_when.rglob(".step-*.tmp"))
            if due or new:
                os.killpg(proc.pid, signal.SIGKILL)
                killed = True
                proc.wait()
                break
            if watch is not None and not seen and watch.exists():
                seen = True
                (watch.parent / "chaos_first_write_s").write_text(str(time.monotonic() - t0))
            time.sleep(0.01)
    return proc.returncode, time.monotonic() - t0, killed or proc.returncode == -signal.SIGKILL


def strip(obj):
    if isinstance(obj, dict):
        return {k: strip(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [strip(v) for v in obj]
    return obj


def compare_store(ref: Path, got: Path, key: str) -> dict[str, int]:
    def rows(path: Path) -> list[dict]:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []

    want = {str(r[key]): strip(r) for r in rows(ref)}
    have_rows = rows(got)
    counts = Counter(str(r[key]) for r in have_rows)
    have = {str(r[key]): strip(r) for r in have_rows}
    return {"records": len(want), "lost": len(set(want) - set(have)),
            "duplicated": sum(n - 1 for n in counts.values() if n > 1),
            "different": sum(1 for k in set(want) & set(have) if want[k] != have[k]),
            "extra": len(set(have) - set(want))}


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.rglob("*.safetensors")):
        if "step-" in str(f.relative_to(folder)):
            continue
        for name, t in load_file(str(f)).items():
            out[f"{f.relative_to(folder)}:{name}"] = t
    return out


def losses(folder: Path) -> list:
    path = folder / "metrics.jsonl"
    if not path.exists():
        return []
    keep = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        keep.append({k: v for k, v in row.items() if "loss" in k or k in ("step", "objective/kl", "objective/reward")})
    return keep


def compare_training(ref: Path, got: Path) -> dict:
    a, b = weights(ref), weights(got)
    same_names = set(a) == set(b)
    max_diff = max(((a[k].float() - b[k].float()).abs().max().item() for k in a if k in b), default=float("nan"))
    # No final weights on either side (a run that saved none, or under another name) is not "equal".
    equal = bool(a) and same_names and all(a[k].dtype == b[k].dtype and bool((a[k] == b[k]).all()) for k in a)
    return {"tensors": len(a), "weights_equal": equal, "max_abs_diff": max_diff,
            "losses_equal": losses(ref) == losses(got)}


def trial(stage: Stage, i: int, kill_at: float | None, mid_write: bool, work: Path, refs: dict[str, Path],
          ref_out: Path) -> dict:
    out = work / f"{stage.name.replace(' ', '_')}-{'midwrite' if mid_write else f'trial{i}'}"
    log = work / f"{out.name}.log"
    shutil.rmtree(out, ignore_errors=True)
    log.unlink(missing_ok=True)
    cmd = command(stage, out, refs)
    if mid_write and stage.store:
        rc, secs, killed = run(cmd, log, env={"CAI_CHAOS_TORN_WRITE": "1"})
    elif mid_write:
        rc, secs, killed = run(cmd, log, kill_when=out)
    else:
        rc, secs, killed = run(cmd, log, kill_after=kill_at)
    # What the kill left: records already in the store (batch) or checkpoints (training).
    store = out / stage.store if stage.store else None
    left = (sum(1 for x in store.read_text().splitlines() if x.strip()) if store and store.exists()
            else len(list(out.rglob("step-*"))) if not stage.store and out.exists() else 0)
    rc2, secs2, _ = run(cmd, log)  # resume
    result = {"trial": i, "kill_at_s": None if kill_at is None else round(kill_at, 2), "mid_write": mid_write,
              "killed": killed, "left_by_kill": left, "first_rc": rc, "first_s": round(secs, 1), "resume_rc": rc2,
              "resume_s": round(secs2, 1)}
    done = out / "train_done.json"
    if done.exists():
        result["resumed_from"] = json.loads(done.read_text()).get("resumed_from")
    if rc2 != 0:
        return {**result, "error": f"resume failed (exit {rc2}), see {log}"}
    if stage.store:
        return {**result, **compare_store(ref_out / stage.store, out / stage.store, stage.key)}
    return {**result, **compare_training(ref_out, out)}


def summarize(stage: Stage, trials: list[dict], ref_s: float) -> dict:
    row = {"stage": stage.name, "trials": len(trials), "killed": sum(t["killed"] for t in trials),
           "mid_write": sum(t["mid_write"] and t["killed"] for t in trials), "reference_s": round(ref_s, 1),
           # kills that left partial output, so the second run really resumed
           "resumed_partial": sum(t["killed"] and t["left_by_kill"] > 0 for t in trials),
           "failed_resumes": sum("error" in t for t in trials)}
    ok = [t for t in trials if "error" not in t]
    if stage.store:
        for k in ("lost", "duplicated", "different", "extra"):
            row[k] = sum(t[k] for t in ok)
    else:
        row["resumed_equal"] = sum(t["weights_equal"] and t["losses_equal"] for t in ok)
        row["max_abs_diff"] = max((t["max_abs_diff"] for t in ok), default=float("nan"))
    return row


def markdown(rows: list[dict], cmd: str) -> str:
    lines = [f"Command: `{cmd}`, {time.strftime('%Y-%m-%d')}.", "",
             "| stage | trials (killed / mid-write / resumed from partial output) | reference run | lost | "
             "duplicated | different | resumed == uninterrupted | failed resumes |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "lost" in r:
            cells = [str(r["lost"]), str(r["duplicated"]), str(r["different"]), "-"]
        else:
            eq = f"{r['resumed_equal']}/{r['trials'] - r['failed_resumes']} (max abs diff {r['max_abs_diff']:.3g})"
            cells = ["-", "-", "-", eq]
        lines.append(f"| {r['stage']} | {r['trials']} ({r['killed']} / {r['mid_write']} / {r['resumed_partial']}) | "
                     f"{r['reference_s']} s | "
                     + " | ".join(cells) + f" | {r['failed_resumes']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=10, help="random-moment kills per stage (plus one mid-write)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path("/tmp/cai-chaos"))
    ap.add_argument("--stages", default="revise,label,judge eval,sft,rm train,ppo")
    ap.add_argument("--prompts", type=Path, default=REPO / "examples" / "prompts.jsonl")
    ap.add_argument("--principles", type=Path, default=REPO / "principles.yaml")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    pairs = a.work / "pairs.jsonl"  # human-labeled pairs for judge eval: the helpful answer is chosen
    prompts = [json.loads(x) for x in a.prompts.read_text().splitlines() if x.strip()]
    pairs.write_text("".join(json.dumps({"id": p["id"], "prompt": p["prompt"], "chosen": "Here is a careful, "
                                         "honest answer.", "rejected": "No."}) + "\n" for p in prompts))
    wanted = [s.strip() for s in a.stages.split(",")]
    all_stages = stages(a.prompts, pairs, a.principles)
    needed = set(wanted)  # the wanted stages and every stage whose reference they read, transitively
    while grown := {s.name for s in all_stages for w in all_stages if w.name in needed
                    and any("{ref:" + s.name + "}" in x for x in w.args)} - needed:
        needed |= grown
    refs: dict[str, Path] = {}
    rows, details = [], {}
    for k, stage in enumerate(all_stages):
        if stage.name not in needed:
            continue
        ref_out = a.work / f"{stage.name.replace(' ', '_')}-reference"
        if not (ref_out / "summary.json").exists() and not (ref_out / "train_done.json").exists() \
                and not (ref_out / "report.json").exists():
            rc, ref_s, _ = run(command(stage, ref_out, refs), a.work / f"{ref_out.name}.log",
                               watch=ref_out / (stage.store or "metrics.jsonl"))
            if rc != 0:
                sys.exit(f"{stage.name}: the reference run failed (exit {rc}); see {a.work / ref_out.name}.log")
            (ref_out / "chaos_seconds").write_text(str(ref_s))
        ref_s = float((ref_out / "chaos_seconds").read_text())
        first = ref_out / "chaos_first_write_s"
        start = 0.75 * float(first.read_text()) if first.exists() else 0.0
        refs[stage.name] = ref_out
        if stage.name not in wanted:
            continue
        rng = random.Random(a.seed * 1000 + k)
        # Kill moments are drawn over the run's length, which the reference (a cold start) can
        # overestimate by half; each trial bounds it again (kill time + resume time >= a run).
        length, trials = ref_s, []
        for i in range(a.trials):
            t = trial(stage, i, start + rng.random() * max(0.0, length - start), False, a.work, refs, ref_out)
            length = min(length, t["kill_at_s"] + t["resume_s"] if t["killed"] else t["first_s"])
            trials.append(t)
        trials.append(trial(stage, a.trials, None, True, a.work, refs, ref_out))
        details[stage.name] = trials
        rows.append(summarize(stage, trials, ref_s))
        print(json.dumps(rows[-1]), flush=True)
    (a.work / f"chaos-{time.strftime('%H%M%S')}.json").write_text(json.dumps({"rows": rows, "trials": details},
                                                                                indent=1))
    print(markdown(rows, "python scripts/chaos.py " + " ".join(sys.argv[1:])))


if __name__ == "__main__":
    main()
