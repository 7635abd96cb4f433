"""Benchmark `cai revise` (issue 4, §6), all measured in one run on one engine:

(a) overhead: `run_revise` wall time against the raw engine doing the same work: every engine
    call of the run replayed as a plain batched `LLM.generate` over the same prompt tokens,
    with each request forced to generate exactly as many tokens as it did in the run
    (max_tokens = its count, ignore_eos), so both sides do identical work. Target: <= 10%.
(b) against a per-record loop (one record's whole chain at a time, as LangChain's
    ConstitutionalChain works): `run_revise` with chunk_size=1. Target: >= 10x slower than (a).
    `--loop-n` runs it on the first records only and extrapolates linearly (stated in the
    output and the docs).
(c) tokens/s of the run.

The prefix cache is cleared before each timed part, so none starts with another's cache.
Writes its own section of docs/benchmarks.md.

    .venv/bin/python scripts/bench_revise.py --n 128 --max-tokens 128
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DATA = REPO / "data" / "do-not-answer" / "prompts.jsonl"
SECTION = "## Revise (scripts/bench_revise.py)"

from cai.config import EngineConfig  # noqa: E402
from cai.engine import Engine, Sampling, make_engine  # noqa: E402
from cai.engine import tokens as tok  # noqa: E402
from cai.export import ExportConfig  # noqa: E402
from cai.revise import ReviseConfig, run_revise  # noqa: E402


class Recorder(Engine):
    """Passes every call to the real engine and keeps what the raw replay needs."""

    def __init__(self, inner):
        self.inner = inner
        self.model_name = inner.model_name
        self.calls: list[tuple[list, object, list, list[int]]] = []

    def generate(self, prompts, sampling, seeds=None):
        outs = self.inner.generate(prompts, sampling, seeds)
        self.calls.append((prompts, sampling, seeds, [o.completion_tokens for o in outs]))
        return outs

    def option_logprobs(self, prompts, options):
        return self.inner.option_logprobs(prompts, options)

    def render(self, conversation, add_generation_prompt=True):
        return self.inner.render(conversation, add_generation_prompt)

    def count_tokens(self, texts):
        return self.inner.count_tokens(texts)

    @property
    def max_model_len(self):
        return self.inner.max_model_len


def replay_raw(engine, calls) -> tuple[float, int]:
    """The run's engine calls as plain `LLM.generate` calls: same prompt tokens, same seeds,
    same number of generated tokens per request. Prompts are tokenized before the clock starts."""
    from vllm import SamplingParams

    llm = engine.llm
    prepared = []
    for prompts, sampling, seeds, counts in calls:
        ids = [{"prompt_token_ids": tok.prompt_ids(engine.tokenizer, p)}
               for p in prompts]
        params = [SamplingParams(max_tokens=max(1, n), ignore_eos=True, temperature=sampling.temperature,
                                 top_p=sampling.top_p, seed=s) for n, s in zip(counts, seeds, strict=True)]
        prepared.append((ids, params))
    llm.reset_prefix_cache()
    t0 = time.perf_counter()
    generated = 0
    for ids, params in prepared:
        outs = llm.generate(ids, params, use_tqdm=False)
        generated += sum(len(o.outputs[0].token_ids) for o in outs)
    return time.perf_counter() - t0, generated


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=128, help="prompts from do-not-answer")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=256, help="initial response and revisions")
    ap.add_argument("--critique-max-tokens", type=int, default=None, help="default: half of --max-tokens")
    ap.add_argument("--loop-n", type=int, default=None,
                    help="records for the per-record loop (default: all); fewer are extrapolated")
    ap.add_argument("--temperature", type=float, default=ReviseConfig.temperature, help="default: the stage's")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--write", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = ap.parse_args()
    crit = args.critique_max_tokens or max(1, args.max_tokens // 2)
    loop_n = min(args.loop_n or args.n, args.n)

    rows = [json.loads(x) for x in DATA.read_text().splitlines()]
    if args.n > len(rows):
        raise SystemExit(f"--n {args.n}: {DATA} has {len(rows)} prompts (data/README.md)")
    rows = rows[: args.n]
    work = Path(tempfile.mkdtemp(prefix="bench-revise-"))
    prompts = work / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (work / "loop.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:loop_n]))

    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    engine = make_engine(EngineConfig(dtype=args.dtype))
    load_s = time.perf_counter() - t0
    engine.generate([[{"role": "user", "content": "Hello"}]], Sampling(max_tokens=8))  # warm-up

    def cfg(out: Path, p: Path, chunk: int) -> ReviseConfig:
        return ReviseConfig(prompts=p, out=out, constitution=REPO / "principles.yaml", rounds=args.rounds,
                            max_tokens=args.max_tokens, critique_max_tokens=crit, temperature=args.temperature,
                            chunk_size=chunk, export=ExportConfig())

    # (a) cai, batched (chunk 256), then the raw replay of its calls. The time spent inside
    # LLM.generate during the run is also clocked: cai's own overhead is the rest of the run,
    # a figure that load from other jobs cannot skew between two separately timed runs.
    rec = Recorder(engine)
    engine.llm.reset_prefix_cache()
    in_llm = [0.0]
    original = engine.llm.generate

    def clocked(*a, **kw):
        t = time.perf_counter()
        try:
            return original(*a, **kw)
        finally:
            in_llm[0] += time.perf_counter() - t

    engine.llm.generate = clocked
    t0 = time.perf_counter()
    s = run_revise(cfg(work / "cai", prompts, 256), rec, progress=False)
    cai_s = time.perf_counter() - t0
    del engine.llm.generate  # back to the class's method
    raw_s, raw_tokens = replay_raw(engine, rec.calls)
    print(f"(a) cai {cai_s:.1f} s ({in_llm[0]:.1f} s inside LLM.generate), raw replay {raw_s:.1f} s "
          f"({len(rec.calls)} calls, {raw_tokens} tokens)", flush=True)

    # (b) the per-record loop: one record's whole chain at a time.
    engine.llm.reset_prefix_cache()
    t0 = time.perf_counter()
    s_loop = run_revise(cfg(work / "loop", work / "loop.jsonl", 1), engine, progress=False)
    loop_sub_s = time.perf_counter() - t0
    loop_s = loop_sub_s * args.n / loop_n
    print(f"(b) per-record loop {loop_sub_s:.1f} s for {loop_n} records"
          + (f" -> {loop_s:.1f} s extrapolated to {args.n}" if loop_n < args.n else ""), flush=True)

    overhead = cai_s / raw_s - 1
    own = cai_s / in_llm[0] - 1
    speedup = loop_s / cai_s
    tps = s.completion_tokens / cai_s
    cmd = "python scripts/bench_revise.py " + " ".join(sys.argv[1:])
    lines = [
        SECTION,
        "",
        f"`{cmd.strip()}` on {platform.machine()} with {os.cpu_count()} CPU cores (shared with other jobs), "
        f"vLLM (dtype {args.dtype}, eager, prefix caching), model {engine.model_name}. "
        f"{args.n} do-not-answer prompts, {args.rounds} rounds, max_tokens {args.max_tokens}, "
        f"critique_max_tokens {crit}, temperature {args.temperature}; engine ready in {load_s:.0f} s (not timed). "
        f"Load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end (2 cores).",
        "",
        "| | wall time | ratio | target |",
        "|---|---|---|---|",
        f"| (a) `run_revise`, chunks of 256 | {cai_s:.1f} s | overhead {overhead * 100:+.1f}% vs raw | <= 10% |",
        f"| (a) raw `LLM.generate` replay of the same {len(rec.calls)} calls | {raw_s:.1f} s | 1.00 | |",
        f"| (a) the same run, time inside its `LLM.generate` calls | {in_llm[0]:.1f} s | cai's own work "
        f"{own * 100:+.1f}% on top | <= 10% |",
        f"| (b) per-record loop (chunk_size 1) | {loop_s:.1f} s"
        + (f" (extrapolated from {loop_n} records: {loop_sub_s:.1f} s)" if loop_n < args.n else "")
        + f" | batched is {speedup:.1f}x faster | >= 10x |",
        "",
        f"(c) {s.completion_tokens} completion tokens ({s.prompt_tokens} prompt tokens, counted in full "
        f"although the prefix cache serves the shared prefixes) in {cai_s:.1f} s: **{tps:.0f} generated tokens/s**. "
        f"{s.records} records, {s.flagged} flagged ({', '.join(f'{k} {v}' for k, v in s.flags.items()) or '-'}); "
        f"exported {s.export.sft_rows} SFT rows and {s.export.prefs_rows} pairs.",
        "",
        "Two measures of (a): against a separate raw replay, and against the `LLM.generate` calls "
        "inside the same run (cai's own work is the rest of its wall time: rendering and tokenizing "
        "prompts, cleaning, records, fsync, exports). On a machine shared with other jobs the load "
        "changes between two separately timed runs, so the second is the reliable one there. "
        "The raw replay forces each request to generate exactly the tokens it generated in the run "
        "(ignore_eos), from the same prompt tokens and seeds, pre-tokenized before its clock starts. "
        "The per-record loop is the same code with chunk_size 1"
        + (f", run on the first {loop_n} records and scaled linearly to {args.n}" if loop_n < args.n else "")
        + f"; it made {s_loop.records} records.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    write_section(args.write, text)
    engine.close()


def write_section(path: Path, section: str) -> None:
    """Replace this benchmark's own section of docs/benchmarks.md (create the file if needed)."""
    old = path.read_text() if path.exists() else "# Benchmarks\n\n"
    start = old.find(SECTION)
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + section
    else:
        end = old.find("\n## ", start + len(SECTION))
        new = old[:start] + section + ("\n" + old[end + 1 :] if end >= 0 else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new.rstrip("\n") + "\n")


if __name__ == "__main__":
    main()
