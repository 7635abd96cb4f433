"""The principle files and example prompts that ship inside the package, and how a
`--constitution` value names one.

`cai/resources/` holds them (in a clone: symlinks to the editable originals at the top level,
`principles.yaml`, `constitution/*.yaml`, `examples/prompts.jsonl`, and the eval suites of
`data/eval/` as `eval/*.jsonl`; in a wheel: copies of those
files, laid out the same way so that relative `include`s still resolve). Reading them from the
package, never from the current folder, is what makes `cai revise --prompts my.jsonl` work in
any folder.

The rule for a `--constitution` value (docs/constitution.md): a bare word (no folder part, no
suffix), such as `default` or `hhh`, names a packaged file; anything else is a path. A value
that is not given means `default`, the packaged principles.yaml, whatever the current folder
holds.
"""

from __future__ import annotations

from pathlib import Path

from cai.config import did_you_mean
from cai.errors import ConstitutionError

DEFAULT = "default"
"""The name of cai's default constitution (the packaged principles.yaml)."""


def resources() -> Path:
    # A plain path, not importlib.resources: the loader follows `include`s between files, which
    # needs real files side by side (true of a wheel and an editable install alike).
    return Path(__file__).resolve().parent / "resources"


def library() -> dict[str, Path]:
    """Name -> file of every packaged constitution: `default`, then constitution/*.yaml by stem."""
    root = resources()
    found = {p.stem: p for p in sorted((root / "constitution").glob("*.yaml"))}
    return {DEFAULT: root / "principles.yaml", **found}


def example_prompts() -> Path:
    """The packaged copy of examples/prompts.jsonl (a few red-team and helpful prompts)."""
    return resources() / "examples" / "prompts.jsonl"


def eval_suites() -> dict[str, Path]:
    """Name -> file of the packaged eval suites (`cai eval`'s defaults: data/eval/*.jsonl), sorted."""
    return {p.stem: p for p in sorted((resources() / "eval").glob("*.jsonl"))}


def is_name(value: str | Path) -> bool:
    """A bare word such as `hhh` names a packaged constitution; `./hhh` or `hhh.yaml` is a path."""
    text = str(value)
    return bool(text) and "/" not in text and "\\" not in text and not Path(text).suffix


def resolve(value: str | Path) -> Path:
    """The principle file a `--constitution` value means (see the module docstring)."""
    if not is_name(value):
        return Path(value)
    files = library()
    if str(value) in files:
        return files[str(value)]
    raise ConstitutionError(
        f"no constitution named {str(value)!r} ships with cai (a word without '/' or a suffix names "
        f"a packaged one)",
        fix=did_you_mean(str(value), list(files)).replace("allowed:", "packaged:")
        + f"; for a file, write its path (./{value}, or with its .yaml suffix)")


def describe(value: str | Path) -> str:
    """What a `--constitution` value resolved to, for the line a run prints."""
    path = resolve(value)
    return f"{value} ({path})" if is_name(value) else str(path)
