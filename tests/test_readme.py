"""README.md's Quickstart is what CI runs: keep them from drifting apart."""

from __future__ import annotations

import re

from conftest import REPO


def quickstart_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    return [line for b in blocks for line in b.splitlines() if line.strip() and not line.startswith("#")]


def test_exactly_two_setup_commands_and_ci_runs_the_second_verbatim():
    cmds = quickstart_commands()
    assert len(cmds) == 2, cmds
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert cmds[1] in ci


def test_every_cli_command_in_the_readme_table_exists():
    from typer.main import get_command

    from cai.cli import app

    root = get_command(app)
    text = (REPO / "README.md").read_text()
    for cmd in re.findall(r"^\| `cai ([a-z-]+)", text, re.M):
        assert cmd in root.commands, f"README lists `cai {cmd}` but the CLI has no such command"
