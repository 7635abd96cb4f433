"""Principle files: the strict loader (one broken file per case, exact message and position),
includes, hashing, sampling, the shipped constitutions and `cai principles`."""

from __future__ import annotations

import re
import textwrap
from collections import Counter
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cai import prompts
from cai.cli import app
from cai.constitution import (
    FEWSHOT_CHAR_BUDGET,
    Constitution,
    ConstitutionError,
    Templates,
    check_constitution,
    diff_constitutions,
    dump_constitution,
    lint,
    load_constitution,
)
from cai.errors import MultiError

REPO = Path(__file__).resolve().parent.parent
SHIPPED = [REPO / "principles.yaml", *sorted((REPO / "constitution").glob("*.yaml"))]

HEAD = 'name: t\nversion: "1"\n'
P = "  - {id: p, critique: c, revision: r, compare: q}\n"


def write(dir: Path, text: str, name: str = "c.yaml") -> Path:
    path = dir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def errors_of(path: Path) -> list[tuple[int | None, int | None, str | None, str]]:
    constitution, errors = check_constitution(path)
    assert (constitution is None) == bool(errors)
    return [(e.location.line, e.location.column, e.principle, e.message) for e in errors]


# --- The loader: one broken file per case ------------------------------------------------------

# (case, file text, [(line, column, principle id, exact message), ...])
BROKEN = [
    ("syntax", HEAD + "principles:\n  - id: a\n   critique: b\n",
     [(5, 4, None, "invalid YAML: expected <block end>, but found '<block mapping start>'")]),
    ("tab", HEAD + "principles:\n\t- id: a\n",
     [(4, 1, None, "invalid YAML: found character '\\t' that cannot start any token")]),
    ("empty file", "", [(1, 1, None, "the file is empty")]),
    ("top level is a list", "- a\n- b\n",
     [(1, 1, None, "the top level of a principle file must be a mapping (key: value lines), got a list")]),
    ("unknown top key", HEAD + "nmae: x\nprinciples:\n" + P,
     [(3, 1, None, "unknown key 'nmae' in the top level of a principle file")]),
    ("duplicate top key", HEAD + 'version: "2"\nprinciples:\n' + P,
     [(3, 1, None, "duplicate key 'version' (first at line 2)")]),
    ("missing name", 'version: "1"\nprinciples:\n' + P, [(1, 1, None, "missing required key 'name'")]),
    ("version is a boolean", 'name: t\nversion: yes\nprinciples:\n' + P,
     [(2, 10, None, "'version' must be text, got the boolean yes")]),
    ("principles is a mapping", HEAD + "principles:\n  id: p\n",
     [(4, 3, None, "'principles' must be a list (lines starting with '- '), got a mapping")]),
    ("principle is text", HEAD + "principles:\n  - harmful\n",
     [(4, 5, None, "a principle must be a mapping (key: value lines), got the text 'harmful'")]),
    ("missing compare", HEAD + "principles:\n  - id: p\n    critique: c\n    revision: r\n",
     [(4, 5, "p", "missing required key 'compare'")]),
    ("unknown principle key", HEAD + "principles:\n  - id: p\n    critique: c\n    critque: c\n"
                                     "    revision: r\n    compare: q\n",
     [(6, 5, "p", "unknown key 'critque' in a principle")]),
    ("duplicate principle key", HEAD + "principles:\n  - id: p\n    critique: c\n    revision: r\n"
                                       "    critique: d\n    compare: q\n",
     [(7, 5, "p", "duplicate key 'critique' (first at line 5)")]),
    ("empty critique", HEAD + 'principles:\n  - {id: p, critique: "  ", revision: r, compare: q}\n',
     [(4, 23, "p", "'critique' is empty")]),
    ("null critique", HEAD + "principles:\n  - id: p\n    critique:\n    revision: r\n    compare: q\n",
     [(5, 14, "p", "'critique' must be text, got nothing (null)")]),
    ("boolean compare", HEAD + "principles:\n  - {id: p, critique: c, revision: r, compare: no}\n",
     [(4, 48, "p", "'compare' must be text, got the boolean no")]),
    ("list revision", HEAD + "principles:\n  - {id: p, critique: c, revision: [r], compare: q}\n",
     [(4, 36, "p", "'revision' must be text, got a list")]),
    ("id not a slug", HEAD + "principles:\n  - {id: Harm One, critique: c, revision: r, compare: q}\n",
     [(4, 10, None, "id 'Harm One' is not a slug")]),
    ("id defined twice", HEAD + "principles:\n" + P + "  - {id: q, critique: c, revision: r, compare: q}\n" + P,
     [(6, 5, "p", "id 'p' is defined twice in this file (first at line 4)")]),
    ("weight zero", HEAD + "principles:\n  - {id: p, critique: c, revision: r, compare: q, weight: 0}\n",
     [(4, 59, "p", "'weight' must be a positive number, got 0")]),
    ("weight negative", HEAD + "principles:\n  - {id: p, critique: c, revision: r, compare: q, weight: -1.5}\n",
     [(4, 59, "p", "'weight' must be a positive number, got -1.5")]),
    ("weight infinite", HEAD + "principles:\n  - {id: p, critique: c, revision: r, compare: q, weight: .inf}\n",
     [(4, 59, "p", "'weight' must be a positive number, got .inf")]),
    ("weight is text", HEAD + "principles:\n  - {id: p, critique: c, revision: r, compare: q, weight: 2x}\n",
     [(4, 59, "p", "'weight' must be a number, got the text '2x'")]),
    ("weight is boolean", HEAD + "principles:\n  - {id: p, critique: c, revision: r, compare: q, weight: true}\n",
     [(4, 59, "p", "'weight' must be a number, got the boolean true")]),
    ("tags not a list", HEAD + "principles:\n  - {id: p, critique: c, revision: r, compare: q, tags: safety}\n",
     [(4, 57, "p", "'tags' must be a list, got the text 'safety'")]),
    ("tag not a slug, tag twice", HEAD + "principles:\n  - {id: p, critique: c, revision: r, compare: q, "
                                         "tags: [a, Safety, a]}\n",
     [(4, 57, "p", "tag 'a' is listed twice"), (4, 61, "p", "tag 'Safety' is not a slug")]),
    ("python tag", HEAD + "principles:\n  - !!python/object:os.system {}\n",
     [(4, 5, None, "unsupported YAML tag 'tag:yaml.org,2002:python/object:os.system'")]),
    ("merge key", HEAD + "base: &b {critique: c, revision: r, compare: q}\nprinciples:\n  - <<: *b\n    id: p\n",
     [(3, 1, None, "unknown key 'base' in the top level of a principle file"),
      (5, 5, "p", "YAML merge keys (<<) are not supported"),
      (5, 5, "p", "missing required key 'critique'"),
      (5, 5, "p", "missing required key 'revision'"),
      (5, 5, "p", "missing required key 'compare'")]),
    ("unknown template kind", HEAD + "templates:\n  critic: x\nprinciples:\n" + P,
     [(4, 3, None, "unknown key 'critic' in templates")]),
    ("unknown placeholder", HEAD + 'templates:\n  critique: "Please: {critque_request}"\nprinciples:\n' + P,
     [(4, 13, None, "templates.critique: missing placeholder {critique_request}"),
      (4, 22, None, "templates.critique: unknown placeholder {critque_request}")]),
    ("unknown placeholder in a block", HEAD + "templates:\n  judge: |\n    {conversation} {question}\n"
                                              "    (A) {response_a}\n    (B) {response_c}\n"
                                              "principles:\n" + P,
     [(4, 10, None, "templates.judge: missing placeholder {response_b}"),
      (7, 9, None, "templates.judge: unknown placeholder {response_c}")]),
    ("single brace", HEAD + 'templates:\n  revision: "{revision_request} in {braces"\nprinciples:\n' + P,
     [(4, 13, None, "templates.revision: expected '}' before end of string")]),
    ("format spec", HEAD + 'templates:\n  revision: "{revision_request:>9}"\nprinciples:\n' + P,
     [(4, 13, None, "templates.revision: placeholder {revision_request:>9} has a conversion or format spec")]),
    ("example gives both", HEAD + "principles:\n" + P + "comparison_examples:\n"
                           "  - {prompt: x, response_a: a, response_b: b, principle: p, question: q, answer: A}\n",
     [(6, 5, None, "a comparison example gives both 'principle' and 'question'")]),
    ("example gives neither", HEAD + "principles:\n" + P + "critique_examples:\n"
                              "  - {prompt: x, response: y, critique_request: c, critique: c, revision: r}\n",
     [(6, 5, None, "a critique example needs 'principle' or 'revision_request'")]),
    ("answer not A or B", HEAD + "principles:\n" + P + "comparison_examples:\n"
                          "  - {prompt: x, response_a: a, response_b: b, principle: p, answer: (A)}\n",
     [(6, 69, None, "'answer' must be 'A' or 'B', got '(A)'")]),
    ("example names an unknown principle", HEAD + "principles:\n" + P + "critique_examples:\n"
     "  - {prompt: x, response: y, principle: pp, critique: c, revision: r}\n",
     [(6, 41, None, "the example refers to principle 'pp', which is not in the resolved constitution")]),
    ("no principles", HEAD + "principles: []\n", [(1, 1, None, "the constitution has no principles")]),
    ("include not a list", HEAD + "include: base.yaml\nprinciples:\n" + P,
     [(3, 10, None, "'include' must be a list, got the text 'base.yaml'")]),
    ("include missing", HEAD + "include: [nope.yaml]\nprinciples:\n" + P,
     [(3, 11, None, "included file 'nope.yaml' does not exist (looked for {dir}/nope.yaml)")]),
    ("disable without includes", HEAD + "disable: [p2]\nprinciples:\n" + P,
     [(3, 11, None, "cannot disable 'p2': no included file defines it")]),
]


@pytest.mark.parametrize("text, expected", [c[1:] for c in BROKEN], ids=[c[0] for c in BROKEN])
def test_broken_file(tmp_path, text, expected):
    path = write(tmp_path, text)
    expected = [(line, col, pid, msg.replace("{dir}", str(tmp_path.resolve()))) for line, col, pid, msg in expected]
    assert errors_of(path) == expected


def test_every_error_names_the_file_and_has_a_fix(tmp_path):
    for case, text, _ in BROKEN:
        path = write(tmp_path, text, f"{case.replace(' ', '_')}.yaml")
        for e in check_constitution(path)[1]:
            assert e.location.file == str(path), case
            assert str(e).startswith(f"{path}:{e.location.line}:{e.location.column}: "), case
            assert e.fix, (case, e.message)


def test_fix_hints(tmp_path):
    cases = {
        HEAD + "nmae: x\nprinciples:\n" + P: "did you mean 'name'?",
        HEAD + "principles:\n  - {id: Harm One, critique: c, revision: r, compare: q}\n": "e.g. 'harm-one'",
        HEAD + "principles:\n  - {id: p, critique: c, revision: r, compare: no}\n": 'quote it: compare: "no"',
        HEAD + 'templates:\n  critique: "{critque_request}"\nprinciples:\n' + P: "did you mean 'critique_request'?",
        HEAD + "principles:\n" + P + "critique_examples:\n"
        "  - {prompt: x, response: y, principle: pq, critique: c, revision: r}\n": "did you mean 'p'?",
    }
    for i, (text, hint) in enumerate(cases.items()):
        errors = check_constitution(write(tmp_path, text, f"{i}.yaml"))[1]
        assert any(hint in (e.fix or "") for e in errors), (hint, [str(e) for e in errors])


def test_all_errors_are_reported_in_one_pass(tmp_path):
    path = write(tmp_path, """\
        name: t
        version: "1"
        nmae: x
        principles:
          - {id: a, critique: "", revision: r, compare: q}
          - {id: b, critique: c, revision: r, compare: q, weight: 0}
        """)
    assert [(line, col) for line, col, _, _ in errors_of(path)] == [(3, 1), (5, 23), (6, 59)]
    with pytest.raises(MultiError) as info:
        load_constitution(path)
    assert len(info.value.errors) == 3
    assert all(isinstance(e, ConstitutionError) for e in info.value.errors)
    assert f"{path}:5:23: principle 'a': 'critique' is empty" in str(info.value)


def test_one_error_raises_a_constitution_error(tmp_path):
    path = write(tmp_path, HEAD + "principles:\n  - {id: p, critique: c, revision: r, compare: q, weight: 0}\n")
    with pytest.raises(ConstitutionError, match=r"c\.yaml:4:59: principle 'p': 'weight' must be a positive"):
        load_constitution(path)


def test_missing_file():
    constitution, errors = check_constitution("no/such/file.yaml")
    assert constitution is None
    assert [e.message for e in errors] == ["principle file no/such/file.yaml does not exist"]


def test_version_keeps_the_digits_as_written(tmp_path):
    assert load_constitution(write(tmp_path, "name: t\nversion: 1.10\nprinciples:\n" + P)).version == "1.10"


def test_texts_are_stripped_and_braces_in_texts_are_literal(tmp_path):
    c = load_constitution(write(tmp_path, HEAD + "principles:\n  - id: p\n    critique: |\n"
                                "      Is {this} harmful?\n    revision: r\n    compare: q\n"))
    assert c.get("p").critique == "Is {this} harmful?"


def test_anchors_and_aliases_of_whole_values_work(tmp_path):
    c = load_constitution(write(tmp_path, HEAD + "principles:\n"
                                "  - {id: a, critique: &c Find harm., revision: r, compare: q}\n"
                                "  - {id: b, critique: *c, revision: r, compare: q}\n"))
    assert c.get("b").critique == "Find harm."


# --- Includes ----------------------------------------------------------------------------------


def base_file(dir: Path) -> Path:
    return write(dir, """\
        name: base
        version: "1"
        templates:
          judge_answer: "Verdict: {answer}"
        principles:
          - {id: a, critique: ca, revision: ra, compare: qa}
          - {id: b, critique: cb, revision: rb, compare: qb, weight: 3}
          - {id: c, critique: cc, revision: rc, compare: qc}
        critique_examples:
          - {prompt: x, response: y, principle: b, critique: z, revision: w}
        """, "lib/base.yaml")


def test_include_override_in_place_disable_and_inherit(tmp_path):
    base_file(tmp_path)
    path = write(tmp_path, """\
        name: top
        version: "2"
        include: [lib/base.yaml]
        disable: [c]
        principles:
          - {id: d, critique: cd, revision: rd, compare: qd}
          - {id: b, critique: new, revision: rb, compare: qb}
        """, "top.yaml")
    c = load_constitution(path)
    assert (c.name, c.version) == ("top", "2")
    assert c.ids == ("a", "b", "d")  # b replaced in place, c disabled, d appended
    assert c.get("b").critique == "new" and c.get("b").weight == 1.0
    assert c.get("b").source == f"{path}:7"
    assert c.get("a").source == f"{tmp_path / 'lib' / 'base.yaml'}:6"
    assert c.templates.judge_answer == "Verdict: {answer}"
    # The inherited example follows the principle the including file defines.
    assert c.critique_examples[0].critique_request == "new"


def test_include_examples_replaced_by_the_including_file(tmp_path):
    base_file(tmp_path)
    path = write(tmp_path, HEAD + "include: [lib/base.yaml]\ncritique_examples: []\n", "top.yaml")
    assert load_constitution(path).critique_examples == ()


def test_include_paths_are_relative_to_the_including_file(tmp_path):
    base_file(tmp_path)
    write(tmp_path, HEAD + "include: [../lib/base.yaml]\n", "x/mid.yaml")
    top = write(tmp_path, HEAD + "include: [x/mid.yaml]\n", "top.yaml")
    assert load_constitution(top).ids == ("a", "b", "c")


def test_include_cycle_names_the_chain(tmp_path):
    write(tmp_path, HEAD + "include: [b.yaml]\nprinciples:\n" + P, "a.yaml")
    write(tmp_path, HEAD + "include: [sub/c.yaml]\n", "b.yaml")
    write(tmp_path, HEAD + "include: [../a.yaml]\n", "sub/c.yaml")
    errors = errors_of(tmp_path / "a.yaml")
    a, b, c = tmp_path / "a.yaml", tmp_path / "b.yaml", tmp_path / "sub" / "c.yaml"
    assert errors == [(3, 11, None, f"include cycle: {a} -> {b} -> {c} -> {a}")]
    assert check_constitution(tmp_path / "a.yaml")[1][0].location.file == str(c)


def test_self_include_is_a_cycle(tmp_path):
    path = write(tmp_path, HEAD + "include: [c.yaml]\nprinciples:\n" + P)
    assert errors_of(path) == [(3, 11, None, f"include cycle: {path} -> {path}")]


def test_same_id_in_two_included_files_names_both(tmp_path):
    write(tmp_path, HEAD + "principles:\n" + P, "one.yaml")
    write(tmp_path, HEAD + "principles:\n  - {id: x, critique: c, revision: r, compare: q}\n" + P, "two.yaml")
    top = write(tmp_path, HEAD + "include: [one.yaml, two.yaml]\n", "top.yaml")
    assert errors_of(top) == [(5, 5, "p", f"id 'p' is defined in two included files: "
                                          f"{tmp_path / 'one.yaml'}:4:5 and {tmp_path / 'two.yaml'}:5:5")]
    # The including file settles it by defining the id, or by disabling it.
    top.write_text(HEAD + "include: [one.yaml, two.yaml]\nprinciples:\n"
                   "  - {id: p, critique: mine, revision: r, compare: q}\n")
    assert load_constitution(top).get("p").critique == "mine"
    top.write_text(HEAD + "include: [one.yaml, two.yaml]\ndisable: [p]\n")
    assert load_constitution(top).ids == ("x",)


def test_template_set_by_two_includes_is_a_conflict(tmp_path):
    write(tmp_path, HEAD + 'templates:\n  score_answer: "Score: {score}"\nprinciples:\n' + P, "one.yaml")
    write(tmp_path, HEAD + 'templates:\n  score_answer: "Points: {score}"\n'
                    "principles:\n  - {id: x, critique: c, revision: r, compare: q}\n", "two.yaml")
    top = write(tmp_path, HEAD + "include: [one.yaml, two.yaml]\ndisable: [p]\n", "top.yaml")
    assert [m for *_, m in errors_of(top)] == [
        f"templates.score_answer is set by two included files: {tmp_path / 'one.yaml'}:4:17 and "
        f"{tmp_path / 'two.yaml'}:4:17"]
    top.write_text(HEAD + 'include: [one.yaml, two.yaml]\ndisable: [p]\ntemplates:\n  score_answer: "{score}/10"\n')
    assert load_constitution(top).templates.score_answer == "{score}/10"


def test_diamond_include_is_not_a_conflict(tmp_path):
    base_file(tmp_path)
    write(tmp_path, HEAD + "include: [lib/base.yaml]\n", "left.yaml")
    write(tmp_path, HEAD + "include: [lib/base.yaml]\n", "right.yaml")
    top = write(tmp_path, HEAD + "include: [left.yaml, right.yaml]\n", "top.yaml")
    c = load_constitution(top)
    assert c.ids == ("a", "b", "c") and len(c.critique_examples) == 1


def test_disable_errors(tmp_path):
    base_file(tmp_path)
    top = write(tmp_path, HEAD + "include: [lib/base.yaml]\ndisable: [bb, a, a, d]\nprinciples:\n"
                "  - {id: d, critique: c, revision: r, compare: q}\n", "top.yaml")
    assert errors_of(top) == [
        (4, 11, None, "cannot disable 'bb': no included file defines it"),
        (4, 18, None, "'a' is listed twice under disable"),
        (4, 21, None, "'d' is both defined in this file and disabled"),
    ]
    assert "did you mean 'b'?" in check_constitution(top)[1][0].fix


def test_errors_in_an_included_file_point_into_it(tmp_path):
    write(tmp_path, HEAD + "principles:\n  - {id: p, critique: c, revision: r, compare: q, weight: -1}\n",
          "lib.yaml")
    top = write(tmp_path, HEAD + "include: [lib.yaml]\n", "top.yaml")
    (error,) = check_constitution(top)[1]
    assert (error.location.file, error.location.line, error.location.column) == (str(tmp_path / "lib.yaml"), 4, 59)


# --- Hashing -----------------------------------------------------------------------------------

PLAIN = """\
name: h
version: "1.0"
description: A test.
templates:
  revision: "{revision_request} Now."
principles:
  - id: a
    weight: 2
    tags: [x, y]
    description: First.
    critique: Find harm.
    revision: Remove harm.
    compare: Which is less harmful?
  - id: b
    critique: Find lies.
    revision: Remove lies.
    compare: Which is more honest?
comparison_examples:
  - {prompt: p, response_a: ra, response_b: rb, principle: a, answer: B}
"""

REFORMATTED = """\
# The same content: other key order, quoting, styles, indentation and principle order.
principles:
-   compare: 'Which is more honest?'
    revision: "Remove lies."
    critique: >-
      Find
      lies.
    id: "b"
-   {compare: "Which is less harmful?", revision: Remove harm., critique: "Find harm.",
     id: a, weight: 2.0, tags: ["x", 'y'], description: "  First.\n"}
comparison_examples: [{answer: B, principle: a, response_b: rb, response_a: ra, prompt: p}]
templates: {revision: '{revision_request} Now.'}
description: "A test."
version: '1.0'
name: h
"""


def test_hash_ignores_formatting(tmp_path):
    a = load_constitution(write(tmp_path, PLAIN, "a.yaml"))
    b = load_constitution(write(tmp_path, REFORMATTED, "b.yaml"))
    assert a.hash == b.hash
    assert re.fullmatch(r"[0-9a-f]{16}", a.hash)
    assert {p.id: p.hash for p in a.principles} == {p.id: p.hash for p in b.principles}


def test_hash_ignores_the_split_into_includes(tmp_path):
    single = load_constitution(write(tmp_path, PLAIN, "single.yaml"))
    lines = PLAIN.splitlines(keepends=True)
    write(tmp_path, 'name: lib\nversion: "0"\nprinciples:\n' + "".join(lines[13:17]), "lib.yaml")
    top = write(tmp_path, "".join(lines[:13]).replace("principles:\n", "include: [lib.yaml]\nprinciples:\n")
                + "".join(lines[17:]), "top.yaml")
    assert load_constitution(top).hash == single.hash


EDITS = [
    ("name", "name: h", "name: h2"),
    ("version", 'version: "1.0"', 'version: "1.1"'),
    ("description", "A test.", "A test!"),
    ("template", "Now.", "Now!"),
    ("weight", "weight: 2", "weight: 2.5"),
    ("tags", "tags: [x, y]", "tags: [x]"),
    ("principle description", "First.", "First!"),
    ("critique", "Find harm.", "Find harm!"),
    ("critique whitespace inside", "Find harm.", "Find  harm."),
    ("revision", "Remove lies.", "Remove lies!"),
    ("compare", "Which is more honest?", "Which is honest?"),
    ("id", "id: b", "id: c"),
    ("example", "response_b: rb", "response_b: rb2"),
    ("example answer", "answer: B", "answer: A"),
]


@pytest.mark.parametrize("old, new", [e[1:] for e in EDITS], ids=[e[0] for e in EDITS])
def test_hash_changes_with_any_text(tmp_path, old, new):
    assert PLAIN.count(old) == 1
    a = load_constitution(write(tmp_path, PLAIN, "a.yaml"))
    b = load_constitution(write(tmp_path, PLAIN.replace(old, new), "b.yaml"))
    assert a.hash != b.hash


def test_principle_hash_covers_the_texts_that_make_a_record(tmp_path):
    a = load_constitution(write(tmp_path, PLAIN, "a.yaml")).get("a")
    for old, new, changes in [("Find harm.", "Find harm!", True), ("Remove harm.", "Remove harm!", True),
                              ("less harmful", "more harmless", True), ("weight: 2", "weight: 3", False),
                              ("tags: [x, y]", "tags: [z]", False), ("First.", "Second.", False)]:
        b = load_constitution(write(tmp_path, PLAIN.replace(old, new), "b.yaml")).get("a")
        assert (a.hash != b.hash) == changes, old


def test_provenance(tmp_path):
    c = load_constitution(write(tmp_path, PLAIN))
    p = c.get("a")
    assert c.provenance(p) == {"principle": "a", "principle_hash": p.hash, "constitution": "h",
                               "constitution_version": "1.0", "constitution_hash": c.hash}


# --- Sampling ----------------------------------------------------------------------------------

WEIGHTED = HEAD + """\
principles:
  - {id: one, critique: c, revision: r, compare: q, weight: 1}
  - {id: two, critique: c, revision: r, compare: q, weight: 2}
  - {id: five, critique: c, revision: r, compare: q, weight: 5}
"""


@pytest.fixture
def weighted(tmp_path) -> Constitution:
    return load_constitution(write(tmp_path, WEIGHTED, "weighted.yaml"))


def test_sampling_is_reproducible_and_pinned(weighted):
    draws = [weighted.sample(7, f"rec-{i}", r).id for i in range(6) for r in range(4)]
    assert draws == [weighted.sample(7, f"rec-{i}", r).id for i in range(6) for r in range(4)]
    # Pinned: the draw must not change between Python versions, processes or cai releases.
    assert [weighted.sample(0, "rec-0", r).id for r in range(8)] == PINNED


PINNED = ["five", "two", "five", "five", "one", "one", "two", "two"]


def test_sampling_does_not_depend_on_call_order_or_batch(weighted):
    keys = [(3, f"r{i}", r) for i in range(50) for r in range(4)]
    forward = {k: weighted.sample(*k).id for k in keys}
    backward = {k: weighted.sample(*k).id for k in reversed(keys)}
    assert forward == backward
    # A different seed, record or round gives a different stream.
    assert [weighted.sample(3, "r0", r).id for r in range(40)] != [weighted.sample(4, "r0", r).id for r in range(40)]


def test_sampling_does_not_depend_on_principle_order(tmp_path, weighted):
    lines = WEIGHTED.splitlines(keepends=True)
    shuffled = load_constitution(write(tmp_path, "".join(lines[:3] + lines[3:][::-1]), "s.yaml"))
    assert shuffled.ids != weighted.ids and shuffled.hash == weighted.hash
    keys = [(0, f"r{i}", 0) for i in range(100)]
    assert [shuffled.sample(*k).id for k in keys] == [weighted.sample(*k).id for k in keys]


def test_sampling_follows_the_weights(weighted):
    n = 16_000
    counts = Counter(weighted.sample(11, f"record-{i}", i % 4).id for i in range(n))
    expected = {"one": n / 8, "two": n * 2 / 8, "five": n * 5 / 8}
    chi2 = sum((counts[k] - e) ** 2 / e for k, e in expected.items())
    assert chi2 < 13.8, (counts, chi2)  # chi-square, 2 degrees of freedom, p = 0.001
    assert weighted.probability("five") == 5 / 8


def test_sample_many(weighted):
    many = weighted.sample_many(5, 1, "r", 2)
    assert len(many) == 5 and many[0] == weighted.sample(1, "r", 2)
    assert many == weighted.sample_many(5, 1, "r", 2)
    distinct = weighted.sample_many(3, 1, "r", 2, distinct=True)
    assert sorted(p.id for p in distinct) == ["five", "one", "two"]
    with pytest.raises(ValueError, match="cannot draw 4 distinct principles from 3"):
        weighted.sample_many(4, 1, "r", 2, distinct=True)


def test_get_unknown_id(weighted):
    with pytest.raises(ConstitutionError, match="no principle 'fiv' in t 1") as info:
        weighted.get("fiv")
    assert "did you mean 'five'?" in info.value.fix


# --- Templates ---------------------------------------------------------------------------------


def test_default_templates_are_valid_and_checked_in_code():
    Templates()
    with pytest.raises(ValueError, match=r"templates.critique must use exactly \['critique_request'\]"):
        Templates(critique="Critique it.")


def test_template_with_literal_braces(tmp_path):
    c = load_constitution(write(tmp_path, HEAD + 'templates:\n  critique: "{{json}} {critique_request}"\n'
                                "principles:\n" + P))
    assert prompts.critique_request(c, c.get("p"))["content"] == "{json} c"


def test_lint_warnings(tmp_path):
    long = "word " * 500
    c = load_constitution(write(tmp_path, HEAD + "principles:\n" + P + "comparison_examples:\n"
                                "  - {prompt: x, response_a: a, response_b: b, principle: p, answer: A}\n"
                                f"  - {{prompt: x, response_a: {long}, response_b: b, principle: p, answer: A}}\n"))
    warnings = lint(c)
    assert warnings[0].startswith("no critique_examples: without few-shot transcripts")
    assert warnings[1].startswith("every comparison example answers 'A': the judge may learn a position bias")
    assert re.match(r"the judge few-shot prefix is \d+ characters \(about \d+ tokens\), over the 2400", warnings[2])
    assert len(warnings) == 3


# --- The shipped constitutions -----------------------------------------------------------------


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_file_loads_cleanly(path):
    c = load_constitution(path)
    assert len(c.principles) >= 6
    assert lint(c) == []
    assert c.critique_examples and c.comparison_examples
    assert prompts.fewshot_chars(c, "critique") <= FEWSHOT_CHAR_BUDGET
    assert prompts.fewshot_chars(c, "judge") <= FEWSHOT_CHAR_BUDGET


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_file_survives_a_dump_load_round_trip(tmp_path, path):
    c = load_constitution(path)
    dumped = write(tmp_path, dump_constitution(c), "dumped.yaml")
    again = load_constitution(dumped)
    assert again.hash == c.hash
    assert [(p.id, p.hash) for p in again.principles] == [(p.id, p.hash) for p in c.principles]
    assert dump_constitution(again).split("\n", 1)[1] == dump_constitution(c).split("\n", 1)[1]


def test_default_constitution_covers_the_themes():
    c = load_constitution(REPO / "principles.yaml")
    assert 12 <= len(c.principles) <= 16
    tags = Counter(t for p in c.principles for t in p.tags)
    assert tags["harmless"] >= 7 and tags["honest"] >= 2 and tags["helpful"] >= 3
    assert {"crime", "third-parties", "bias", "age-appropriate", "manipulation", "calibration",
            "no-fabrication", "non-evasive", "not-preachy", "explained-refusals"} <= set(c.ids)
    assert {e.answer for e in c.comparison_examples} == {"A", "B"}


def test_constitution_library():
    files = sorted((REPO / "constitution").glob("*.yaml"))
    assert len(files) >= 3
    assert any(yaml.safe_load(f.read_text()).get("include") for f in files)
    hhh = load_constitution(REPO / "constitution" / "hhh.yaml")
    assert "most-harmful-part" not in hhh.ids and "truthful" in hhh.ids
    assert hhh.get("wise-friend").source.endswith("hhh.yaml:18")


def test_schema_example_in_the_docs_is_valid(tmp_path):
    doc = (REPO / "docs" / "constitution.md").read_text()
    example = re.search(r"## Schema.*?```yaml\n(.*?)```", doc, re.S).group(1)
    write(tmp_path, HEAD + "principles:\n  - {id: age-appropriate, critique: c, revision: r, compare: q}\n"
          "  - {id: kept, critique: c, revision: r, compare: q}\n", "base.yaml")
    c = load_constitution(write(tmp_path, example, "example.yaml"))
    assert c.ids == ("kept", "harmful-content") and c.get("harmful-content").weight == 2


# --- Diff ----------------------------------------------------------------------------------------


def test_diff(tmp_path):
    a = load_constitution(write(tmp_path, PLAIN, "a.yaml"))
    b = load_constitution(write(tmp_path, PLAIN.replace("Find lies.", "Find lies!").replace("weight: 2", "weight: 4")
                                .replace("id: b", "id: c").replace('version: "1.0"', 'version: "1.1"')
                                .replace("  - id: a", "  - {id: z, critique: c, revision: r, compare: q}\n  - id: a"),
                                "b.yaml"))
    d = diff_constitutions(a, b)
    assert d.added == ("z", "c") and d.removed == ("b",)
    assert d.changed == (("a", ("weight",)),)
    assert d.other == ("version",)
    assert diff_constitutions(a, a).empty


# --- The CLI -------------------------------------------------------------------------------------

runner = CliRunner()


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def test_cli_check_default_file(in_repo):
    """With no file, the packaged default (tests/test_standalone.py runs it from elsewhere)."""
    from cai import library

    c = load_constitution("principles.yaml")
    result = runner.invoke(app, ["principles", "check"])
    assert result.exit_code == 0, result.output
    summary = f"cai-default {c.version}, {len(c.principles)} principles, hash {c.hash}"
    assert result.output == f"default ({library.library()['default']}): ok: {summary}\n"


def test_cli_check_every_shipped_file(in_repo):
    result = runner.invoke(app, ["principles", "check", "principles.yaml", *map(str, SHIPPED[1:])])
    assert result.exit_code == 0, result.output
    assert result.output.count(": ok: ") == len(SHIPPED)


def test_cli_check_prints_every_error_and_fails(tmp_path, in_repo):
    bad = write(tmp_path, HEAD + "nmae: x\nprinciples:\n  - {id: p, critique: c, revision: r, compare: q, weight: 0}\n")
    result = runner.invoke(app, ["principles", "check", "principles.yaml", str(bad)])
    assert result.exit_code == 1
    assert "principles.yaml: ok: cai-default" in result.output
    assert f"error: {bad}:3:1: unknown key 'nmae' in the top level of a principle file\n" \
           f"  fix: did you mean 'name'?" in result.output
    assert f"error: {bad}:5:59: principle 'p': 'weight' must be a positive number, got 0\n" in result.output
    assert result.output.endswith(f"{bad}: 2 errors\n2 errors in 1 of 2 files\n")


def test_cli_check_strict_fails_on_warnings(tmp_path):
    path = write(tmp_path, HEAD + "principles:\n" + P)
    result = runner.invoke(app, ["principles", "check", str(path)])
    assert result.exit_code == 0
    assert f"{path}: warning: no critique_examples" in result.output
    result = runner.invoke(app, ["principles", "check", "--strict", str(path)])
    assert result.exit_code == 1 and result.output.endswith("1 warning (--strict)\n")


def test_cli_show(in_repo):
    c = load_constitution("constitution/hhh.yaml")
    result = runner.invoke(app, ["principles", "show", "constitution/hhh.yaml"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"hhh 1.0  (constitution/hhh.yaml)\nhash {c.hash}\n")
    for p in c.principles:
        assert f"│ {p.id} " in result.output
    assert "│ answers-the-question   │      2 │ 8.3% │ C: Does the assistant's last response actually" in result.output
    assert "few-shot: 2 critique transcripts" in result.output


def test_cli_show_yaml_round_trips(tmp_path, in_repo):
    result = runner.invoke(app, ["principles", "show", "--yaml", "constitution/business-assistant.yaml"])
    assert result.exit_code == 0
    again = load_constitution(write(tmp_path, result.output, "resolved.yaml"))
    assert again.hash == load_constitution("constitution/business-assistant.yaml").hash


def test_cli_diff(tmp_path, in_repo):
    new = write(tmp_path, Path("principles.yaml").read_text()
                .replace('version: "1.0"', 'version: "1.1"')
                .replace("Which response is less preachy and condescending?", "Which response lectures less?")
                .replace("  - id: harmful-content\n    weight: 2\n", "  - id: harmful-content\n    weight: 3\n")
                .replace("  - id: bias\n", "  - id: fairness\n"))
    result = runner.invoke(app, ["principles", "diff", "principles.yaml", str(new)])
    assert result.exit_code == 0, result.output
    assert "+ added fairness\n- removed bias\n" in result.output
    assert "~ changed harmful-content: weight\n    weight: 2 -> 3\n" in result.output
    assert ("~ changed not-preachy: compare\n    compare:\n      - Which response is less preachy and "
            "condescending?\n      + Which response lectures less?\n") in result.output
    assert result.output.endswith("~ version: '1.0' -> '1.1'\n")
    same = runner.invoke(app, ["principles", "diff", "--exit-code", "principles.yaml", "principles.yaml"])
    assert same.exit_code == 0 and same.output.endswith("no differences\n")
    assert runner.invoke(app, ["principles", "diff", "--exit-code", "principles.yaml", str(new)]).exit_code == 1


def test_cli_show_broken_file_raises_the_typed_error(tmp_path):
    bad = write(tmp_path, HEAD + "principles: []\n")
    result = runner.invoke(app, ["principles", "show", str(bad)])
    assert result.exit_code == 1
    assert isinstance(result.exception, ConstitutionError)


def test_stage_hashes_cover_only_the_texts_each_stage_reads():
    from cai.constitution import Principle

    base = Principle("p", critique="c", revision="r", compare="q")
    edits = {"critique": Principle("p", critique="c2", revision="r", compare="q"),
             "revision": Principle("p", critique="c", revision="r2", compare="q"),
             "compare": Principle("p", critique="c", revision="r", compare="q2"),
             "id": Principle("p2", critique="c", revision="r", compare="q")}
    for field, p in edits.items():
        assert (p.revise_hash != base.revise_hash) == (field != "compare"), field
        assert (p.judge_hash != base.judge_hash) == (field in ("compare", "id")), field
    assert base.revise_hash != base.judge_hash


def test_the_reader_allows_exactly_the_fields_of_the_model_that_a_file_gives():
    # The schema is the dataclasses: a field added to the model is a key files may use, and the
    # fields the loader computes (source, hashes, path) are not keys.
    from dataclasses import fields

    from cai.constitution import model, reader

    def given(cls):
        return {f.name for f in fields(cls) if f.init} - {"source", "hash", "path"}

    assert set(reader.PRINCIPLE_KEYS) == given(model.Principle)
    assert set(reader.CRITIQUE_EXAMPLE_KEYS) == given(model.CritiqueExample)
    assert set(reader.COMPARISON_EXAMPLE_KEYS) == given(model.ComparisonExample)
    assert set(reader.TOP_KEYS) == given(model.Constitution) | {"include", "disable"}
    assert reader.TEMPLATE_KEYS == tuple(model.TEMPLATE_PLACEHOLDERS) == tuple(f.name for f in fields(model.Templates))
    assert reader.PRINCIPLE_REQUIRED == ("id", "critique", "revision", "compare")
    assert reader.CRITIQUE_EXAMPLE_REQUIRED == ("prompt", "response", "critique", "revision")
    assert reader.COMPARISON_EXAMPLE_REQUIRED == ("prompt", "response_a", "response_b", "answer")


def test_file_keys_follow_a_dataclass_and_leave_out_computed_fields():
    from dataclasses import dataclass, field

    from cai.constitution.model import COMPUTED
    from cai.constitution.reader import file_keys, required_keys

    @dataclass(frozen=True)
    class Thing:
        text: str
        request: str
        weight: float = 1.0
        where: str = field(default="", metadata=COMPUTED)

    assert file_keys(Thing) == ("text", "request", "weight")
    assert required_keys(Thing) == ("text", "request")
    assert required_keys(Thing, ("request",)) == ("text",)


def test_the_package_keeps_the_public_names_of_the_module_it_replaced():
    # Every public name of cai/constitution.py before it became a package (issue 11: "its
    # `__init__` keeps today's public names"), so `from cai.constitution import X` still works.
    import cai.constitution as package

    before = ("DEFAULT_PATH", "FEWSHOT_CHAR_BUDGET", "HASH_CHARS", "HASH_SCHEMA", "TEMPLATE_PLACEHOLDERS",
              "ComparisonExample", "Constitution", "ConstitutionDiff", "ConstitutionError", "CritiqueExample",
              "Principle", "Templates", "check_constitution", "diff_constitutions", "dump_constitution", "lint",
              "load_constitution", "principle_hash")
    assert [n for n in before if not hasattr(package, n)] == []
    assert set(before) <= set(package.__all__)
