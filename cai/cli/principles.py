"""`cai principles check|show|diff`: validate, inspect and compare principle files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from cai import library, prompts
from cai.cli.root import app
from cai.constitution import (
    DEFAULT_PATH,
    Constitution,
    Templates,
    check_constitution,
    diff_constitutions,
    dump_constitution,
    lint,
    load_constitution,
)

principles_app = typer.Typer(
    help="Check, show and compare principle files (constitutions). Schema: docs/constitution.md.",
    no_args_is_help=True,
)
app.add_typer(principles_app, name="principles")

FileArg = Annotated[Path, typer.Argument(help="A principle file.")]
NAMES = "a principle file, or the name of one that ships with cai (`cai principles list`)"


def _label(path: Path) -> str:
    """How a checked file is named in the output: a packaged name with the file it stands for."""
    return library.describe(path) if library.is_name(path) and str(path) in library.library() else str(path)


def _console() -> Console:
    # Made per call: it writes to whatever sys.stdout is now (a pipe, a test runner).
    return Console(highlight=False, soft_wrap=True)


def _summary(c: Constitution) -> str:
    return f"{c.name} {c.version}, {len(c.principles)} principles, hash {c.hash}"


@principles_app.command("check")
def check(
    files: Annotated[list[Path] | None, typer.Argument(
        help=f"Principle files: paths, or names of packaged ones (default: {DEFAULT_PATH}, cai's "
             "packaged principles.yaml).", show_default=False)] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Fail on warnings too (for CI).")] = False,
) -> None:
    """Check principle files and print every problem.

    Each problem comes with file:line:column and a fix; a good file gets one summary line (name,
    version, principles, hash). Exits 1 if any file has an error (with --strict, a warning).
    """
    console = _console()
    files = files or [Path(DEFAULT_PATH)]
    bad, n_errors, n_warnings = 0, 0, 0
    for path in files:
        constitution, errors = check_constitution(path)
        if errors:
            bad += 1
            n_errors += len(errors)
            for e in errors:
                console.print(Text("error: ", style="bold red") + Text(str(e)))
            console.print(Text(f"{_label(path)}: {len(errors)} error{'s' * (len(errors) != 1)}", style="red"))
            continue
        assert constitution is not None
        console.print(Text(f"{_label(path)}: ") + Text("ok", style="bold green") + Text(f": {_summary(constitution)}"))
        for warning in lint(constitution):
            n_warnings += 1
            console.print(Text(f"{_label(path)}: ") + Text("warning: ", style="yellow") + Text(warning))
    if bad:
        console.print(Text(f"{n_errors} error{'s' * (n_errors != 1)} in {bad} of {len(files)} "
                           f"file{'s' * (len(files) != 1)}", style="bold red"))
        raise typer.Exit(1)
    if strict and n_warnings:
        console.print(Text(f"{n_warnings} warning{'s' * (n_warnings != 1)} (--strict)", style="bold yellow"))
        raise typer.Exit(1)


@principles_app.command("list")
def list_packaged() -> None:
    """List the principle files that ship with cai, by the name --constitution takes.

    `default` is what every stage uses when given no --constitution. The packaged example
    prompts are listed too.
    """
    console = _console()
    table = Table("name", "constitution", "principles", "hash", "file")
    for name, path in library.library().items():
        c = load_constitution(path)
        table.add_row(name, f"{c.name} {c.version}", str(len(c.principles)), c.hash, str(path))
    console.print(table)
    console.print(f"example prompts: {library.example_prompts()}", markup=False)


def _cut(text: str, width: int) -> str:
    """The first words of `text` that fit in `width` characters."""
    if len(text) <= width:
        return text
    return text[: width - 1].rsplit(" ", 1)[0] + " …"


@principles_app.command("show")
def show(
    file: Annotated[Path, typer.Argument(help=f"Show {NAMES}.")] = Path(DEFAULT_PATH),
    full: Annotated[bool, typer.Option("--full", help="Show whole texts, not their first words.")] = False,
    as_yaml: Annotated[bool, typer.Option("--yaml", help="Print the resolved constitution as one YAML "
                                                         "file (includes applied) instead.")] = False,
) -> None:
    """Show the resolved principles and the hash.

    One row per principle (includes applied): id, tags, weight, the chance of being drawn, and
    the first words of its critique, revision and compare texts.
    """
    c = load_constitution(file)
    console = _console()
    if as_yaml:
        console.print(dump_constitution(c), markup=False, end="")
        return
    console.print(Text(f"{c.name} {c.version}", style="bold") + Text(f"  ({c.path})"))
    console.print(f"hash {c.hash}", markup=False)
    if c.description:
        console.print(c.description, markup=False)
    table = Table(show_lines=True)
    table.add_column("id / tags", no_wrap=True)
    table.add_column("weight", justify="right", no_wrap=True)
    table.add_column("p", justify="right", no_wrap=True)
    table.add_column("critique / revision / compare")
    # Unless --full, one line per text, cut to what the terminal has left after the other
    # columns (4 columns: 5 borders + 8 padding; weight 6; p 5, as in "13.3%").
    id_width = max(len(x) for p in c.principles for x in (p.id, ", ".join(p.tags)))
    room = max(console.width - 13 - id_width - 6 - 5, 24)
    for p in c.principles:
        lines = [f"C: {p.critique}", f"R: {p.revision}", f"Q: {p.compare}"]
        if not full:
            lines = [_cut(line, room) for line in lines]
        table.add_row(Text(p.id, style="bold") + Text("\n" + ", ".join(p.tags), style="dim"),
                      f"{p.weight:g}", f"{c.probability(p.id):.1%}", Text("\n".join(lines)))
    console.print(table)
    defaults = Templates()
    custom = [k for k in Templates.__dataclass_fields__ if getattr(c.templates, k) != getattr(defaults, k)]
    console.print(f"templates: {'built-in, except ' + ', '.join(custom) if custom else 'built-in'}",
                  markup=False)
    console.print(f"few-shot: {len(c.critique_examples)} critique transcripts "
                  f"({prompts.fewshot_chars(c, 'critique')} chars), {len(c.comparison_examples)} "
                  f"comparisons ({prompts.fewshot_chars(c, 'judge')} chars)", markup=False)


@principles_app.command("diff")
def diff(
    old: Annotated[Path, typer.Argument(help=f"The old one: {NAMES}.")],
    new: Annotated[Path, typer.Argument(help=f"The new one: {NAMES}.")],
    exit_code: Annotated[bool, typer.Option("--exit-code", help="Exit 1 when they differ (like git diff).")] = False,
) -> None:
    """Compare two constitutions: principles added, removed and changed.

    Both files are resolved (includes applied) and compared by principle id and field; changes to
    the name, version, description, templates and few-shot examples are listed too.
    """
    a, b = load_constitution(old), load_constitution(new)
    d = diff_constitutions(a, b)
    console = _console()
    console.print(f"old: {old}  {_summary(a)}", markup=False)
    console.print(f"new: {new}  {_summary(b)}", markup=False)
    if d.empty:
        console.print("no differences", markup=False)
        return
    for pid in d.added:
        console.print(Text(f"+ added {pid}", style="green"))
    for pid in d.removed:
        console.print(Text(f"- removed {pid}", style="red"))
    for pid, changed in d.changed:
        console.print(Text(f"~ changed {pid}: {', '.join(changed)}", style="yellow"))
        p, q = a.get(pid), b.get(pid)
        for name in changed:
            before, after = getattr(p, name), getattr(q, name)
            if name in ("weight", "tags"):
                console.print(f"    {name}: {_short(before)} -> {_short(after)}", markup=False)
            else:
                console.print(f"    {name}:\n      - {before}\n      + {after}", markup=False)
    for what in d.other:
        field = what.split(".", 1)[0]
        if field in ("name", "version", "description"):
            console.print(f"~ {what}: {getattr(a, field)!r} -> {getattr(b, field)!r}", markup=False)
        else:
            console.print(f"~ {what} changed", markup=False)
    if exit_code:
        raise typer.Exit(1)


def _short(value: object) -> str:
    return f"[{', '.join(value)}]" if isinstance(value, tuple) else f"{value:g}" if isinstance(
        value, float) else str(value)
