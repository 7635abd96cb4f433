"""How often the eval measures' 95% intervals cover the truth, on simulated data whose truth is known.

    python scripts/eval_coverage.py              # 400 repetitions per size, about 12 s on one core
    python scripts/eval_coverage.py --reps 100   # quicker, noisier

Three cases, at 20, 40 and 160 prompts (prints the markdown table of docs/eval.md, "Intervals"):

- win rate: two equal policies under a position-biased judge that answers "(A)" 70% of the time;
  the truth is 0.5.
- length-controlled win rate: the policy is always 5 to 300 tokens longer, and the judge prefers
  it only for that, P(policy) = sigmoid(3 tanh(d / sd(d))), sampled as hard verdicts in both
  orders; the truth at zero length difference is 0.5.
- Wilson: 0.9 true share of yes verdicts (a harmless rate).
"""

from __future__ import annotations

import argparse
import random

import numpy as np

from cai.errors import InputError
from cai.eval.measures import Comparison, length_controlled_win_rate, wilson, win_rate


def both_orders(pid: str, first: float, second: float, policy_tokens: int = 0, baseline_tokens: int = 0):
    return [Comparison(pid, True, first, policy_tokens, baseline_tokens),
            Comparison(pid, False, second, policy_tokens, baseline_tokens)]


def position_biased_equal(n: int, rng: random.Random) -> list[Comparison]:
    out = []
    for i in range(n):  # "(A)" with probability 0.7: the policy wins 70% when first, 30% when second
        out += both_orders(f"p{i}", float(rng.random() < 0.7), float(rng.random() < 0.3))
    return out


def length_only(n: int, rng: np.random.Generator) -> list[Comparison]:
    delta = rng.integers(5, 300, size=n)
    p = 1 / (1 + np.exp(-3 * np.tanh(delta / delta.std(ddof=1))))
    out = []
    for i in range(n):
        out += both_orders(f"p{i}", float(rng.random() < p[i]), float(rng.random() < p[i]), 100 + int(delta[i]), 100)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=400)
    args = ap.parse_args()
    print(f"| prompts | win rate | length-controlled | Wilson |  ({args.reps} repetitions each)")
    print("|---|---|---|---|")
    for n in (20, 40, 160):
        covered, refused = [0, 0, 0], 0
        for r in range(args.reps):
            rng = random.Random(r)
            covered[0] += win_rate(position_biased_equal(n, rng), resamples=1000, seed=r).estimate.covers(0.5)
            try:
                lc = length_controlled_win_rate(length_only(n, np.random.default_rng(r)), resamples=500, seed=r)
                covered[1] += lc.estimate.covers(0.5)
            except InputError:  # every verdict a win: the measure refuses (docs/eval.md), no interval
                refused += 1
            covered[2] += wilson(sum(rng.random() < 0.9 for _ in range(n)), n).covers(0.9)
        lc_given = args.reps - refused
        print(f"| {n} | {covered[0] / args.reps:.3f} | {covered[1] / max(1, lc_given):.3f} "
              f"(refused {refused / args.reps:.1%}) | {covered[2] / args.reps:.3f} |")


if __name__ == "__main__":
    main()
