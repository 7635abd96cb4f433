"""What `cai sft` and `cai rm train` share: the config fields every training run has and one
training loop with checkpoints (cai.checkpoint), exact resume, logging and a progress bar. The
training data is read by cai.data.read_rows.

A stage plugs into the loop with a `Task`: how to collate examples into a micro-batch and the
*summed* loss of a micro-batch. The loop divides by the number of units (tokens for SFT, pairs
for the reward model) in the whole optimizer step, so gradient accumulation gives the same
update as one large batch.

Resume is exact: a checkpoint holds the model, optimizer, scheduler, every RNG state and the
data position (the number of samples consumed; the sample order of each epoch is a seeded
permutation, so the position alone says which samples come next). A run folder therefore
continues bit-for-bit where it stopped, on the same hardware and thread count.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from cai.checkpoint import latest_checkpoint, rng_state, save_checkpoint, set_rng_state
from cai.errors import ConfigError, InputError, ResumeError
from cai.progress import step_progress

# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


def exact_div(a: int, b: int, what: str) -> int:
    """a // b, refusing a remainder with the numbers in the message (cleanrl's exact_div)."""
    if b <= 0 or a % b:
        raise ConfigError(f"{what}: {a} is not divisible by {b}",
                          fix="choose batch_size as a multiple of gradient_accumulation_steps")
    return a // b


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Fields every training command has. `SFTConfig` and `RMConfig` add their own."""

    out: str = ""
    """Output folder: the final model (a Hugging Face folder), config.yaml, metrics.jsonl,
    tb/ (TensorBoard) and checkpoints/. Running again with the same config resumes."""
    seed: int = 0
    """Seeds the new weights (the reward head), the data order and dropout."""
    epochs: float = 1.0
    """Passes over the training data (fractions allowed). Ignored when max_steps is set."""
    max_steps: int | None = None
    """Optimizer steps to run; overrides epochs."""
    batch_size: int = 16
    """Examples per optimizer step (SFT: conversations; reward model: pairs)."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step; each holds batch_size / gradient_accumulation_steps
    examples (local_batch_size). The update equals one batch of batch_size."""
    learning_rate: float = 1e-5
    """Peak AdamW learning rate."""
    lr_scheduler: Literal["linear", "cosine", "constant"] = "linear"
    """Decay after warmup: linear or cosine to 0, or constant."""
    warmup_ratio: float = 0.03
    """Fraction of the steps spent warming the learning rate up from 0."""
    weight_decay: float = 0.0
    """AdamW weight decay (never applied to biases and norm weights)."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this; 0 turns clipping off."""
    max_length: int = 1024
    """Longest tokenized example; longer ones are truncated (SFT: the end is cut; reward model:
    the start)."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """fp32, or bf16 autocast with fp32 master weights and optimizer state."""
    device: str = "auto"
    """auto (cuda when available, else cpu), cpu, cuda or cuda:N."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 30% more time."""
    log_every: int = 10
    """Write metrics (JSONL and TensorBoard) every N optimizer steps."""
    eval_every: int = 0
    """Evaluate on the held-out split every N steps (0: only at the end)."""
    checkpoint_every: int = 200
    """Save a resumable checkpoint every N optimizer steps (0: never; Ctrl-C still saves one)."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep while training."""
    delete_checkpoints_when_done: bool = True
    """Remove checkpoints/ once the final model is saved (they hold optimizer state: 3x the model)."""

    def __post_init__(self) -> None:
        if not self.out:
            raise ConfigError("out is not set", fix="pass --out DIR, or set out: in the config file")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.gradient_accumulation_steps < 1:
            raise ConfigError("gradient_accumulation_steps must be >= 1, "
                              f"got {self.gradient_accumulation_steps}")
        exact_div(self.batch_size, self.gradient_accumulation_steps,
                  f"batch_size {self.batch_size} / gradient_accumulation_steps")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1, got {self.max_steps}",
                              fix="leave it unset to use epochs")
        if self.max_steps is None and not self.epochs > 0:
            raise ConfigError(f"epochs must be > 0, got {self.epochs}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.max_length < 8:
            raise ConfigError(f"max_length must be >= 8 tokens, got {self.max_length}")
        for name in ("log_every", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.keep_checkpoints < 1:
            raise ConfigError(f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")

    @property
    def local_batch_size(self) -> int:
        """Examples per micro-batch (one forward/backward)."""
        return self.batch_size // self.gradient_accumulation_steps

    def total_steps(self, n_examples: int) -> int:
        """Optimizer steps of the run: max_steps, else ceil(epochs * n / batch_size)."""
        if self.max_steps is not None:
            return self.max_steps
        return max(1, math.ceil(self.epochs * n_examples / self.batch_size))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but torch sees no CUDA GPU",
                          fix="pass --device cpu (or auto)")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"device {name!r} is not a torch device",
                          fix="use auto, cpu, cuda or cuda:N") from e


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast (weights stay fp32), or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---------------------------------------------------------------------------------------------
# Data order, optimizer, scheduler
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=2)
def epoch_order(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    """The sample order of one epoch: a permutation that depends only on (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return tuple(torch.randperm(n, generator=g).tolist())


def batch_indices(n: int, seed: int, start: int, count: int) -> list[int]:
    """Indices of samples start .. start+count-1 of the endless stream of shuffled epochs."""
    out: list[int] = []
    while len(out) < count:
        epoch, pos = divmod(start + len(out), n)
        order = epoch_order(n, seed, epoch)
        out += order[pos:pos + count - len(out)]
    return out


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(0.9, 0.999), eps=1e-8)


def adam_steps(optimizer: torch.optim.Optimizer) -> int:
    """How many updates the optimizer has applied (AdamW counts them per parameter)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p)
            if state and "step" in state:
                return int(state["step"])
    return 0


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    from transformers import get_scheduler

    name = {"constant": "constant_with_warmup"}.get(cfg.lr_scheduler, cfg.lr_scheduler)
    return get_scheduler(name, optimizer, num_warmup_steps=round(cfg.warmup_ratio * total_steps),
                         num_training_steps=total_steps)


# ---------------------------------------------------------------------------------------------
# Metrics: JSONL + TensorBoard, and the progress bar
# ---------------------------------------------------------------------------------------------


class MetricsLog:
    """Appends {"step", "time", metrics...} to metrics.jsonl and mirrors scalars to TensorBoard.
    On resume, lines past the checkpoint's step are dropped (they are about to be redone)."""

    def __init__(self, out: Path, start_step: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        self.path = Path(out) / "metrics.jsonl"
        if self.path.exists():
            keep = [line for line in self.path.read_text().splitlines()
                    if line.strip() and _step_of(line) <= start_step]
            self.path.write_text("".join(line + "\n" for line in keep))
        self._f = self.path.open("a", encoding="utf-8")
        self.tb = SummaryWriter(str(Path(out) / "tb"), purge_step=start_step + 1 if start_step else None)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self._f.write(json.dumps({"step": step, "time": round(time.time(), 3), **metrics}) + "\n")
        self._f.flush()
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        self._f.close()
        self.tb.close()


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return 10**12  # a torn line: drop it


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------

Batch = dict[str, Any]


@dataclass
class Task:
    """What a stage plugs into `fit`.

    collate(examples) -> a micro-batch dict with tensors and three counts: "n" (units the loss
    is averaged over: tokens or pairs), "samples" and "tokens" (for throughput).
    loss(model, batch) -> (the loss *summed* over the batch's units, {metric: sum over units}).
    evaluate(model) -> {metric: value} on held-out data, or None.
    """

    collate: Callable[[list[Any]], Batch]
    loss: Callable[[torch.nn.Module, Batch], tuple[torch.Tensor, dict[str, float]]]
    evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def optimizer_step(model: torch.nn.Module, micro_batches: list[Batch], task: Task, optimizer, scheduler,
                   cfg: TrainConfig, device: torch.device) -> dict[str, float]:
    """One update from several micro-batches: each backward gets loss_sum / units in the whole
    step, so accumulation equals one large batch. Returns the step's averaged metrics."""
    units = sum(b["n"] for b in micro_batches)
    if units == 0:
        raise InputError("an optimizer step has no units to learn from (no assistant tokens or pairs)",
                         fix="check max_length: every example must keep at least one trained token")
    sums: dict[str, float] = defaultdict(float)
    for mb in micro_batches:
        with autocast(device, cfg.precision):
            loss_sum, metrics = task.loss(model, to_device(mb, device))
        (loss_sum / units).backward()
        for k, v in metrics.items():
            sums[k] += v
    max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    out = {f"train/{k}": v / units for k, v in sums.items()}
    out["train/grad_norm"] = float(grad_norm)
    out["train/lr"] = lr
    return out


@dataclass
class FitResult:
    steps: int
    """Optimizer steps done in total (including those before a resume)."""
    resumed_from: int
    """The step the run resumed from (0 for a fresh run)."""
    last_metrics: dict[str, float]
    eval_metrics: dict[str, float]


def _prepare(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> None:
    model.to(device)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        if hasattr(model.config, "use_cache"):
            model.config.use_cache = False
    model.train()


def _resume(out: Path, parts: dict[str, Any], n: int) -> int:
    """The step to start from: the newest checkpoint's (its parts and RNG state restored), or 0."""
    ckpt = latest_checkpoint(out, parts)
    if ckpt is None:
        return 0
    if ckpt.state.get("n_examples") != n:
        raise ResumeError(f"{ckpt.folder} was made from {ckpt.state.get('n_examples')} examples; the data "
                          f"now has {n}", fix="use the same data to resume, or a new --out folder")
    set_rng_state(ckpt.rng)
    return ckpt.step


def _evaluate(model: torch.nn.Module, task: Task, cfg: TrainConfig, device: torch.device) -> dict[str, float]:
    """task.evaluate in eval mode, without gradients, under the run's precision."""
    assert task.evaluate is not None
    model.eval()
    with torch.no_grad(), autocast(device, cfg.precision):
        metrics = {f"eval/{k}": v for k, v in task.evaluate(model).items()}
    model.train()
    return metrics


def fit(model: torch.nn.Module, examples: Sequence[Any], task: Task, cfg: TrainConfig, *,
        progress: bool = True, description: str = "training",
        on_step: Callable[[int], None] | None = None) -> FitResult:
    """Train `model` on `examples` with the shared loop; resumes from the newest checkpoint in
    cfg.out. The caller seeds (seed_everything) before building the model and saves it after.
    `on_step(step)` runs after each finished step (tests use it to simulate a crash)."""
    out, n = Path(cfg.out), len(examples)
    device = resolve_device(cfg.device)
    _prepare(model, cfg, device)
    total = cfg.total_steps(n)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, total)
    parts = {"model": model, "optimizer": optimizer, "scheduler": scheduler}
    start = _resume(out, parts, n)

    log = MetricsLog(out, start)
    last: dict[str, float] = {}
    evals: dict[str, float] = {}
    step = saved_at = start
    step_rng = rng_state()  # the RNG state at the end of the last finished step (what a checkpoint holds)

    def checkpoint(at: int, rng: dict[str, Any]) -> None:
        nonlocal saved_at
        save_checkpoint(out, at, parts, rng, {"samples_seen": at * cfg.batch_size, "n_examples": n,
                                              "total_steps": total}, cfg.keep_checkpoints)
        saved_at = at

    def run_eval(at: int) -> dict[str, float]:
        if task.evaluate is None:
            return {}
        metrics = _evaluate(model, task, cfg, device)
        log.log(at, metrics)
        return metrics

    window_t, window_samples = time.perf_counter(), 0
    try:
        with step_progress(total, start, description, progress) as update:
            while step < total:
                idx = batch_indices(n, cfg.seed, step * cfg.batch_size, cfg.batch_size)
                micro = [task.collate([examples[i] for i in idx[j:j + cfg.local_batch_size]])
                         for j in range(0, len(idx), cfg.local_batch_size)]
                metrics = optimizer_step(model, micro, task, optimizer, scheduler, cfg, device)
                if not math.isfinite(metrics.get("train/loss", 0.0)):
                    raise ConfigError(f"the training loss became {metrics['train/loss']} at step {step + 1}",
                                      fix="lower learning_rate, or use fp32 instead of bf16")
                step += 1
                step_rng = rng_state()
                window_samples += sum(b["samples"] for b in micro)
                elapsed = time.perf_counter() - window_t
                speed = window_samples / elapsed if elapsed > 0 else 0.0
                metrics |= {"train/epoch": step * cfg.batch_size / n, "perf/samples_per_s": speed,
                            "perf/tokens_per_step": sum(b["tokens"] for b in micro)}
                last = metrics
                update(step, speed, metrics.get("train/loss", float("nan")))
                if cfg.log_every and (step % cfg.log_every == 0 or step == total):
                    log.log(step, metrics)
                    window_t, window_samples = time.perf_counter(), 0
                if cfg.eval_every and step % cfg.eval_every == 0 and step < total:
                    evals = run_eval(step)
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total:
                    checkpoint(step, step_rng)
                if on_step is not None:
                    on_step(step)
        evals = run_eval(step)
    except KeyboardInterrupt:
        # The model and optimizer hold step `step` unless the interrupt hit between
        # optimizer.step() and the count (then the periodic checkpoint stays the resume point);
        # step_rng is the RNG as that step left it, so the resumed run redoes the next step exactly.
        if step > saved_at and adam_steps(optimizer) == step:
            checkpoint(step, step_rng)
        raise
    finally:
        log.close()
    return FitResult(steps=step, resumed_from=start, last_metrics=last, eval_metrics=evals)
