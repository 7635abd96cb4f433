"""Reading ONE principle file strictly: the schema of every key, and a located error for every
problem found in it (not only the first).

The file is parsed with a `yaml.SafeLoader` (plain data only: no Python objects) into *nodes*,
which keep the line and column of everything, and the schema is checked on the nodes. That is
how duplicate keys are caught (PyYAML's constructor silently keeps the last one) and how every
error can point at its line. The result is a `FileDef` of checked plain values; resolving
`include`, building the `Constitution` and hashing it happen in `cai.constitution.load`. The keys
a file may hold are the fields of the dataclasses in `cai.constitution.model`.
See docs/constitution.md for the schema with an example of every field.
"""

from __future__ import annotations

import math
import re
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from cai.config import did_you_mean
from cai.constitution.model import (
    TEMPLATE_PLACEHOLDERS,
    ComparisonExample,
    Constitution,
    CritiqueExample,
    Principle,
    Templates,
    template_placeholders,
)
from cai.errors import ConstitutionError, Location

# --- The schema: the model's fields ------------------------------------------------------------


def file_keys(cls: type) -> tuple[str, ...]:
    """The keys a file may give for `cls`: its fields, less those the loader computes."""
    return tuple(f.name for f in fields(cls) if f.init and not f.metadata.get("computed"))


def required_keys(cls: type, requests: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The file keys of `cls` without a default, less `requests` (which `principle: <id>` may
    supply instead)."""
    return tuple(f.name for f in fields(cls) if f.name in file_keys(cls) and f.name not in requests
                 and f.default is MISSING and f.default_factory is MISSING)


CRITIQUE_REQUESTS = ("critique_request", "revision_request")
COMPARISON_REQUESTS = ("question",)
TOP_KEYS = file_keys(Constitution) + ("include", "disable")
TOP_REQUIRED = ("name", "version")
"""A file's identity; its description may be left out (it is then empty)."""
PRINCIPLE_KEYS = file_keys(Principle)
PRINCIPLE_REQUIRED = required_keys(Principle)
CRITIQUE_EXAMPLE_KEYS = file_keys(CritiqueExample)
CRITIQUE_EXAMPLE_REQUIRED = required_keys(CritiqueExample, CRITIQUE_REQUESTS)
COMPARISON_EXAMPLE_KEYS = file_keys(ComparisonExample)
COMPARISON_EXAMPLE_REQUIRED = required_keys(ComparisonExample, COMPARISON_REQUESTS)
TEMPLATE_KEYS = file_keys(Templates)

SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")

FIELD_HELP = {
    "name": "add `name: my-constitution` (a short name, shown in records and reports)",
    "version": 'add `version: "1.0"` and bump it when you edit the file',
    "description": "write a sentence, or remove the key",
    "id": "add `id: some-slug`; records name the principle by it, so keep it stable",
    "critique": "add `critique:` with the critique request, e.g. 'Point out anything harmful in "
                "the response.'",
    "revision": "add `revision:` with the revision request, e.g. 'Rewrite the response without "
                "anything harmful.'",
    "compare": "add `compare:` with the judge's question, e.g. 'Which response is less harmful?'",
    "prompt": "add `prompt:` with the human's message",
    "response": "add `response:` with the assistant's first answer",
    "response_a": "add `response_a:` with the first response",
    "response_b": "add `response_b:` with the second response",
    "answer": "add `answer: A` or `answer: B` (the better response)",
    "critique_request": "add `critique_request:`, or use `principle: <id>` instead",
    "revision_request": "add `revision_request:`, or use `principle: <id>` instead",
    "question": "add `question:`, or use `principle: <id>` instead",
    "principle": "write the id of a principle",
}

MAPPING_HELP = {
    "the top level of a principle file": "start with `name:`, `version:` and `principles:` lines; "
                                         "see docs/constitution.md",
    "a principle": "write `- id: ...` with `critique:`, `revision:` and `compare:` lines indented "
                   "under it",
}

_STD_TAGS = {"tag:yaml.org,2002:" + t for t in ("str", "int", "float", "bool", "null", "timestamp",
                                                 "map", "seq")}


def slugify(text: str) -> str:
    """A slug close to `text`, used to suggest a valid id."""
    return re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-_")[:64] or "principle"


# --- What one file holds, checked --------------------------------------------------------------


@dataclass
class Entry:
    """One principle or example as written: its checked values and where each came from."""

    values: dict[str, Any]
    loc: Location
    locs: dict[str, Location] = field(default_factory=dict)
    ok: bool = True
    """False when the entry had an error (it is kept so that its id still counts as defined)."""


@dataclass
class FileDef:
    path: Path
    """Absolute, symlinks resolved: the identity used to find include cycles."""
    display: str
    """How messages name the file (relative to the working directory when under it)."""
    meta: dict[str, str] = field(default_factory=dict)
    includes: list[tuple[str, Location]] = field(default_factory=list)
    disable: list[tuple[str, Location]] = field(default_factory=list)
    templates: dict[str, tuple[str, Location]] = field(default_factory=dict)
    principles: list[Entry] = field(default_factory=list)
    critique_examples: list[Entry] | None = None
    """None when the file has no such key (the included examples are kept)."""
    comparison_examples: list[Entry] | None = None


def display_path(path: Path) -> str:
    path = Path(path).absolute()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def read_file(path: Path, errors: list[ConstitutionError]) -> FileDef:
    """Parse and check one file. Problems are appended to `errors`; what could be read is kept."""
    fd = FileDef(path=Path(path).resolve(), display=display_path(path))
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = e.object[: e.start].count(b"\n") + 1  # the line of the bad byte, as for prompt files
        errors.append(ConstitutionError(f"not UTF-8 text: {e.reason} at byte {e.start}",
                                        Location(fd.display, line), fix="save the file as UTF-8"))
        return fd
    except OSError as e:
        errors.append(ConstitutionError(f"cannot read the file: {e.strerror}", Location(fd.display)))
        return fd
    _Reader(fd, text, errors).read()
    return fd


# --- The node walker ---------------------------------------------------------------------------


def _describe(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    kind = node.tag.rsplit(":", 1)[-1]
    if kind == "null":
        return "nothing (null)"
    if kind == "bool":
        return f"the boolean {node.value}"
    if kind in ("int", "float"):
        return f"the number {node.value}"
    if kind == "timestamp":
        return f"the date {node.value}"
    return f"the text {node.value!r}"


class _Reader:
    def __init__(self, fd: FileDef, text: str, errors: list[ConstitutionError]):
        self.fd, self.text, self.errors = fd, text, errors
        self.constructor = yaml.constructor.SafeConstructor()

    # where and what

    def loc(self, node: Node) -> Location:
        return Location(self.fd.display, node.start_mark.line + 1, node.start_mark.column + 1)

    def error(self, where: Node | Location, message: str, fix: str | None = None,
              principle: str | None = None) -> None:
        loc = where if isinstance(where, Location) else self.loc(where)
        self.errors.append(ConstitutionError(message, loc, fix=fix, principle=principle))

    # the file

    def read(self) -> None:
        loader = yaml.SafeLoader(self.text)
        try:
            root = loader.get_single_node()
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            loc = Location(self.fd.display, mark.line + 1, mark.column + 1) if mark else Location(
                self.fd.display)
            problem = e.problem or e.context or "syntax error"
            fix = "check the indentation and quoting on this line and the line above"
            if "mapping values are not allowed" in problem:
                fix = ("a text that contains ': ' must be quoted, or written as a block: `>-` after "
                       "the key and the text indented on the lines below")
            self.error(loc, f"invalid YAML: {problem}", fix=fix)
            return
        except yaml.YAMLError as e:
            self.error(Location(self.fd.display), f"invalid YAML: {e}")
            return
        finally:
            loader.dispose()
        if root is None:
            self.error(Location(self.fd.display, 1, 1), "the file is empty",
                       fix="see docs/constitution.md for the schema, or copy principles.yaml")
            return
        keys = self.mapping(root, TOP_KEYS, TOP_REQUIRED, "the top level of a principle file")
        if keys is None:
            return
        for key in ("name", "version", "description"):
            if key in keys:
                value = self.text_value(keys[key][1], key, allow_number=key == "version")
                if value is not None:
                    self.fd.meta[key] = value
        if "include" in keys:
            self.fd.includes = self.string_list(keys["include"][1], "include", "include: [base.yaml]")
        if "disable" in keys:
            self.fd.disable = self.string_list(keys["disable"][1], "disable", "disable: [some-id]")
        if "templates" in keys:
            self.templates(keys["templates"][1])
        if "principles" in keys:
            for item in self.sequence(keys["principles"][1], "principles") or ():
                self.fd.principles.append(self.principle(item))
        if "critique_examples" in keys:
            items = self.sequence(keys["critique_examples"][1], "critique_examples")
            self.fd.critique_examples = [self.critique_example(i) for i in items or ()]
        if "comparison_examples" in keys:
            items = self.sequence(keys["comparison_examples"][1], "comparison_examples")
            self.fd.comparison_examples = [self.comparison_example(i) for i in items or ()]

    # structure

    def check_tag(self, node: Node) -> bool:
        if node.tag in _STD_TAGS:
            return True
        self.error(node, f"unsupported YAML tag {node.tag!r}",
                   fix="a principle file holds plain text, numbers and lists only; remove the tag")
        return False

    def mapping(self, node: Node, allowed: tuple[str, ...], required: tuple[str, ...], what: str,
                principle: str | None = None) -> dict[str, tuple[Node, Node]] | None:
        """The keys of a mapping node, checked: no duplicates, no unknown keys, none missing."""
        if not self.check_tag(node):
            return None
        if not isinstance(node, MappingNode):
            self.error(node, f"{what} must be a mapping (key: value lines), got {_describe(node)}",
                       principle=principle, fix=MAPPING_HELP.get(what, "write `key: value` lines"))
            return None
        keys: dict[str, tuple[Node, Node]] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                self.error(key_node, "YAML merge keys (<<) are not supported", principle=principle,
                           fix="write the keys out (anchors and aliases of whole values are fine)")
                continue
            if not isinstance(key_node, ScalarNode) or not isinstance(key_node.value, str):
                self.error(key_node, f"a key must be a word, got {_describe(key_node)}",
                           principle=principle)
                continue
            key = key_node.value
            if key in keys:
                first = self.loc(keys[key][0])
                self.error(key_node, f"duplicate key {key!r} (first at line {first.line})",
                           principle=principle,
                           fix="remove one of them (YAML itself would silently keep the last one)")
                continue
            keys[key] = (key_node, value_node)
            if key not in allowed:
                self.error(key_node, f"unknown key {key!r} in {what}", principle=principle,
                           fix=did_you_mean(key, list(allowed)))
        for key in required:
            if key not in keys:
                self.error(node, f"missing required key {key!r}", principle=principle,
                           fix=FIELD_HELP.get(key))
        return {k: v for k, v in keys.items() if k in allowed}

    def sequence(self, node: Node, what: str) -> list[Node] | None:
        if not self.check_tag(node):
            return None
        if not isinstance(node, SequenceNode):
            self.error(node, f"{what!r} must be a list (lines starting with '- '), "
                             f"got {_describe(node)}",
                       fix=f"write each item on a line of its own starting with '- ', under `{what}:`")
            return None
        return list(node.value)

    # values

    def text_value(self, node: Node, key: str, principle: str | None = None,
                   allow_number: bool = False) -> str | None:
        """A non-empty text, stripped of leading and trailing whitespace."""
        if not self.check_tag(node):
            return None
        kind = node.tag.rsplit(":", 1)[-1]
        if isinstance(node, ScalarNode) and allow_number and kind in ("int", "float", "timestamp"):
            return node.value  # the digits as written: version 1.10 stays "1.10"
        if not isinstance(node, ScalarNode) or kind != "str":
            fix = FIELD_HELP.get(key, "write a text") if kind == "null" else (
                "write one text, not a list or mapping; quote it if it contains ': ' or starts "
                "with '- ', '[' or '{'")
            if isinstance(node, ScalarNode) and kind in ("bool", "int", "float", "timestamp"):
                fix = f'quote it: {key}: "{node.value}"'
            self.error(node, f"{key!r} must be text, got {_describe(node)}", fix=fix,
                       principle=principle)
            return None
        value = node.value.strip()
        if not value:
            self.error(node, f"{key!r} is empty", fix=FIELD_HELP.get(key), principle=principle)
            return None
        return value

    def string_list(self, node: Node, key: str, example: str,
                    principle: str | None = None) -> list[tuple[str, Location]]:
        if not self.check_tag(node):
            return []
        if not isinstance(node, SequenceNode):
            self.error(node, f"{key!r} must be a list, got {_describe(node)}",
                       fix=f"write it as a list: {example}", principle=principle)
            return []
        out = []
        for item in node.value:
            value = self.text_value(item, f"{key} item", principle=principle)
            if value is not None:
                out.append((value, self.loc(item)))
        return out

    def weight(self, node: Node, principle: str | None) -> float | None:
        kind = node.tag.rsplit(":", 1)[-1]
        if not isinstance(node, ScalarNode) or kind not in ("int", "float"):
            self.error(node, f"'weight' must be a number, got {_describe(node)}",
                       fix="write a positive number such as 1 or 2.5", principle=principle)
            return None
        value = float(self.constructor.construct_object(node))
        if not math.isfinite(value) or value <= 0:
            self.error(node, f"'weight' must be a positive number, got {node.value}",
                       principle=principle,
                       fix="to switch a principle off, delete it or list its id under `disable:` "
                           "in a file that includes this one")
            return None
        return value

    def slug(self, node: Node, key: str, principle: str | None = None) -> str | None:
        value = self.text_value(node, key, principle=principle)
        if value is not None and not SLUG.match(value):
            self.error(node, f"{key} {value!r} is not a slug", principle=principle,
                       fix=f"use lowercase letters, digits, '-' and '_' (at most 64), "
                           f"e.g. {slugify(value)!r}")
        return value

    # sections

    def templates(self, node: Node) -> None:
        keys = self.mapping(node, TEMPLATE_KEYS, (), "templates")
        for kind, (_, value_node) in (keys or {}).items():
            text = self.text_value(value_node, f"templates.{kind}")
            if text is None:
                continue
            if self.template_ok(kind, text, value_node):
                self.fd.templates[kind] = (text, self.loc(value_node))

    def template_ok(self, kind: str, text: str, node: Node) -> bool:
        allowed = TEMPLATE_PLACEHOLDERS[kind]
        wanted = ", ".join("{" + p + "}" for p in allowed)
        try:
            names = template_placeholders(text)
        except ValueError as e:
            self.error(node, f"templates.{kind}: {e}",
                       fix="write {{ and }} for literal braces; placeholders look like {name}")
            return False
        ok = True
        for name in dict.fromkeys(names):
            if name not in allowed:
                hint = did_you_mean(name, list(allowed)).replace("allowed:", "this template allows")
                self.error(self.placeholder_loc(node, name), f"templates.{kind}: unknown "
                           f"placeholder {{{name}}}", fix=f"{hint}; write {{{{ and }}}} for literal "
                                                          f"braces")
                ok = False
        for name in allowed:
            if name not in names:
                self.error(node, f"templates.{kind}: missing placeholder {{{name}}}",
                           fix=f"the {kind} template must use {wanted}")
                ok = False
        return ok

    def placeholder_loc(self, node: Node, name: str) -> Location:
        """The line and column of `{name` inside a template as written in the file."""
        source = self.text[node.start_mark.index:node.end_mark.index]
        at = source.find("{" + name)
        if at < 0:
            return self.loc(node)
        index = node.start_mark.index + at
        line_start = self.text.rfind("\n", 0, index) + 1
        return Location(self.fd.display, self.text.count("\n", 0, index) + 1, index - line_start + 1)

    def peek_id(self, node: Node) -> str | None:
        if isinstance(node, MappingNode):
            for k, v in node.value:
                if isinstance(k, ScalarNode) and k.value == "id" and isinstance(v, ScalarNode):
                    return v.value.strip() or None
        return None

    def principle(self, node: Node) -> Entry:
        pid = self.peek_id(node)
        n_errors = len(self.errors)
        entry = Entry({}, self.loc(node))
        keys = self.mapping(node, PRINCIPLE_KEYS, PRINCIPLE_REQUIRED, "a principle", principle=pid)
        for key, (_, value_node) in (keys or {}).items():
            entry.locs[key] = self.loc(value_node)
            if key == "id":
                value = self.slug(value_node, "id", principle=None)
            elif key == "weight":
                value = self.weight(value_node, pid)
            elif key == "tags":
                tags = self.string_list(value_node, "tags", "tags: [safety, honesty]", principle=pid)
                value = tuple(t for t, _ in tags)
                for t, loc in tags:
                    if not SLUG.match(t):
                        self.error(loc, f"tag {t!r} is not a slug", principle=pid,
                                   fix=f"use lowercase letters, digits, '-' and '_', e.g. {slugify(t)!r}")
                for dup in {t for t in value if value.count(t) > 1}:
                    self.error(value_node, f"tag {dup!r} is listed twice", principle=pid,
                               fix="remove the repeated tag")
            else:
                value = self.text_value(value_node, key, principle=pid)
            if value is not None:
                entry.values[key] = value
        if pid is not None:
            entry.values.setdefault("id", pid)
        entry.ok = len(self.errors) == n_errors
        return entry

    def example(self, node: Node, kind: str, keys_allowed: tuple[str, ...],
                required: tuple[str, ...], requests: tuple[str, ...]) -> Entry:
        """An example gives `principle: <id>` or its own request texts, not both."""
        n_errors = len(self.errors)
        entry = Entry({}, self.loc(node))
        keys = self.mapping(node, keys_allowed, required, f"a {kind}")
        for key, (_, value_node) in (keys or {}).items():
            entry.locs[key] = self.loc(value_node)
            value = self.text_value(value_node, key)
            if value is not None:
                entry.values[key] = value
        if keys is not None:
            given = [r for r in requests if r in keys]
            either = f"`principle: <id>` or {' and '.join(f'`{r}`' for r in requests)}"
            if "principle" in keys and given:
                self.error(node, f"a {kind} gives both 'principle' and {given[0]!r}",
                           fix=f"give {either}, not both")
            elif "principle" not in keys and len(given) < len(requests):
                missing = [r for r in requests if r not in keys]
                self.error(node, f"a {kind} needs 'principle' or {missing[0]!r}",
                           fix=f"give {either}")
        answer = entry.values.get("answer")
        if answer is not None and answer not in ("A", "B"):
            self.error(entry.locs["answer"], f"'answer' must be 'A' or 'B', got {answer!r}",
                       fix="write `answer: A` when response_a is the better one, else `answer: B`")
        entry.ok = len(self.errors) == n_errors
        return entry

    def critique_example(self, node: Node) -> Entry:
        return self.example(node, "critique example", CRITIQUE_EXAMPLE_KEYS,
                            CRITIQUE_EXAMPLE_REQUIRED, CRITIQUE_REQUESTS)

    def comparison_example(self, node: Node) -> Entry:
        return self.example(node, "comparison example", COMPARISON_EXAMPLE_KEYS,
                            COMPARISON_EXAMPLE_REQUIRED, COMPARISON_REQUESTS)
