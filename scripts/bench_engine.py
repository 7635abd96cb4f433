"""Generation throughput: vLLM against transformers on the same prompts, in one run.

    python scripts/bench_engine.py [--n 64] [--max-tokens 128]

The same N chat prompts (the first turns of data/mt-bench/questions.jsonl, repeated past its
80) with the same token budget go through vLLM's offline engine (bf16, eager: cai's
default) and through transformers (batched, left padding) in bf16 and fp32. Prints tokens/s
for each and the ratio, and writes them to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import machine, write_section  # noqa: E402

from cai import models  # noqa: E402
from cai.config import EngineConfig  # noqa: E402
from cai.engine.base import Sampling  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MT_BENCH = REPO / "data" / "mt-bench" / "questions.jsonl"


def load_prompts(n: int) -> list[list[dict]]:
    texts = [json.loads(line)["turns"][0] for line in MT_BENCH.read_text().splitlines()]
    texts = (texts * (n // len(texts) + 1))[:n]
    return [[{"role": "user", "content": t}] for t in texts]


def run(engine, prompts, sampling) -> dict:
    t0 = time.perf_counter()
    outs = engine.generate(prompts, sampling)
    dt = time.perf_counter() - t0
    toks = sum(o.completion_tokens for o in outs)
    return {"seconds": dt, "tokens": toks, "tok_s": toks / dt}


def child(backend: str, dtype: str, n: int, max_tokens: int) -> None:
    """Measure one engine (in a fresh process) and print its figures as the last line."""
    path = models.resolve("default")
    prompts = load_prompts(n)
    sampling = Sampling(max_tokens=max_tokens, temperature=0.7, seed=0)
    t0 = time.perf_counter()
    if backend == "vllm":
        from cai.engine.vllm import VLLMEngine

        eng = VLLMEngine(path, EngineConfig(dtype=dtype))
    else:
        from cai.engine.hf import HFEngine

        eng = HFEngine.load(path, EngineConfig(backend="hf", dtype=dtype, hf_batch_size=n))
    ready = time.perf_counter() - t0
    run(eng, prompts[:4], Sampling(max_tokens=8, temperature=0.7, seed=0))  # warm-up
    print(json.dumps({**run(eng, prompts, sampling), "ready_s": ready}))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = ap.parse_args()
    models.resolve("default")  # prepare once, before the timed children start
    results = {}
    # Each engine runs in its own process: vLLM binds the process's OpenMP threads and memory
    # (NUMA) for serving, which would slow a transformers run in the same process.
    for name, backend, dtype in [("vLLM (bf16 on CPU, eager)", "vllm", "auto"),
                                 (f"transformers (bfloat16, batch {args.n}, left padding)", "hf", "bfloat16"),
                                 (f"transformers (float32, batch {args.n}, left padding)", "hf", "float32")]:
        out = subprocess.run([sys.executable, __file__, "--child", backend, dtype, str(args.n), str(args.max_tokens)],
                             capture_output=True, text=True, check=True)
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
    base = results["vLLM (bf16 on CPU, eager)"]["tok_s"]
    hf_bf16 = results[f"transformers (bfloat16, batch {args.n}, left padding)"]["tok_s"]
    lines = ["| engine | ready in (s) | generation (s) | completion tokens | tokens/s | vLLM speed-up |",
             "|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['ready_s']:.1f} | {r['seconds']:.1f} | {r['tokens']} | {r['tok_s']:.0f} "
                     f"| {base / r['tok_s']:.2f}x |")
    body = (f"Command: `python scripts/bench_engine.py --n {args.n} --max-tokens {args.max_tokens}`  \n"
            f"Machine: {machine()}  \n"
            f"{args.n} MT-Bench first-turn prompts, up to {args.max_tokens} new tokens, temperature 0.7, "
            "the default model (SmolLM2-135M-Instruct).\n\n" + "\n".join(lines) +
            f"\n\nvLLM / transformers at equal precision (bf16): **{base / hf_bf16:.2f}x** (target: at least 3x).")
    print(body)
    if not args.no_write:
        write_section("Engine throughput (scripts/bench_engine.py)", body)


if __name__ == "__main__":
    main()
