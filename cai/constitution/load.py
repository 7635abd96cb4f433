"""Loading a constitution: each file read strictly (`cai.constitution.reader`), its includes
resolved, then the frozen, hashed `Constitution` (`cai.constitution.model`).

The include rule, in one sentence: **the including file wins**. Its includes are resolved first
(recursively, in the order listed) and merged; then the file's own content is laid over them:
a principle with the same id replaces the included one (in place), `disable: [ids]` removes
included principles, a template kind it sets replaces the included one, and its own
`critique_examples` / `comparison_examples` lists, when present, replace the included lists
(which are otherwise concatenated in include order). Between the includes of one file nothing
wins silently: the same principle id or template kind defined in two places is an error unless
the including file settles it by defining (or disabling) that id itself. A file reached twice
through different paths (a diamond) is one definition, not a conflict.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cai import library
from cai.config import did_you_mean
from cai.constitution.model import (
    ComparisonExample,
    Constitution,
    CritiqueExample,
    Principle,
    Templates,
    canonical_form,
    digest,
    principle_hash,
)
from cai.constitution.reader import Entry, FileDef, display_path, read_file
from cai.errors import ConstitutionError, Location, MultiError

DEFAULT_PATH = library.DEFAULT
"""What every stage loads when given no constitution: the name of the packaged principles.yaml
(never a file of the current folder; `cai.library` resolves names)."""


@dataclass
class _Resolved:
    file: FileDef
    principles: dict[str, Entry]
    templates: dict[str, tuple[str, Location]]
    critique_examples: list[Entry]
    comparison_examples: list[Entry]


class _Resolver:
    def __init__(self) -> None:
        self.errors: list[ConstitutionError] = []
        self.done: dict[Path, _Resolved] = {}
        self.files: list[str] = []

    def error(self, loc: Location, message: str, fix: str | None = None,
              principle: str | None = None) -> None:
        self.errors.append(ConstitutionError(message, loc, fix=fix, principle=principle))

    def resolve(self, path: Path, stack: tuple[Path, ...]) -> _Resolved:
        fd = read_file(path, self.errors)
        self.files.append(fd.display)
        stack = stack + (fd.path,)

        # 1. The includes, each resolved on its own, merged in order.
        merged: dict[str, Entry] = {}
        merged_templates: dict[str, tuple[str, Location]] = {}
        conflicts: dict[str, list[Entry]] = {}
        template_conflicts: dict[str, list[Location]] = {}
        critique_examples: list[Entry] = []
        comparison_examples: list[Entry] = []
        for rel, loc in fd.includes:
            sub = self.include(fd, rel, loc, stack)
            if sub is None:
                continue
            for pid, entry in sub.principles.items():
                if pid in merged and merged[pid] is not entry:
                    conflicts.setdefault(pid, [merged[pid]]).append(entry)
                merged.setdefault(pid, entry)
            for kind, (text, tloc) in sub.templates.items():
                if kind in merged_templates and merged_templates[kind][1] != tloc:
                    template_conflicts.setdefault(kind, [merged_templates[kind][1]]).append(tloc)
                merged_templates.setdefault(kind, (text, tloc))
            critique_examples += [e for e in sub.critique_examples if e not in critique_examples]
            comparison_examples += [e for e in sub.comparison_examples if e not in comparison_examples]

        # 2. The file's own principles win over the included ones (in place).
        own: dict[str, Entry] = {}
        for entry in fd.principles:
            pid = entry.values.get("id")
            if pid is None:
                continue
            if pid in own:
                self.error(entry.loc, f"id {pid!r} is defined twice in this file (first at "
                           f"line {own[pid].loc.line})", principle=pid,
                           fix="rename one of them or delete one; ids must be unique")
                continue
            own[pid] = entry
        resolved = dict(merged)
        for pid, entry in own.items():
            resolved[pid] = entry
            conflicts.pop(pid, None)

        # 3. `disable` removes included principles.
        disabled: set[str] = set()
        for pid, loc in fd.disable:
            if pid in disabled:
                self.error(loc, f"{pid!r} is listed twice under disable", fix="remove one")
            elif pid in own:
                self.error(loc, f"{pid!r} is both defined in this file and disabled",
                           fix="delete the principle or remove it from `disable`")
            elif pid not in merged:
                hint = (did_you_mean(pid, list(merged)).replace("allowed:", "included ids:")
                        if merged else "this file includes no principles")
                self.error(loc, f"cannot disable {pid!r}: no included file defines it", fix=hint)
            else:
                del resolved[pid]
                conflicts.pop(pid, None)
            disabled.add(pid)

        # 4. Whatever two includes both define and this file does not settle is an error.
        self.unsettled(fd, conflicts, template_conflicts)

        result = _Resolved(
            fd, resolved, {**merged_templates, **fd.templates},
            critique_examples if fd.critique_examples is None else fd.critique_examples,
            comparison_examples if fd.comparison_examples is None else fd.comparison_examples,
        )
        self.done[fd.path] = result
        return result

    def unsettled(self, fd: FileDef, conflicts: dict[str, list[Entry]],
                  template_conflicts: dict[str, list[Location]]) -> None:
        """An error for each principle id or template kind that two includes define and `fd` does
        not settle (conflicts it settled are already gone from `conflicts`)."""
        for pid, entries in conflicts.items():
            places = " and ".join(str(e.loc) for e in entries)
            self.error(entries[-1].loc, f"id {pid!r} is defined in two included files: {places}",
                       principle=pid,
                       fix=f"rename one, or settle it in {fd.display} by defining {pid!r} there "
                           f"(the including file wins) or listing it under `disable:`")
        for kind, locs in template_conflicts.items():
            if kind not in fd.templates:
                places = " and ".join(str(t) for t in locs)
                self.error(locs[-1], f"templates.{kind} is set by two included files: {places}",
                           fix=f"set templates.{kind} in {fd.display} (the including file wins)")

    def include(self, fd: FileDef, rel: str, loc: Location, stack: tuple[Path, ...]) -> _Resolved | None:
        target = (fd.path.parent / rel).resolve()
        if target in stack:
            chain = [display_path(p) for p in stack[stack.index(target):]] + [display_path(target)]
            self.error(loc, "include cycle: " + " -> ".join(chain),
                       fix=f"remove {rel!r} from `include` here or break the loop elsewhere")
            return None
        if target in self.done:
            return self.done[target]
        if not target.is_file():
            what = "is a folder" if target.is_dir() else "does not exist"
            self.error(loc, f"included file {rel!r} {what} (looked for {target})",
                       fix="include paths are relative to the including file's folder")
            return None
        return self.resolve(target, stack)


def _src(loc: Location) -> str:
    return f"{loc.file}:{loc.line}"


def check_constitution(path: str | Path) -> tuple[Constitution | None, list[ConstitutionError]]:
    """Load a constitution and collect every problem instead of raising. Either the
    constitution or at least one error comes back, never both. `path` may name a packaged
    constitution (`default`, `hhh`: see cai.library)."""
    try:
        path = library.resolve(path)
    except ConstitutionError as e:
        return None, [e]
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        return None, [ConstitutionError(f"principle file {display_path(path)} {what}",
                                        fix="pass the path of a principle file, or the name of one that ships "
                                            f"with cai ({', '.join(library.library())}: `cai principles list`); "
                                            f"given none, cai uses {library.DEFAULT}")]
    resolver = _Resolver()
    root = resolver.resolve(path, ())
    errors = resolver.errors
    if not root.principles and not errors:  # (with errors, one of them is the likely cause)
        errors.append(ConstitutionError("the constitution has no principles",
                                        Location(root.file.display, 1, 1),
                                        fix="add a `principles:` list, or `include:` a file that "
                                            "has some"))
    principles = tuple(
        Principle(**e.values, source=_src(e.loc), hash=principle_hash(
            e.values.get("id", ""), e.values.get("critique", ""), e.values.get("revision", ""),
            e.values.get("compare", "")))
        for e in root.principles.values() if e.ok
    )
    by_id = {p.id: p for p in principles}
    critique_examples = []
    for e in root.critique_examples:
        v = dict(e.values)
        if "principle" in v:
            p = _lookup(v["principle"], root, by_id, e, errors)
            if p is not None:
                v.update(critique_request=p.critique, revision_request=p.revision)
        if e.ok and "critique_request" in v:
            critique_examples.append(CritiqueExample(**v, source=_src(e.loc)))
    comparison_examples = []
    for e in root.comparison_examples:
        v = dict(e.values)
        if "principle" in v:
            p = _lookup(v["principle"], root, by_id, e, errors)
            if p is not None:
                v["question"] = p.compare
        if e.ok and "question" in v:
            comparison_examples.append(ComparisonExample(**v, source=_src(e.loc)))
    if errors:
        rank = {f: i for i, f in enumerate(dict.fromkeys(resolver.files))}
        errors.sort(key=lambda e: (rank.get(e.location.file, -1) if e.location else -1,
                                   (e.location.line or 0) if e.location else 0,
                                   (e.location.column or 0) if e.location else 0))
        return None, errors
    meta = root.file.meta
    templates = Templates(**{kind: text for kind, (text, _) in root.templates.items()})
    description = meta.get("description", "")
    canonical = canonical_form(meta["name"], meta["version"], description, principles, templates,
                           critique_examples, comparison_examples)
    return Constitution(
        name=meta["name"], version=meta["version"], description=description,
        principles=principles, templates=templates, critique_examples=tuple(critique_examples),
        comparison_examples=tuple(comparison_examples), hash=digest(canonical),
        path=root.file.display,
    ), []


def _lookup(pid: str, root: _Resolved, by_id: dict[str, Principle], e: Entry,
            errors: list[ConstitutionError]) -> Principle | None:
    if pid in by_id:
        return by_id[pid]
    if pid not in root.principles:  # a broken principle already has its own error
        errors.append(ConstitutionError(
            f"the example refers to principle {pid!r}, which is not in the resolved constitution",
            e.locs.get("principle", e.loc),
            fix=did_you_mean(pid, list(root.principles)).replace("allowed:", "known ids:")))
    return None


def load_constitution(path: str | Path = DEFAULT_PATH) -> Constitution:
    """Load, check and resolve a principle file (or a packaged one by name: cai.library). Raises
    ConstitutionError for one problem and MultiError (of ConstitutionErrors) for several: every
    problem, each located."""
    constitution, errors = check_constitution(path)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise MultiError(f"{display_path(Path(path))}: {len(errors)} problems in the constitution",
                         errors=list(errors),
                         fix="fix them top to bottom; `cai principles check` lists them again")
    assert constitution is not None
    return constitution
