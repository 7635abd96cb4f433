"""`cai generate`."""

from __future__ import annotations

from rich.markup import escape

from cai import terminal
from cai.cli.common import SEED, Flag, config_command, console, engine_flags
from cai.cli.root import app
from cai.generate import GenerateConfig, run_generate

FLAGS = [Flag("prompts"), Flag("out"), *engine_flags("engine"), Flag("max_tokens"), Flag("temperature"),
         Flag("top_p"), SEED, Flag("prompt_column")]


def _generate(cfg: GenerateConfig) -> None:
    terminal.capture(None)  # the output is one file, not a run folder: library chatter to stderr
    s = run_generate(cfg)
    console.print(
        f"[bold green]done[/] {s.done} generated, {s.skipped} already there, {s.rejected} rejected"
        + (f" (see {s.rejects_path})" if s.rejects_path else "")
        + (f"; {s.stale} stale recomputed" if s.stale else "")
        + (f"; {s.unfinished} unfinished (flagged)" if s.unfinished else "")
        + f"; {s.truncated} hit max_tokens; {s.prompt_tokens} prompt + {s.completion_tokens} completion tokens "
        f"in {s.seconds:.1f} s ({s.completion_tokens / max(s.seconds, 1e-9):.0f} tok/s) -> {escape(str(cfg.out))}"
    )


config_command(app, "generate", GenerateConfig, _generate, flags=FLAGS,
               help="Answer a file of prompts with one model (batched, resumable, with provenance).")
