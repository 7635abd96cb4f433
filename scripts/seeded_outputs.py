"""A small seeded run of revise -> label -> sft -> rm train on the real default model, through the
CLI, and a manifest of what it wrote: one sha256 per output file, with the fields that are
meant to differ between runs (wall times, dates, host, process ids, paths of the run folder)
taken out of JSON and JSONL files first.

A refactor that must not change behaviour runs this before and after and compares:

    python scripts/seeded_outputs.py --work /tmp/before --manifest before.json
    ... change the code ...
    python scripts/seeded_outputs.py --work /tmp/after --manifest after.json
    python scripts/seeded_outputs.py --compare before.json after.json

Model weights are hashed as written (safetensors), so "identical" means bit-identical training.
The run always happens in one fixed folder (RUN_DIR), because some recorded values depend on
where the inputs lie (a training set's hash includes each row's file and line), and is then
copied to --work; run it under the heavy-job lock so two runs never share that folder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Fields whose values depend on the clock, the machine or where the run folder lives.
VOLATILE = re.compile(r"(time|seconds|elapsed|wall|date|created|started|finished_at|host|pid|per_s|"
                      r"_at$|^path$|_path$|^out$|^dir$|version_info|python|platform|cpu|load)", re.I)
RUN_DIR = Path("/tmp/cai-seeded-run")
SKIP_FILES = re.compile(r"(\.log$|\.lock$|events\.out\.tfevents)")


def scrub(value, root: str):
    if isinstance(value, dict):
        return {k: scrub(v, root) for k, v in value.items() if not VOLATILE.search(k)}
    if isinstance(value, list):
        return [scrub(v, root) for v in value]
    if isinstance(value, str):
        return value.replace(root, "<work>")
    return value


def digest(path: Path, root: str) -> str:
    data = path.read_bytes()
    if path.suffix in (".yaml", ".yml"):
        data = data.decode().replace(root, "<work>").encode()
    if path.suffix in (".json", ".jsonl"):
        text = data.decode()
        if path.suffix == ".json":
            text = json.dumps(scrub(json.loads(text), root), sort_keys=True)
        else:
            text = "\n".join(json.dumps(scrub(json.loads(line), root), sort_keys=True)
                             for line in text.splitlines() if line.strip())
        data = text.encode()
    return hashlib.sha256(data).hexdigest()


def run(work: Path) -> None:
    prompts = work / "prompts.jsonl"
    rows = [json.loads(x) for x in (REPO / "examples" / "prompts.jsonl").read_text().splitlines()[:4]]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    constitution = str(REPO / "principles.yaml")
    steps = [
        ["revise", "--prompts", str(prompts), "--constitution", constitution, "--out", str(work / "revise"),
         "--rounds", "2", "--max-tokens", "24", "--critique-max-tokens", "16", "--keep-flagged"],
        ["label", "--input", str(prompts), "--samples-per-prompt", "2", "--max-tokens", "16", "--keep-ties",
         "--constitution", constitution, "--out", str(work / "label")],
        ["sft", "--data", str(work / "revise"), "--out", str(work / "sft"), "--max-steps", "2",
         "--batch-size", "2", "--max-length", "128"],
        ["rm", "train", "--prefs", str(work / "label"), "--base", "default", "--out", str(work / "rm"),
         "--max-steps", "2", "--batch-size", "2", "--max-length", "128"],
    ]
    for args in steps:
        print("cai", " ".join(args), flush=True)
        subprocess.run([sys.executable, "-m", "cai", *args], check=True, cwd=work)


def manifest(work: Path) -> dict[str, str]:
    root = str(work)
    return {str(p.relative_to(work)): digest(p, root) for p in sorted(work.rglob("*"))
            if p.is_file() and not SKIP_FILES.search(p.name) and p.name != "prompts.jsonl"}


def compare(a: Path, b: Path) -> int:
    ma, mb = json.loads(a.read_text()), json.loads(b.read_text())
    bad = sorted(k for k in ma.keys() | mb.keys() if ma.get(k) != mb.get(k))
    for k in bad:
        print(f"{'differs' if k in ma and k in mb else 'only in ' + (a.name if k in ma else b.name)}: {k}")
    print(f"{len(ma.keys() & mb.keys()) - len([k for k in bad if k in ma and k in mb])} files identical, "
          f"{len(bad)} not")
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, help="where to copy the finished run (replaced)")
    ap.add_argument("--manifest", type=Path, help="where to write the manifest (JSON)")
    ap.add_argument("--compare", type=Path, nargs=2, metavar=("A", "B"))
    args = ap.parse_args()
    if args.compare:
        return compare(*args.compare)
    if not (args.work and args.manifest):
        ap.error("give --work and --manifest, or --compare A B")
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    RUN_DIR.mkdir(parents=True)
    run(RUN_DIR)
    args.manifest.write_text(json.dumps(manifest(RUN_DIR), indent=1, sort_keys=True) + "\n")
    shutil.rmtree(args.work, ignore_errors=True)
    shutil.copytree(RUN_DIR, args.work)
    print(f"{args.manifest}: {len(json.loads(args.manifest.read_text()))} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
