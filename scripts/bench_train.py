"""Reward-model (or SFT) training throughput through cai's own training step.

    python scripts/bench_train.py                       # CPU: the default model (SmolLM2-135M), fp32
    python scripts/bench_train.py --device cuda         # GPU: a random 1B Llama-shaped model, bf16

Each step is `cai.train_common.optimizer_step` with the reward model's collate and loss (or
SFT's), so the figure is that of `cai rm train` minus data loading. Inputs are random token ids
of exactly --seq-len tokens (a pair is two such sequences).

Reported: samples/s (pairs/s for the reward model), tokens/s, seconds per optimizer step, peak
memory (CUDA: torch's max allocated; CPU: the process's peak RSS), achieved TFLOP/s and, on a
GPU of known peak, model FLOPs utilization. Training FLOPs per token follow PaLM (Chowdhery et
al. 2022, appendix B) as nanoGPT does: 6 * N + 12 * n_layer * d_model * seq_len, with N the
parameters that multiply activations (embeddings excluded: a lookup is not a matmul; the
reward model has no LM head). The attention term counts the full (non-causal) score matrix.

Results go to docs/benchmarks.md, section "## Training (scripts/bench_train.py)": one table row
per (device, task, model, precision, batch, sequence length), replaced when rerun.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cai.train_common import (  # noqa: E402
    Task,
    TrainConfig,
    make_optimizer,
    make_scheduler,
    optimizer_step,
    resolve_device,
)

# Dense bf16 tensor-core peaks (no sparsity), from NVIDIA's data sheets.
PEAK_BF16_FLOPS = [("H200", 989.4e12), ("H100 PCIe", 756.0e12), ("H100 NVL", 835.0e12), ("H100", 989.4e12),
                   ("A100", 312.0e12), ("L40S", 362.0e12), ("L4", 121.0e12)]
# Llama 3.2 1B's shape (hidden 2048, 16 layers, GQA 32/8 heads, SwiGLU 8192, 128k vocabulary).
LLAMA_1B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0,
                tie_word_embeddings=True)
SECTION = "## Training (scripts/bench_train.py)"
INTRO = """\
Optimizer steps of cai's training loop (`optimizer_step` with the reward model's or SFT's loss) on
random token ids of a fixed length; see the script's docstring for the FLOP count. Samples are
pairs for the reward model (two sequences each) and conversations for SFT. CPU figures depend
heavily on other load on the box (column "load": the 1-minute load average at the start); on a
shared 2-core machine two OpenMP threads can stall each other, so the thread count is given.
"""
COLUMNS = ["date", "device", "task", "model", "precision", "batch x seq", "threads", "load",
           "samples/s", "tokens/s", "s/step", "peak memory", "TFLOP/s", "MFU"]


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((f for key, f in PEAK_BF16_FLOPS if key in name), None)


def build_model(name: str, task: str, device: torch.device):
    """(model, description, n_layers, d_model) for `default` (SmolLM2-135M) or `random-1b`."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, LlamaConfig

    head = AutoModelForSequenceClassification if task == "rm" else AutoModelForCausalLM
    if name == "random-1b":
        cfg = LlamaConfig(**LLAMA_1B, num_labels=1, pad_token_id=0)
        with torch.device(device):
            model = head.from_config(cfg, dtype=torch.float32)
    else:
        from cai import models

        path = models.resolve(name)
        with models.quiet_transformers():
            kw = {"num_labels": 1} if task == "rm" else {}
            model = head.from_pretrained(path, dtype=torch.float32, **kw).to(device)
        cfg = model.config
    return model, cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size


def matmul_params(model, task: str) -> int:
    """Parameters that multiply activations: all but the input embedding (an LM head counts)."""
    emb = model.get_input_embeddings().weight
    n = sum(p.numel() for p in model.parameters() if p is not emb)
    if task == "sft" and model.get_output_embeddings().weight is emb:
        n += emb.numel()  # a tied LM head is a matmul too
    return n


def make_task(task: str, seq_len: int, vocab: int, pad_id: int):
    """A Task and a factory of random examples of exactly seq_len tokens."""
    g = torch.Generator().manual_seed(0)

    def ids() -> list[int]:
        return torch.randint(3, vocab, (seq_len,), generator=g).tolist()

    if task == "rm":
        from cai.reward import collate_pairs, pair_loss

        return (Task(collate=lambda exs: collate_pairs(exs, pad_id, 0.0), loss=pair_loss),
                lambda: {"chosen": ids(), "rejected": ids(), "p": 1.0, "margin": 0.0}, 2)
    from cai.sft import collate, loss_sum

    def example() -> dict:
        x = ids()
        return {"input_ids": x, "labels": x}

    return Task(collate=lambda exs: collate(exs, pad_id), loss=loss_sum), example, 1


def run(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    model_name = args.model or ("random-1b" if device.type == "cuda" else "default")
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    load = os.getloadavg()[0]
    torch.manual_seed(0)
    model, n_layer, d_model, vocab = build_model(model_name, args.task, device)
    model.train()
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    cfg = TrainConfig(out="-", batch_size=args.batch_size, gradient_accumulation_steps=args.grad_accum,
                      precision=precision, max_length=args.seq_len, warmup_ratio=0.0, device=str(device))
    task, example, seqs_per_sample = make_task(args.task, args.seq_len, vocab, pad_id=0)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, args.warmup + args.steps)
    batches = [[task.collate([example() for _ in range(cfg.local_batch_size)])
                for _ in range(cfg.gradient_accumulation_steps)] for _ in range(2)]

    def step(i: int) -> None:
        optimizer_step(model, batches[i % 2], task, optimizer, scheduler, cfg, device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for i in range(args.warmup):
        step(i)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for i in range(args.steps):
        step(i)
    sync()
    seconds = (time.perf_counter() - t0) / args.steps

    tokens = args.batch_size * seqs_per_sample * args.seq_len  # per optimizer step
    n_params = matmul_params(model, args.task)
    flops = tokens * (6 * n_params + 12 * n_layer * d_model * args.seq_len)
    peak = peak_flops(device)
    if device.type == "cuda":
        memory = torch.cuda.max_memory_allocated(device)
        device_name = torch.cuda.get_device_name(device)
    else:
        memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
        device_name = f"CPU ({os.cpu_count()} cores)"
    total_params = sum(p.numel() for p in model.parameters())
    return {
        "date": dt.date.today().isoformat(), "device": device_name, "task": args.task,
        "model": f"{model_name} ({total_params / 1e6:.0f}M)", "precision": precision,
        "batch x seq": f"{args.batch_size} x {args.seq_len}", "threads": str(torch.get_num_threads()),
        "load": f"{load:.1f}", "samples/s": f"{args.batch_size / seconds:.2f}",
        "tokens/s": f"{tokens / seconds:,.0f}", "s/step": f"{seconds:.2f}",
        "peak memory": f"{memory / 2**30:.2f} GiB", "TFLOP/s": f"{flops / seconds / 1e12:.3f}",
        "MFU": f"{flops / seconds / peak:.1%}" if peak else "-",
    }


def write_docs(path: Path, row: dict) -> None:
    """Upsert `row` into the section's table (keyed by device, task, model, precision, shape,
    threads); other sections of the file are left as they are."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == SECTION), None)
    if start is None:
        before, after, rows = lines, [], []
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        before, after = lines[:start], lines[end:]
        rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines[start:end]
                if line.startswith("| ") and not line.startswith("| date")]
        rows = [dict(zip(COLUMNS, r, strict=False)) for r in rows if len(r) == len(COLUMNS)]
    key = ("device", "task", "model", "precision", "batch x seq", "threads")
    rows = [r for r in rows if tuple(r[k] for k in key) != tuple(row[k] for k in key)] + [row]
    table = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    table += ["| " + " | ".join(r[c] for c in COLUMNS) + " |" for r in rows]
    while before and not before[-1].strip():
        before.pop()
    section = ["", SECTION, "", INTRO.rstrip(), "", *table, ""]
    out = "\n".join(before + section + (after if after else [])).rstrip() + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(out)
    tmp.replace(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--task", choices=["rm", "sft"], default="rm")
    ap.add_argument("--model", default=None,
                    help="default (SmolLM2-135M; CPU default), random-1b (GPU default), or a model folder")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default=None, help="fp32 on CPU, bf16 on GPU")
    ap.add_argument("--batch-size", type=int, default=None, help="samples per step (CPU 4, GPU 8)")
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (CPU 256, GPU 1024)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (CPU 4, GPU 10)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (CPU 1, GPU 3)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = ap.parse_args()
    gpu = resolve_device(args.device).type == "cuda"
    for name, cpu_default, gpu_default in [("batch_size", 4, 8), ("seq_len", 256, 1024), ("steps", 4, 10),
                                           ("warmup", 1, 3)]:
        if getattr(args, name) is None:
            setattr(args, name, gpu_default if gpu else cpu_default)
    row = run(args)
    width = max(map(len, row))
    for k, v in row.items():
        print(f"{k:>{width}}  {v}")
    if not args.no_write:
        write_docs(args.docs, row)
        print(f"written to {args.docs}")


if __name__ == "__main__":
    main()
