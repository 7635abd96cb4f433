"""PPO step time, split by phase, and rollout throughput: transformers against vLLM with the
weight reload counted in.

    python scripts/bench_ppo.py                      # CPU: the default model (SmolLM2-135M)
    python scripts/bench_ppo.py --device cuda        # GPU: a random 1B Llama-shaped model, bf16 engine
    python scripts/bench_ppo.py --batch-size 4 --max-new-tokens 16 --steps 2 --threads 1   # small

1. PPO steps: `cai.ppo.train_ppo` for --steps steps, once with transformers rollouts (the
   default backend) and once with vLLM rollouts (the engine started once; the new weights are
   loaded into it after every update). Time per step from the run's own metrics: rollout
   (generation + the trainer's log-prob and value passes), scoring (the reward model), training
   (the PPO epochs) and, for vLLM, the weight reload. The reward model has the policy's shape
   and an untrained head: its judgment does not change the timing.
2. Rollout tokens/s: the same prompts and token budget, --rounds times. transformers generates
   with the policy in memory; vLLM reloads the policy's weights and then generates, and both
   are counted (that is what one PPO step pays).

On a CPU the policy is the default model; on CUDA a randomly initialized model of realistic
shape (Llama 3.2 1B's layers with the default tokenizer's vocabulary; random weights generate
until the token budget, which is what a throughput figure wants). Results go to
docs/benchmarks.md, section "## PPO (scripts/bench_ppo.py)", one row per (device, model,
backend, shape, threads), replaced when rerun.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from cai import models  # noqa: E402
from cai.config import EngineConfig  # noqa: E402
from cai.engine.base import Sampling  # noqa: E402

SECTION = "## PPO (scripts/bench_ppo.py)"
INTRO = """\
One PPO step of `cai ppo` split into its phases (seconds, mean over the timed steps), and rollout
throughput with the vLLM weight reload counted in (the engines alternate round by round). CPU
figures depend heavily on other load on the box (column "load": the 1-minute load average when
that part started; the machine these were taken on is shared, 2 cores). vLLM's CPU build binds
its own OpenMP threads when it starts, so it is started first and both backends run under the
same thread settings (column "threads"). No GPU was available for these figures; rerun
`python scripts/bench_ppo.py --device cuda` on one to add its rows.
"""
STEP_COLUMNS = ["date", "device", "model", "rollouts", "batch x tokens", "threads", "load", "rollout s",
                "scoring s", "training s", "weight sync s", "step s", "engine-trainer dlogp"]
ROLLOUT_COLUMNS = ["date", "device", "model", "engine", "batch x tokens", "threads", "load", "generate s",
                   "reload s", "tokens/s (reload counted)", "vs transformers"]
# Llama 3.2 1B's layers (hidden 2048, 16 layers, GQA 32/8, SwiGLU 8192) on the default tokenizer.
LLAMA_1B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                num_key_value_heads=8, max_position_embeddings=4096, tie_word_embeddings=True)
QUESTIONS = ["What color is the sky?", "Name three fruits.", "Why do leaves fall in autumn?",
             "What is the capital of France?", "Explain what a reward model is.", "How do bees make honey?",
             "Write a haiku about rain.", "What is 17 times 3?", "Give me a tip for sleeping better.",
             "What does a compiler do?", "Describe a cat in one sentence.", "Why is the sea salty?"]


def make_models(device: torch.device, root: Path) -> tuple[str, str, str]:
    """(policy folder, reward-model folder, model description)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, LlamaConfig

    from cai.reward import RewardModel

    default = models.resolve("default")
    tok = AutoTokenizer.from_pretrained(default)
    torch.manual_seed(0)
    if device.type == "cuda":
        cfg = LlamaConfig(**LLAMA_1B, vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        policy = root / "policy"
        AutoModelForCausalLM.from_config(cfg).save_pretrained(policy)
        tok.save_pretrained(policy)
        base, what = str(policy), "random 1B (Llama 3.2 1B layers)"
    else:
        base, what = default, "default (SmolLM2-135M)"
    with models.quiet_transformers():
        rm = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=torch.float32)
    RewardModel(rm, tok, max_length=1024).save(root / "rm")
    n = sum(p.numel() for p in rm.parameters()) / 1e6
    return base, str(root / "rm"), f"{what}, {n:.0f}M"


def write_prompts(path: Path, n: int) -> str:
    rows = [{"id": f"b{i}", "prompt": QUESTIONS[i % len(QUESTIONS)] + ("" if i < len(QUESTIONS) else f" ({i})")}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def ppo_steps(args, policy: str, rm: str, prompts: str, out: Path, engine=None) -> dict[str, float]:
    """Run train_ppo for warmup + steps steps; mean phase times over the timed steps."""
    from cai.ppo import PPOConfig, train_ppo

    backend = "vllm" if engine is not None else "hf"
    cfg = PPOConfig(policy=policy, reward_model=rm, prompts=prompts, out=str(out), steps=args.warmup + args.steps,
                    batch_size=args.batch_size, num_minibatches=args.num_minibatches, ppo_epochs=args.ppo_epochs,
                    max_new_tokens=args.max_new_tokens, checkpoint_every=0, sample_every=0, device=args.device,
                    precision=args.precision, rollout_engine=EngineConfig(backend=backend, dtype=args.engine_dtype),
                    engine_logprob_tolerance=args.tolerance, missing_eos_penalty=None)
    train_ppo(cfg, progress=False, rollout_engine=engine)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][args.warmup:]
    keys = ["time/rollout", "time/scoring", "time/training", "time/weight_sync", "time/step",
            "engine/logprob_diff_mean", "response/length"]
    return {k: sum(r[k] for r in rows) / len(rows) for k in keys if all(k in r for r in rows)}


def rollout_throughput(args, engines: dict, policy_model, conversations) -> dict[str, dict[str, float]]:
    """Alternate the engines round by round (so a change in the box's load hits both alike).
    An engine with `load_weights` reloads the policy's weights before each generate."""
    sampling = Sampling(max_tokens=args.max_new_tokens, temperature=0.7, top_p=1.0, seed=None)
    totals = {name: {"generate": 0.0, "reload": 0.0, "tokens": 0} for name in engines}
    for r in range(args.rounds + 1):  # round 0 warms up
        for name, engine in engines.items():
            t0 = time.perf_counter()
            if hasattr(engine, "load_weights"):
                engine.load_weights(policy_model.state_dict().items())
            t1 = time.perf_counter()
            outs = engine.generate(conversations, sampling, seeds=[1000 * r + i for i in range(len(conversations))])
            t2 = time.perf_counter()
            if r:
                totals[name]["reload"] += t1 - t0
                totals[name]["generate"] += t2 - t1
                totals[name]["tokens"] += sum(o.completion_tokens for o in outs)
    return {name: {"generate": t["generate"] / args.rounds, "reload": t["reload"] / args.rounds,
                   "tok_s": t["tokens"] / (t["generate"] + t["reload"])} for name, t in totals.items()}


def run(args) -> tuple[list[dict], list[dict]]:
    """Both measurements, in a temporary folder removed afterwards (models and runs: a few GB)."""
    root = Path(tempfile.mkdtemp(prefix="cai-bench-ppo-"))
    try:
        return _run(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _run(args, root: Path) -> tuple[list[dict], list[dict]]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cai.engine.hf import HFEngine
    from cai.train_common import resolve_device

    device = resolve_device(args.device)
    args.device = str(device)
    if args.threads:
        torch.set_num_threads(args.threads)
    policy_path, rm_path, model_desc = make_models(device, root)
    prompts = write_prompts(root / "prompts.jsonl", args.batch_size)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    shape = f"{args.batch_size} x {args.max_new_tokens}"
    step_rows, rollout_rows = [], []

    def common() -> dict[str, str]:
        # Threads and load as they are now: vLLM's CPU build binds its own OpenMP threads at start.
        return {"date": dt.date.today().isoformat(), "device": device_name, "model": model_desc,
                "batch x tokens": shape, "threads": str(torch.get_num_threads()), "load": f"{os.getloadavg()[0]:.1f}"}

    def step_row(backend: str, head: dict[str, str], t: dict[str, float]) -> dict:
        diff = t.get("engine/logprob_diff_mean")
        return {**head, "rollouts": backend, "rollout s": f"{t['time/rollout']:.2f}",
                "scoring s": f"{t['time/scoring']:.2f}", "training s": f"{t['time/training']:.2f}",
                "weight sync s": f"{t['time/weight_sync']:.2f}" if "time/weight_sync" in t else "-",
                "step s": f"{t['time/step']:.2f}", "engine-trainer dlogp": f"{diff:.2g}" if diff is not None else "-"}

    engine = None
    if not args.no_vllm:
        # Started first, so that both backends run under the same thread settings.
        from cai.engine.vllm import VLLMEngine

        t0 = time.perf_counter()
        engine = VLLMEngine(policy_path, EngineConfig(dtype=args.engine_dtype, gpu_memory_utilization=args.gpu_memory))
        print(f"vLLM ready in {time.perf_counter() - t0:.1f} s", flush=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(policy_path)
        policy = AutoModelForCausalLM.from_pretrained(policy_path, dtype=torch.float32).to(device).eval()
        conversations = [[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}] for i in range(args.batch_size)]
        engines = {"transformers (fp32)": HFEngine.from_model(policy, tokenizer, batch_size=args.batch_size)}
        if engine is not None:
            engines[f"vLLM ({args.engine_dtype}) + reload"] = engine
        print("rollout throughput ...", flush=True)
        head = common()
        tp = rollout_throughput(args, engines, policy, conversations)
        base = tp["transformers (fp32)"]["tok_s"]
        for name, t in tp.items():
            rollout_rows.append({**head, "engine": name, "generate s": f"{t['generate']:.2f}",
                                 "reload s": f"{t['reload']:.2f}" if "vLLM" in name else "-",
                                 "tokens/s (reload counted)": f"{t['tok_s']:.0f}",
                                 "vs transformers": f"{t['tok_s'] / base:.2f}x"})
        print(json.dumps(tp), flush=True)
        del policy, engines

        for backend, eng in [("transformers", None)] + ([(f"vLLM ({args.engine_dtype})", engine)] if engine else []):
            print(f"PPO steps, {backend} rollouts ...", flush=True)
            head = common()
            t = ppo_steps(args, policy_path, rm_path, prompts, root / f"ppo-{len(step_rows)}", engine=eng)
            step_rows.append(step_row(backend, head, t))
            print(json.dumps(t), flush=True)
    finally:
        if engine is not None:
            engine.close()
    return step_rows, rollout_rows


def upsert(rows: list[dict], new: list[dict], key: tuple[str, ...]) -> list[dict]:
    keys = {tuple(r[k] for k in key) for r in new}
    return [r for r in rows if tuple(r.get(k) for k in key) not in keys] + new


def parse_table(lines: list[str], columns: list[str]) -> list[dict]:
    rows = []
    for line in lines:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == len(columns) and cells[0] != "date" and not set(cells[0]) <= {"-"}:
            rows.append(dict(zip(columns, cells, strict=True)))
    return rows


def write_docs(path: Path, step_rows: list[dict], rollout_rows: list[dict]) -> None:
    """Upsert the rows into the section's two tables; other sections are left as they are."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == SECTION), None)
    old_steps, old_rollouts = [], []
    if start is None:
        before, after = lines, []
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        before, after = lines[:start], lines[end:]
        body = lines[start:end]
        split = next((i for i, line in enumerate(body) if line.startswith("Rollout throughput")), len(body))
        old_steps, old_rollouts = parse_table(body[:split], STEP_COLUMNS), parse_table(body[split:], ROLLOUT_COLUMNS)
    steps = upsert(old_steps, step_rows, ("device", "model", "rollouts", "batch x tokens", "threads"))
    rollouts = upsert(old_rollouts, rollout_rows, ("device", "model", "engine", "batch x tokens", "threads"))

    def table(columns: list[str], rows: list[dict]) -> list[str]:
        return (["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
                + ["| " + " | ".join(r[c] for c in columns) + " |" for r in rows])

    while before and not before[-1].strip():
        before.pop()
    section = ["", SECTION, "", INTRO.rstrip(), "", "Seconds per PPO step:", "", *table(STEP_COLUMNS, steps), "",
               "Rollout throughput (the same prompts and budget; vLLM reloads the weights before every generate):",
               "", *table(ROLLOUT_COLUMNS, rollouts), ""]
    out = "\n".join(before + section + (["", *after] if after else [])).rstrip() + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(out)
    tmp.replace(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--batch-size", type=int, default=None, help="responses per PPO step (CPU 8, GPU 64)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="response budget (CPU 32, GPU 128)")
    ap.add_argument("--num-minibatches", type=int, default=None, help="CPU 2, GPU 4")
    ap.add_argument("--ppo-epochs", type=int, default=None, help="CPU 1, GPU 4")
    ap.add_argument("--steps", type=int, default=2, help="timed PPO steps per backend")
    ap.add_argument("--warmup", type=int, default=1, help="untimed PPO steps first")
    ap.add_argument("--rounds", type=int, default=2, help="timed rollout rounds per engine")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default=None, help="training: fp32 on CPU, bf16 on GPU")
    ap.add_argument("--engine-dtype", default="bfloat16", help="vLLM dtype (bfloat16, float32, ...)")
    ap.add_argument("--tolerance", type=float, default=0.5,
                    help="engine-trainer log-prob tolerance for the run (the measured difference is reported)")
    ap.add_argument("--gpu-memory", type=float, default=0.3, help="vLLM gpu_memory_utilization (GPU: leave room)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--no-vllm", action="store_true")
    ap.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = ap.parse_args()
    gpu = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    for name, cpu_default, gpu_default in [("batch_size", 8, 64), ("max_new_tokens", 32, 128),
                                           ("num_minibatches", 2, 4), ("ppo_epochs", 1, 4),
                                           ("precision", "fp32", "bf16")]:
        if getattr(args, name) is None:
            setattr(args, name, gpu_default if gpu else cpu_default)
    step_rows, rollout_rows = run(args)
    for rows in (step_rows, rollout_rows):
        for r in rows:
            print("  ".join(f"{k}={v}" for k, v in r.items() if k not in ("date",)))
    if not args.no_write:
        write_docs(args.docs, step_rows, rollout_rows)
        print(f"written to {args.docs}")


if __name__ == "__main__":
    main()
