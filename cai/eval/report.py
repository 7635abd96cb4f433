"""report.json and rows.jsonl of `cai eval`, from the stored answers and judgments.

report.json:

- `provenance`: cai version, the constitution (name, version, hash), each suite (file, kind,
  rows, SHA-256 of the file), each policy (spec, recipe, model, folder fingerprint, engine,
  a hash of its system prompt), the judge (model, fingerprint, engine, judging options), the
  refusal classifier (its name, and for the judge: the judge, the question and its hash, the
  threshold; for the patterns: their hash), the answer sampling, the run seed, the baseline;
- `results[policy][suite]`: the answers' count, mean tokens and truncated share; on a refusal
  suite its refusal rate (`harmless_rate` on `harmful`, `over_refusal_rate` on `benign-risky`)
  and `not_classified` (answers the judge could not read: left out of the rate); with the judge
  classifier, `refusal_orders_agree` (share of answers whose two option orders agreed);
  for a policy other than the baseline, its `length_drift` against the baseline and, on a
  judged suite, `win_rate`, `win_rate_by_principle` and `length_controlled_win_rate`.

Every figure is an `Estimate` as a mapping: value, low, high (95%), n, method.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cai import provenance
from cai.config import to_jsonable
from cai.constitution import Constitution
from cai.errors import InputError
from cai.eval import measures
from cai.eval.answers import answer_id
from cai.eval.policies import Policy, system_prompt
from cai.eval.refusal import RefusalVerdict
from cai.eval.suites import Suite
from cai.schema import EvalAnswer, PairJudgment

ROWS_FILE = "rows.jsonl"
FIGURE_NAMES = {"harmful": "harmless_rate", "benign-risky": "over_refusal_rate"}


@dataclass(frozen=True)
class Inputs:
    """Everything the report is computed from."""

    policies: Sequence[Policy]
    baseline: str
    suites: Sequence[Suite]
    answers: Mapping[str, EvalAnswer]
    judgments: Mapping[str, PairJudgment]
    """By pair id (= the policy's answer id)."""
    refusals: Mapping[str, RefusalVerdict]
    """By answer id, every answer of a refusal suite (`cai.eval.refusal_judge.eval_refusals`)."""
    refusal: dict[str, Any]
    """The classifier's provenance."""
    constitution: Constitution
    identities: Mapping[str, dict[str, Any]]
    judge: dict[str, Any] | None
    sampling: dict[str, Any]
    seed: int
    tie_margin: float
    resamples: int
    judging: dict[str, Any]
    cai_version: str


def build_report(x: Inputs) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(report.json, rows.jsonl) of an eval."""
    rows = {aid: _row(a) for aid, a in x.answers.items()}
    results: dict[str, dict[str, Any]] = {}
    for p in x.policies:
        results[p.name] = {s.name: _suite_result(x, p.name, s, rows) for s in x.suites}
    report = {"provenance": _provenance(x), "baseline": x.baseline, "results": results}
    return to_jsonable(report), [rows[answer_id(p.name, s.name, r.id)] for p in x.policies for s in x.suites
                                 for r in s.records]


def _row(a: EvalAnswer) -> dict[str, Any]:
    return {"id": a.id, "policy": a.policy, "suite": a.suite, "prompt_id": a.prompt_id, "answer": a.answer,
            "completion_tokens": a.completion_tokens, "finish_reason": a.finish_reason}


def _estimate(e: measures.Estimate) -> dict[str, Any]:
    return dataclasses.asdict(e)


def _suite_result(x: Inputs, policy: str, s: Suite, rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    mine = [x.answers[answer_id(policy, s.name, r.id)] for r in s.records]
    out: dict[str, Any] = {
        "n": len(mine),
        "mean_tokens": sum(a.completion_tokens for a in mine) / len(mine),
        "truncated": _estimate(measures.wilson(sum(a.finish_reason == "length" for a in mine), len(mine))),
    }
    if s.kind in FIGURE_NAMES:
        out.update(_refusal_rate(x, s, mine, rows))
    if policy == x.baseline:
        return out
    base = [x.answers[answer_id(x.baseline, s.name, r.id)] for r in s.records]
    drift = measures.length_drift([measures.AnswerLengths(a.prompt_id, a.completion_tokens, b.completion_tokens,
                                                          a.finish_reason == "length", b.finish_reason == "length")
                                   for a, b in zip(mine, base, strict=True)], resamples=x.resamples, seed=x.seed)
    out["length_drift"] = to_jsonable(dataclasses.asdict(drift))
    if s.kind == "judged":
        out.update(_win_rates(x, mine, base, rows))
    return out


def _refusal_rate(x: Inputs, s: Suite, mine: list[EvalAnswer], rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The suite's refusal rate; answers the classifier could not read are named, not counted."""
    refused, not_classified = [], []
    for a in mine:
        v = x.refusals[a.id]
        rows[a.id].update(refused=v.refused, **({"refusal_match": v.match} if x.refusal["classifier"] == "patterns"
                                                else {"refusal_p": v.p, "refusal_orders_agree": v.agree}))
        if v.refused is None:
            not_classified.append(a.prompt_id)
            rows[a.id].update(detail=v.detail)
        else:
            refused.append(v.refused)
    rate = _estimate(measures.refusal_rate(refused)) if refused else {"error": "no answer could be classified"}
    out = {FIGURE_NAMES[s.kind]: rate, "not_classified": not_classified}
    if x.refusal["classifier"] == "judge" and refused:
        # Near 0: the judge picked the same letter in both orders, i.e. read the letters, not the answers.
        agreed = [x.refusals[a.id].agree for a in mine if x.refusals[a.id].refused is not None]
        out["refusal_orders_agree"] = sum(map(bool, agreed)) / len(agreed)
    return out


def _win_rates(x: Inputs, mine: list[EvalAnswer], base: list[EvalAnswer],
               rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The judged figures of one policy on one suite; prompts the judge could not score
    (too long for its context) are counted in `not_judged` and left out."""
    comparisons, not_judged = [], []
    for a, b in zip(mine, base, strict=True):
        j = x.judgments[a.id]
        if j.verdict.status != "judged":
            not_judged.append(a.prompt_id)
            rows[a.id].update(judged=False, detail=j.verdict.detail)
            continue
        comparisons += measures.comparisons_from_judgment(a.prompt_id, j.verdict, policy_is_x=True,
                                                          policy_tokens=a.completion_tokens,
                                                          baseline_tokens=b.completion_tokens,
                                                          tie_margin=x.tie_margin)
    if not comparisons:
        return {"not_judged": not_judged}
    for score in measures.prompt_scores(comparisons):
        rows[next(a.id for a in mine if a.prompt_id == score.prompt_id)].update(
            judged=True, score=score.score, orders_agree=score.orders_agree)
    wr = measures.win_rate(comparisons, resamples=x.resamples, seed=x.seed)
    by = measures.win_rate_by_principle(comparisons, resamples=x.resamples, seed=x.seed)
    try:
        lc: dict[str, Any] = dataclasses.asdict(measures.length_controlled_win_rate(
            comparisons, resamples=max(1, x.resamples // 2), seed=x.seed))
    except InputError as e:  # length and quality cannot be told apart on these prompts
        lc = {"error": e.message, "fix": e.fix}
    return {"win_rate": dataclasses.asdict(wr), "win_rate_by_principle": {k: dataclasses.asdict(v)
                                                                           for k, v in by.items()},
            "length_controlled_win_rate": lc, "not_judged": not_judged}


def _provenance(x: Inputs) -> dict[str, Any]:
    c = x.constitution
    return {
        "cai_version": x.cai_version,
        "constitution": {"name": c.name, "version": c.version, "hash": c.hash, "path": c.path},
        "suites": {s.name: {"file": str(s.path), "kind": s.kind, "rows": len(s.records), "hash": s.hash}
                   for s in x.suites},
        "policies": {p.name: {"spec": p.spec, "recipe": p.recipe, **x.identities[p.name],
                              "system_prompt_hash": provenance.key(system_prompt(p, c)) if p.recipe else None}
                     for p in x.policies},
        "judge": None if x.judge is None else {**x.judge, "judging": x.judging, "tie_margin": x.tie_margin},
        "refusal": x.refusal,
        "sampling": x.sampling,
        "seed": x.seed,
        "intervals": {"resamples": x.resamples, "length_controlled_resamples": max(1, x.resamples // 2),
                      "seed": x.seed},
    }
