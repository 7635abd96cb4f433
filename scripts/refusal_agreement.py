"""How well the two refusal classifiers of `cai eval` agree with hand labels, and with each other.

    flock /tmp/cai-heavy.lock python scripts/refusal_agreement.py            # the default model as judge
    python scripts/refusal_agreement.py --judge runs/big-judge --backend hf  # another judge

Reads data/refusal-labels/labels.jsonl (answers labeled by hand `refusal`, `answer` or
`unclear`, left out; data/README.md says where each came from) and prints, per subset and
overall, the share of answers on which each classifier agrees with the label, its recall of
refusals and of answers, how often the judge's two option orders gave the same verdict, and the
separation (AUC) of the judge's P(refusal). `--variants` adds the judge without its few-shot
examples. The figures of docs/eval.md ("How good is the judge classifier?") are this script's
output (`--variants`).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from cai import models
from cai.config import EngineConfig
from cai.engine import make_engine
from cai.eval.refusal import PatternRefusalClassifier
from cai.eval.refusal_judge import JudgeRefusalClassifier, RefusalItem
from cai.judge import resolve_judge_engine

LABELS = Path(__file__).resolve().parent.parent / "data" / "refusal-labels" / "labels.jsonl"


def auc(scores: list[float], positive: list[bool]) -> float:
    """P(a random refusal scores above a random answer), ties half (the Mann-Whitney AUC)."""
    pos = [s for s, y in zip(scores, positive, strict=True) if y]
    neg = [s for s, y in zip(scores, positive, strict=True) if not y]
    if not pos or not neg:
        return float("nan")
    return sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))


def summary(name: str, verdicts: list[bool], labels: list[bool], extra: str = "") -> str:
    n = len(labels)
    agree = sum(v == y for v, y in zip(verdicts, labels, strict=True))
    ref = [v for v, y in zip(verdicts, labels, strict=True) if y]
    ans = [not v for v, y in zip(verdicts, labels, strict=True) if not y]
    return (f"| {name} | {n} | {agree}/{n} = {agree / n:.0%} | {sum(ref)}/{len(ref)} | {sum(ans)}/{len(ans)} |"
            f" {extra} |")


def table(rows: list[dict], judges: list[str]) -> str:
    """The markdown table of docs/eval.md: each classifier against the labels, per source and overall."""
    out = ["| classifier: answers | n | agrees with the labels | refusals found | answers found | notes |",
           "|---|---|---|---|---|---|"]
    groups = [(s, [r for r in rows if r["source"] == s]) for s in sorted({r["source"] for r in rows})]
    groups.append(("all", rows))
    for name in judges:
        for s, rs in groups:
            labels = [r["label"] == "refusal" for r in rs]
            verdicts = [bool(r[name]["refused"]) for r in rs]
            p = [0.5 if r[name]["p"] is None else r[name]["p"] for r in rs]
            orders = sum(bool(r[name]["agree"]) for r in rs) / len(rs)
            same = sum(v == r["patterns"] for v, r in zip(verdicts, rs, strict=True))
            out.append(summary(f"{name}: {s}", verdicts, labels, f"AUC {auc(p, labels):.2f}; orders agree "
                               f"{orders:.0%}; agrees with the patterns {same}/{len(rs)}"))
    for s, rs in groups:
        out.append(summary(f"patterns: {s}", [r["patterns"] for r in rs], [r["label"] == "refusal" for r in rs]))
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labels", type=Path, default=LABELS)
    ap.add_argument("--judge", default="default")
    ap.add_argument("--backend", default="vllm")
    ap.add_argument("--variants", action="store_true", help="also the judge without few-shot examples")
    ap.add_argument("--answers", type=Path, nargs="*", default=[],
                    help="also score these unlabeled `cai eval` answers.jsonl (for labeling; see --dump)")
    ap.add_argument("--dump", type=Path, help="write every row with each classifier's verdict and P here (JSONL)")
    args = ap.parse_args()
    rows = [json.loads(line) for line in args.labels.read_text().splitlines() if line.strip()]
    for path in args.answers:
        rows += [{"id": a["id"], "source": a["policy"], "prompt": a["prompt"][-1]["content"], "answer": a["answer"]}
                 for a in map(json.loads, path.read_text().splitlines()) if a["suite"] in ("harmful", "benign-risky")]
    cfg = resolve_judge_engine(EngineConfig(backend=args.backend, model=args.judge, max_model_len=2048, seed=0))
    engine = make_engine(cfg)
    judge = models.identity(cfg, engine, context=True)
    classifiers = {"judge": JudgeRefusalClassifier(judge)}
    if args.variants:
        classifiers["judge, no examples"] = replace(classifiers["judge"], examples=())
    items = [RefusalItem(r["id"], [{"role": "user", "content": r["prompt"]}], r["answer"]) for r in rows]
    for r in rows:
        r["patterns"] = PatternRefusalClassifier().classify(r["prompt"], r["answer"])
    for name, clf in classifiers.items():
        for r, j in zip(rows, clf.judge_many(items, engine), strict=True):
            r[name] = {"p": j.p, "p_orders": j.p_orders, "agree": j.agree, "refused": clf.verdict(j).refused}
    if args.dump:
        args.dump.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"judge: {judge['model']} ({judge['backend']}, {judge['dtype']}); {len(rows)} answers\n")
    print(table([r for r in rows if r.get("label") in ("refusal", "answer")], list(classifiers)))
    engine.close()


if __name__ == "__main__":
    main()
