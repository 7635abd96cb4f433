"""Training curves from metrics.jsonl: a `cai ppo` run's reward, KL, response length and entropy
over steps (the names cai.ppo_metrics logs), and a `cai sft` / `cai rm train` run's loss and
accuracy (cai.train_common). Training rows and held-out evaluation rows (`eval/...`, logged at
the same steps by `cai ppo` every eval_every steps) share a chart where they measure the same
thing."""

from __future__ import annotations

from collections.abc import Sequence

from cai.report import svg
from cai.report.folders import Run
from cai.report.page import charts, figure, how, tiles
from cai.report.values import number

# Chart title -> (metric name, legend) of each line: names as cai.ppo_metrics writes them.
PPO_CHARTS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("Reward", (("objective/reward", "reward (batch)"), ("objective/score", "RM score (batch)"),
                ("eval/reward", "reward (held-out)"))),
    ("KL to the starting policy (per response)", (("objective/kl", "KL (batch)"), ("eval/kl", "KL (held-out)"))),
    ("Response length (tokens)", (("response/length", "length (batch)"), ("eval/response_length",
                                                                           "length (held-out)"))),
    ("Entropy (per token)", (("objective/entropy", "entropy (rollout)"),)),
)
TRAINING_CHARTS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("Loss", (("train/loss", "train"), ("eval/loss", "held-out"))),
    ("Accuracy (reward model: chosen scored above rejected)", (("train/accuracy", "train"),
                                                               ("eval/accuracy", "held-out"))),
)


def series(rows: Sequence[dict], name: str) -> tuple[list[float], list[float]]:
    """(steps, values) of one metric, in step order; where a resumed run logged a step twice,
    its last row counts."""
    by_step: dict[float, float] = {}
    for row in rows:
        step, value = number(row.get("step")), number(row.get(name))
        if step is not None and value is not None:
            by_step[step] = value
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def _charts(run: Run, layout: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]) -> list[str]:
    out = []
    for title, lines in layout:
        drawn = [svg.Series(legend, *series(run.rows, name)) for name, legend in lines]
        drawn = [s for s in drawn if s.xs]
        if drawn:
            out.append(figure(title, svg.line_chart(drawn, title)))
    return out


def _summary_tiles(run: Run) -> str:
    s = run.summary
    items = [(svg.num(v), label) for key, label in (("steps", "steps"), ("seconds", "seconds"),
                                                    ("eval_reward_start", "held-out reward at start"),
                                                    ("eval_reward_end", "held-out reward at end"),
                                                    ("kl_coef", "KL coefficient at end"),
                                                    ("response_tokens", "tokens generated in rollouts"),
                                                    ("train_loss", "last train loss"),
                                                    ("eval_accuracy", "held-out accuracy"))
             if (v := number(s.get(key))) is not None]
    return tiles(items) if items else ""


def ppo_section(runs: list[Run]) -> str:
    body = [how("Per PPO step: the reward the policy got (after the penalty for answers cut off at the token "
                "limit) and the reward model's raw score, on the step's batch and on held-out prompts; the KL to the "
                "starting policy; the answers' length; the sampling entropy. Healthy: the reward rises while KL grows "
                "slowly. Reward rising with length rising just as fast, or entropy collapsing toward 0, are the "
                "usual signs that the policy is gaming the reward model: check the reward-hacking panel and the "
                "samples.")]
    for run in runs:
        body += [f"<h3>{svg.esc(run.name)}</h3>", _summary_tiles(run)]
        drawn = _charts(run, PPO_CHARTS)
        body.append(charts(drawn) if drawn else '<p class="note">metrics.jsonl holds no step yet.</p>')
    return "".join(body)


def training_section(runs: list[Run]) -> str:
    body = [how("Loss per optimizer step of `cai sft` and `cai rm train` (and accuracy for a reward model), on the "
                "training batches and on the held-out split where there is one. A training loss that keeps falling "
                "while the held-out one rises is overfitting.")]
    for run in runs:
        stage = run.summary.get("stage", "sft or rm train")
        body += [f"<h3>{svg.esc(run.name)} <span class=\"tag\">{svg.esc(stage)}</span></h3>", _summary_tiles(run)]
        drawn = _charts(run, TRAINING_CHARTS)
        body.append(charts(drawn) if drawn else '<p class="note">metrics.jsonl holds no step yet.</p>')
    return "".join(body)
