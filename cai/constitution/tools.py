"""Tools over a loaded constitution: writing it back as one file (`dump_constitution`),
comparing two (`diff_constitutions`) and warning about a valid one that will likely work badly
(`lint`). `cai principles` is their command line.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import yaml

from cai import prompts
from cai.constitution.model import Constitution, Templates

FEWSHOT_CHAR_BUDGET = 2400
"""About 600 tokens: the few-shot prefix a 2048-token model can afford (`lint` warns above)."""


class _Dumper(yaml.SafeDumper):
    pass


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str_presenter)


def dump_constitution(c: Constitution) -> str:
    """The resolved constitution as one self-contained YAML file (no includes). Loading it gives
    the same hash. Templates equal to the built-in defaults are left out."""
    defaults = Templates()
    out: dict[str, Any] = {"name": c.name, "version": c.version}
    if c.description:
        out["description"] = c.description
    templates = {f.name: getattr(c.templates, f.name) for f in fields(Templates)
                 if getattr(c.templates, f.name) != getattr(defaults, f.name)}
    if templates:
        out["templates"] = templates
    out["principles"] = []
    for p in c.principles:
        d: dict[str, Any] = {"id": p.id}
        if p.weight != 1.0:
            d["weight"] = p.weight
        if p.tags:
            d["tags"] = list(p.tags)
        if p.description:
            d["description"] = p.description
        d.update(critique=p.critique, revision=p.revision, compare=p.compare)
        out["principles"].append(d)
    requests = ("critique_request", "revision_request", "question")
    for key, examples in (("critique_examples", c.critique_examples),
                          ("comparison_examples", c.comparison_examples)):
        out[key] = []
        for e in examples:
            d = {f.name: getattr(e, f.name) for f in fields(e) if f.name != "source"}
            if e.principle:
                d = {k: v for k, v in d.items() if k not in requests}
            else:
                del d["principle"]
            out[key].append(d)
    header = f"# {c.name} {c.version}, resolved from {c.path} (hash {c.hash})\n"
    return header + yaml.dump(out, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)


@dataclass(frozen=True)
class ConstitutionDiff:
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[tuple[str, tuple[str, ...]], ...]
    """(principle id, the fields that differ), in the new file's order."""
    other: tuple[str, ...]
    """Everything else that differs: name, version, description, templates.<kind>,
    critique_examples, comparison_examples."""

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.other)


def diff_constitutions(old: Constitution, new: Constitution) -> ConstitutionDiff:
    old_ids, new_ids = set(old.ids), set(new.ids)
    compared = ("critique", "revision", "compare", "weight", "tags", "description")
    changed = []
    for p in new.principles:
        if p.id in old_ids:
            q = old.get(p.id)
            diffs = tuple(f for f in compared if getattr(p, f) != getattr(q, f))
            if diffs:
                changed.append((p.id, diffs))
    other = [k for k in ("name", "version", "description") if getattr(old, k) != getattr(new, k)]
    other += [f"templates.{f.name}" for f in fields(Templates)
              if getattr(old.templates, f.name) != getattr(new.templates, f.name)]
    a, b = old.to_dict(), new.to_dict()
    other += [k for k in ("critique_examples", "comparison_examples") if a[k] != b[k]]
    return ConstitutionDiff(
        added=tuple(i for i in new.ids if i not in old_ids),
        removed=tuple(i for i in old.ids if i not in new_ids),
        changed=tuple(changed), other=tuple(other),
    )


def lint(c: Constitution) -> list[str]:
    """Warnings about a valid constitution that will likely work badly."""
    out = []
    if not c.critique_examples:
        out.append("no critique_examples: without few-shot transcripts small models confuse "
                   "critique and revision (CAI §1); add 2-4 short ones")
    answers = {e.answer for e in c.comparison_examples}
    if len(c.comparison_examples) >= 2 and len(answers) == 1:
        out.append(f"every comparison example answers {answers.pop()!r}: the judge may learn a "
                   f"position bias; make about half of them the other letter")
    for what, chars in (("critique", prompts.fewshot_chars(c, "critique")),
                        ("judge", prompts.fewshot_chars(c, "judge"))):
        if chars > FEWSHOT_CHAR_BUDGET:
            out.append(f"the {what} few-shot prefix is {chars} characters (about {chars // 4} "
                       f"tokens), over the {FEWSHOT_CHAR_BUDGET} a 2048-token model can spare; "
                       f"shorten or drop examples")
    return out
