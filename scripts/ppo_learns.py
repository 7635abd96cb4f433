"""The RL stage learns, on a CPU, in minutes: PPO on the default model (SmolLM2-135M) against a
reward model trained with cai's own `rm` API on a synthetic preference whose property can also
be counted: a polite closing line ("Hope this helps!").

    python scripts/ppo_learns.py --threads 2      # about 4 minutes on 2 CPU cores
    python scripts/ppo_learns.py --out runs/learns --steps 12 --threads 2   # longer

1. Task. Simple questions, each after one example exchange whose answer ends with "Hope this
   helps!" (without the example the 135M model never closes politely: 0 of 12 samples; with
   it, 1 to 3 answers in 12 do, which gives PPO something to reinforce).
2. Reward model. `cai.reward.train_reward` on pairs of short answers to the training questions:
   chosen ends with the closing line, rejected is the same answer without it or with a plain
   ending. Held-out questions are never seen by the reward model or PPO.
3. PPO. `cai.ppo.train_ppo` from the default model with transformers rollouts, evaluated on
   the held-out questions before training and every `--eval-every` steps with the same seeds.
4. Curve. From the run's eval_samples.jsonl: per evaluation, the mean reward-model score
   (normalized, the model's own score, not the EOS-penalized reward), the share of responses
   with the closing line (counted with a regular expression) and the mean KL to the reference
   (nats per response). Printed as a markdown table (docs/ppo.md, "Does it learn?").

tests/test_ppo.py runs the same `run()` and asserts that the score and the counted share rise
well above the start while the KL stays under its bound.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CLOSING = "Hope this helps!"
POLITE = re.compile(r"hope (this|that|it) helps", re.IGNORECASE)
PLAIN_ENDINGS = ["That is the answer.", "That is all.", "End of answer."]
SYSTEM = "Answer in one short sentence."
EXAMPLE = [{"role": "user", "content": "What is the color of snow?"},
           {"role": "assistant", "content": f"Snow is white. {CLOSING}"}]
QA = [("What color is the sky?", "The sky is blue."), ("What is 2 + 2?", "2 + 2 is 4."),
      ("Name a fruit.", "An apple is a fruit."), ("What is the capital of France?", "The capital of France is Paris."),
      ("Is ice cold?", "Yes, ice is cold."), ("How many legs does a dog have?", "A dog has four legs."),
      ("What is the opposite of hot?", "The opposite of hot is cold."), ("Which animal says moo?", "A cow says moo."),
      ("What do bees make?", "Bees make honey."), ("What is the largest planet?", "Jupiter is the largest planet."),
      ("How many days are in a week?", "A week has seven days."), ("What shape is a ball?", "A ball is round."),
      ("What is ice made of?", "Ice is made of water."), ("Name a primary color.", "Red is a primary color."),
      ("What do cows drink?", "Cows drink water."), ("What is the sun?", "The sun is a star."),
      ("Which season is the coldest?", "Winter is the coldest season."),
      ("What is the color of grass?", "Grass is green."), ("How many hours are in a day?", "A day has 24 hours."),
      ("What is frozen rain called?", "Frozen rain is called sleet."),
      # held out from here on
      ("What do fish live in?", "Fish live in water."), ("Name a bird.", "A robin is a bird."),
      ("What is the color of a banana?", "A banana is yellow."), ("How many wheels does a bicycle have?",
                                                                 "A bicycle has two wheels."),
      ("What do we breathe?", "We breathe air."), ("Which animal barks?", "A dog barks."),
      ("What is the first month of the year?", "January is the first month."),
      ("What falls from clouds?", "Rain falls from clouds."), ("What do plants need to grow?",
                                                               "Plants need light and water."),
      ("Where do penguins live?", "Penguins live in cold places."), ("What is the color of milk?", "Milk is white."),
      ("How many minutes are in an hour?", "An hour has sixty minutes.")]
N_TRAIN = 20


def has_closing(text: str) -> bool:
    """The counted property: the response closes with "hope this/that/it helps"."""
    return bool(POLITE.search(text))


def conversation(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, *EXAMPLE, {"role": "user", "content": question}]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def write_task(root: Path, seed: int = 0) -> dict[str, str]:
    """prefs.jsonl (two pairs per training question), train.jsonl and eval.jsonl."""
    rng = random.Random(seed)
    pairs = []
    for i, (q, a) in enumerate(QA[:N_TRAIN]):
        pairs.append({"id": f"{i}-plain", "prompt": conversation(q), "chosen": f"{a} {CLOSING}", "rejected": a})
        pairs.append({"id": f"{i}-ending", "prompt": conversation(q), "chosen": f"{a} {CLOSING}",
                      "rejected": f"{a} {rng.choice(PLAIN_ENDINGS)}"})
    return {"prefs": write_jsonl(root / "prefs.jsonl", pairs),
            "train": write_jsonl(root / "train.jsonl", [{"id": f"t{i}", "prompt": conversation(q)}
                                                         for i, (q, _) in enumerate(QA[:N_TRAIN])]),
            "eval": write_jsonl(root / "eval.jsonl", [{"id": f"e{i}", "prompt": conversation(q)}
                                                       for i, (q, _) in enumerate(QA[N_TRAIN:])])}


def train_rm(root: Path, prefs: str) -> dict:
    from cai.reward import RMConfig, train_reward

    return train_reward(RMConfig(prefs=prefs, base="default", out=str(root / "rm"), max_steps=4, batch_size=8,
                                 learning_rate=5e-5, warmup_ratio=0.0, max_length=160, checkpoint_every=0,
                                 log_every=1), progress=False)


def curve(out: Path) -> list[dict[str, float]]:
    """Per evaluation step: mean RM score, share with the closing line, mean KL, mean length."""
    by_step: dict[int, list[dict]] = {}
    for line in (out / "eval_samples.jsonl").read_text().splitlines():
        row = json.loads(line)
        by_step.setdefault(row["step"], []).append(row)
    return [{"step": step, "score": sum(r["score"] for r in rows) / len(rows),
             "closing": sum(has_closing(r["response"]) for r in rows) / len(rows),
             "kl": sum(r["kl"] for r in rows) / len(rows), "n": len(rows)}
            for step, rows in sorted(by_step.items())]


def run(root: Path, steps: int = 8, eval_every: int = 2, threads: int | None = None) -> dict:
    """Task, reward model, PPO; returns {"rm": rm summary, "ppo": ppo summary, "curve": [...],
    "max_kl": bound, "seconds": wall time}."""
    import torch

    from cai.ppo import PPOConfig, train_ppo

    if threads:
        torch.set_num_threads(threads)
    t0 = time.time()
    root.mkdir(parents=True, exist_ok=True)
    task = write_task(root)
    rm = train_rm(root, task["prefs"])
    cfg = PPOConfig(policy="default", reward_model=str(root / "rm"), prompts=task["train"],
                    eval_prompts=task["eval"], out=str(root / "ppo"), max_new_tokens=24, steps=steps,
                    batch_size=8, num_minibatches=2, ppo_epochs=2, learning_rate=1e-5, lr_scheduler="constant",
                    kl_coef=0.05, max_kl=10.0, eval_every=eval_every, checkpoint_every=0, sample_every=0)
    ppo = train_ppo(cfg, progress=False)
    return {"rm": rm, "ppo": ppo, "curve": curve(root / "ppo"), "max_kl": cfg.max_kl,
            "seconds": round(time.time() - t0, 1)}


def markdown(result: dict) -> str:
    lines = ["| step | RM score (held out) | with the closing line | KL (nats per response) |",
             "|---:|---:|---:|---:|"]
    lines += [f"| {r['step']} | {r['score']:+.3f} | {r['closing']:.0%} ({round(r['closing'] * r['n'])}/{r['n']}) "
              f"| {r['kl']:.3f} |" for r in result["curve"]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/ppo_learns", help="work folder (task, reward model, PPO run)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--eval-every", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    result = run(Path(args.out), args.steps, args.eval_every, args.threads)
    print(markdown(result))
    print(f"\nreward model: train accuracy {result['rm']['train_accuracy']}; PPO {result['ppo']['steps']} steps; "
          f"{result['seconds']} s in all")


if __name__ == "__main__":
    main()
