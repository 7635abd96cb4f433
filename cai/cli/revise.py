"""`cai revise`: a thin layer over `cai.revise.run_revise`."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from cai.cli.common import CONSTITUTION, FORCE, SEED, Flag, config_command, console, engine_flags, run_stage
from cai.cli.root import app
from cai.revise import ReviseConfig, ReviseSummary, run_revise

FLAGS = [
    Flag("prompts"), CONSTITUTION, Flag("out"), Flag("rounds"), Flag("direct", off="--critique"),
    Flag("max_tokens"), Flag("critique_max_tokens"), Flag("temperature"), Flag("top_p"), SEED, Flag("chunk_size"),
    Flag("prompt_column"), Flag("id_column"), Flag("split"), Flag("export.sft_all_rounds", off="--sft-final"),
    Flag("export.skip_flags", "--keep-flagged", off="", type=bool, value=lambda on: [] if on else None,
         help="Export flagged texts too (empty, degenerate, truncated, wrong_role)."),
    Flag("export.test_fraction"), *engine_flags("engine"),
]


def _revise(cfg: ReviseConfig, force: bool) -> None:
    print_summary(run_stage(cfg, run_revise, force))


config_command(app, "revise", ReviseConfig, _revise, flags=FLAGS, extra={"force": FORCE},
               required=("--prompts", "--out"),
               help="Critique and revise answers to a file of prompts under a constitution (the supervised CAI "
                    "stage): batched, resumable, with provenance; exports SFT data and preference pairs.")


def print_summary(s: ReviseSummary) -> None:
    e = s.export
    console.print(
        f"[bold green]done[/] {s.done} revised, {s.skipped} already there, {s.rejected} rejected"
        + (f" (see {s.out / 'rejects.jsonl'})" if s.rejected else "")
        + f"; {s.records} records, {s.flagged} flagged"
        + (f" ({', '.join(f'{k} {v}' for k, v in s.flags.items())})" if s.flags else "")
        + (f"; {s.stale} stale recomputed (made from other inputs than today's)" if s.stale else "")
        + (f"; {s.removed} removed (their prompts are no longer in the input)" if s.removed else "")
    )
    console.print(
        f"{s.prompt_tokens} prompt + {s.completion_tokens} completion tokens in {s.seconds:.1f} s "
        f"({s.tokens_per_s:.0f} tok/s)"
    )
    skipped = [f"{k} {v}" for k, v in e.sft_skipped.items()]
    console.print(
        f"exported {e.sft_rows} SFT rows, {e.prefs_rows} preference pairs "
        f"({', '.join(f'{k} {v}' for k, v in e.splits.items())})"
        + (f"; left out of SFT: {', '.join(skipped)}" if skipped else "")
        + (f"; pairs left out: {', '.join(f'{k} {v}' for k, v in e.prefs_skipped.items())}"
           if e.prefs_skipped else "")
        + (" (--keep-flagged exports flagged texts too)" if skipped or e.prefs_skipped else "")
    )
    if s.principle_usage:
        table = Table("principle", "drawn", title="principle usage", title_justify="left")
        for pid, n in s.principle_usage.items():
            table.add_row(pid, str(n))
        console.print(table)
    console.print(f"-> {escape(str(s.out))} (records.jsonl, sft.jsonl, prefs.jsonl, dataset/, summary.json)")
