"""How a `cai` stage command is declared: one flag per config field, the field's docstring as help.

A stage owns one config dataclass with a docstring under every field (cai.config). Its command
is `config_command(group, name, Config, run, help, flags=...)`: each `Flag` names a config field
(a dotted path into a nested section: `engine.model`), and its help is that field's docstring,
with the field's type and default, so the flags, the YAML keys and the docs cannot drift apart.
A flag left out is None and does not override the YAML file; nested sections given in part are
filled in by `cai.config.load`. Precedence: defaults < --config YAML < flags.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import typer
from rich.markup import escape

from cai import config, library, terminal
from cai.errors import ConfigError

console = terminal.err

Extra = tuple[Any, Any]
"""A parameter of a command that is not a config field: (annotation, typer.Option(...))."""
FORCE: Extra = (bool, typer.Option(False, "--force", help="Resume into a folder made with a different config."))
QUIET: Extra = (bool, typer.Option(False, "--quiet", help="No progress bar."))


@dataclass(frozen=True)
class Flag:
    """A command-line flag that sets one config field."""

    field: str
    """The field it sets: a name, or a dotted path into a nested section (`engine.model`)."""
    name: str = ""
    """The flag (`--judge`); default: the field's own name, `max_model_len` -> `--max-model-len`."""
    off: str | None = None
    """A bool field's off switch (`--critique`); default `--no-NAME`; "" for none (an on-only switch)."""
    short: str = ""
    """A short option (`-k`)."""
    help: str = ""
    """Only where the flag means more than the field (`--keep-flagged`, `--policy`); default: the
    field's docstring."""
    value: Callable[[Any], Any] | None = None
    """The field's value from the flag's (None: leave the field alone); default: the flag's value."""
    type: Any = None
    """What the flag parses, where it is not the field's type."""
    show_default: bool = True

    @property
    def flag(self) -> str:
        return self.name or "--" + self.field.rpartition(".")[2].replace("_", "-")

    @property
    def param(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


def field_flags(cls: type) -> list[Flag]:
    """A flag for every field of `cls` but nested sections: the class's own fields first, then
    the ones it inherits (a stage's settings before the shared training ones)."""
    hints = typing.get_type_hints(cls)
    own = set(cls.__dict__.get("__annotations__", {}))
    return [Flag(f.name) for f in sorted(dataclasses.fields(cls), key=lambda f: f.name not in own)
            if not _section_class(hints[f.name])]


def engine_flags(section: str, model: bool = True) -> list[Flag]:
    """The engine flags of a command whose engine is config section `section`."""
    return [Flag(f"{section}.{name}", off=off) for name, off in (
        ("model", None), ("backend", None), ("dtype", None), ("max_model_len", None), ("base_url", None),
        ("served_model_name", None), ("trust_remote_code", None), ("enforce_eager", "--compile"),
    ) if model or name != "model"]


def judging_flags() -> list[Flag]:
    """The judging flags shared by `cai label` and `cai judge eval` (YAML section `judging:`)."""
    return [Flag("judging.principles_per_pair"), Flag("judging.cot"), Flag("judging.cot_max_tokens"),
            Flag("judging.cot_clamp")]


CONSTITUTION = Flag("constitution", show_default=False, help=(
    "Principle file, or the name of one that ships with cai (`cai principles list`). "
    "Default: `default`, cai's packaged principles.yaml (not a file of the current folder)."))
SEED = Flag("seed")
"""The run seed (each stage's config documents what it seeds)."""


def config_command(group: typer.Typer, name: str, cls: type, run: Callable[..., None], help: str,
                   flags: Sequence[Flag] | None = None, extra: dict[str, Extra] | None = None,
                   required: Sequence[str] = ()) -> None:
    """Register `name` on `group`: --config, then `flags` (default: `field_flags(cls)`), then `extra`
    ({param: Extra}). `required`: flags that must be given when there is no --config file.
    `run(cfg, **extra_values)` does the work."""
    flags, extra = list(field_flags(cls) if flags is None else flags), extra or {}
    params = [inspect.Parameter("config_file", inspect.Parameter.KEYWORD_ONLY, annotation=Path | None,
                                default=typer.Option(None, "--config", help="YAML config file; flags override it."))]
    params += [_parameter(cls, f) for f in flags]
    params += [inspect.Parameter(p, inspect.Parameter.KEYWORD_ONLY, annotation=ann, default=opt)
               for p, (ann, opt) in extra.items()]

    def command(**kwargs: Any) -> None:
        extras = {k: kwargs.pop(k) for k in extra}
        config_file = kwargs.pop("config_file")
        if config_file is None:
            _check_required([f for f in flags if f.flag in required], kwargs)
        run(load_config(cls, flags, config_file, kwargs), **extras)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = help
    group.command(name, help=help)(command)


def load_config(cls: type, flags: Sequence[Flag], config_file: Path | None, values: dict[str, Any]) -> Any:
    """The config: defaults < `config_file` < the flags given (`values`: {flag param: value},
    None = not given)."""
    overrides: dict[str, Any] = {}
    for f in flags:
        value = values.get(f.param)
        if value is not None and f.value is not None:
            value = f.value(value)
        if value is None:
            continue
        *sections, leaf = f.field.split(".")
        target = overrides
        for s in sections:
            target = target.setdefault(s, {})
        target[leaf] = value
    return config.load(cls, config_file, overrides)


def say_constitution(value: str | Path) -> None:
    """Say which principle file a run used (first line of its summary): with no --constitution
    it is the packaged one, whatever the current folder holds."""
    console.print(f"constitution: {library.describe(value)}", markup=False, highlight=False, soft_wrap=True)


def run_stage(cfg: Any, run: Callable[..., Any], force: bool) -> Any:
    """`run(cfg, force=force)` for a stage that writes a run folder (`cfg.out`) under a constitution:
    library output captured into the folder, then which principle file it used (`say_constitution`)."""
    terminal.capture(cfg.out)
    result = run(cfg, force=force)
    say_constitution(cfg.constitution)
    return result


# --- building a flag from its field ---------------------------------------------------------------


def _check_required(flags: list[Flag], values: dict[str, Any]) -> None:
    missing = [f.flag for f in flags if values.get(f.param) is None]
    if missing:
        keys = " and ".join(f"{f.field}:" for f in flags)
        raise ConfigError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required",
                          fix=f"pass them as flags, or set {keys} in a --config file")


def _parameter(cls: type, flag: Flag) -> inspect.Parameter:
    owner, default = _field(cls, flag.field)
    leaf = flag.field.rpartition(".")[2]
    tp, hint = _flag_type(typing.get_type_hints(owner)[leaf])
    tp = flag.type or tp
    text = flag.help or " ".join(x for x in (escape(config.field_docs(owner).get(leaf, "")), hint) if x)
    decls = [flag.flag, *([flag.short] if flag.short else [])]
    if tp is bool and _off(flag):
        decls[0] += "/" + _off(flag)
    shown = _default_text(flag, default) if flag.show_default else None
    if shown:  # in the text: the option's own default is None (not given), which typer would show
        text += " " + escape(f"[default: {shown}]")
    return inspect.Parameter(flag.param, inspect.Parameter.KEYWORD_ONLY, annotation=tp | None,
                             default=typer.Option(None, *decls, help=text, show_default=False))


def _field(cls: type, path: str) -> tuple[type, Any]:
    """The dataclass that declares the last field of `path`, and that field's default as `cls`
    sets it (a section's default comes from `cls`: PPO's rollout engine defaults to hf);
    MISSING where there is none (a required field, a section that defaults to None)."""
    *sections, leaf = path.split(".")
    owner, section = cls, None
    for name in sections:
        section = _default(owner, name) if section is None else getattr(section, name)
        owner = _section_class(typing.get_type_hints(owner)[name])
        if section is None:
            return owner, dataclasses.MISSING
    return owner, getattr(section, leaf) if sections else _default(owner, leaf)


def _default(cls: type, name: str) -> Any:
    f = cls.__dataclass_fields__[name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _section_class(tp: Any) -> type | None:
    """The config dataclass a field holds (`EngineConfig | None` too), or None."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = next((a for a in typing.get_args(tp) if a is not type(None)), None)
    return tp if dataclasses.is_dataclass(tp) else None


def _flag_type(tp: Any) -> tuple[Any, str]:
    """The type typer parses a field as, and a hint for the help text."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if typing.get_origin(tp) is Literal:
        return str, "one of: " + ", ".join(map(str, typing.get_args(tp)))
    return tp, ""


def _default_text(flag: Flag, default: Any) -> str | None:
    if default in ("", None, dataclasses.MISSING) or flag.value is not None:
        return None
    if isinstance(default, bool):
        return (flag.flag if default else _off(flag)).lstrip("-") or None
    if isinstance(default, tuple):
        return " ".join(map(str, default))
    return str(default)


def _off(flag: Flag) -> str:
    return "--no-" + flag.flag[2:] if flag.off is None else flag.off
