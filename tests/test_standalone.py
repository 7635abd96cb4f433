"""The repository and the installed package stand alone: nothing reads a folder beside the clone,
the data the tests and benchmarks need ships in data/, and the default constitution, the library
and the example prompts ship inside the package, so that every stage works from any folder."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import DATA, REPO
from typer.testing import CliRunner

from cai import library
from cai.cli import app
from cai.constitution import DEFAULT_PATH, ConstitutionError, load_constitution
from cai.engine.fake import FakeEngine

# --- Nothing reads outside the clone --------------------------------------------------------------

# A path to the folder the project's data once came from, beside the clone: "../<NAME>",
# "/work/<NAME>", or <NAME> joined as a path component in code (REPO.parent / "<NAME>" / "data").
# The name is assembled here so that this file itself holds no such path.
NAME = "sha" "red"
OUTSIDE = re.compile(rf"\.\./{NAME}\b|/work/{NAME}\b|/\s*[\"']{NAME}[\"']|[\"']{NAME}[\"']\s*/")
SCANNED = ("cai", "tests", "scripts", "examples", "docs", ".ci")
TEXT = {".py", ".md", ".sh", ".yaml", ".yml", ".toml", ".txt", ".cfg", ""}


def repository_text_files() -> list[Path]:
    files = [REPO / "README.md", REPO / "pyproject.toml", DATA / "README.md"]
    for top in SCANNED:
        for dirpath, dirnames, filenames in os.walk(REPO / top):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            files += [Path(dirpath) / f for f in filenames if Path(f).suffix in TEXT]
    return files


def test_no_file_reads_a_folder_beside_the_clone():
    found = [f"{f.relative_to(REPO)}:{n}: {line.strip()}"
             for f in repository_text_files()
             for n, line in enumerate(f.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
             if OUTSIDE.search(line)]
    assert not found, "read data from data/ (data/README.md), not from beside the clone:\n" + "\n".join(found)


@pytest.mark.parametrize("line", [
    'SHARED_DATA = REPO.parent / "{n}" / "data"',
    "HH = Path(__file__).resolve().parents[2] / '{n}' / 'data' / 'pairs.jsonl'",
    "cai judge eval --pairs ../{n}/data/hh-rlhf-harmless-dev/pairs.jsonl",
    "DATA = '/work/{n}/data'",
])
def test_the_scan_catches_every_way_the_old_code_wrote_it(line):
    assert OUTSIDE.search(line.format(n=NAME))


@pytest.mark.parametrize("line", [
    "the machine was shared with other jobs", "Options and helpers shared by the CLI commands.",
    'DATA = REPO / "data"', "# on a shared 2-core box",
])
def test_the_scan_lets_ordinary_words_pass(line):
    assert not OUTSIDE.search(line)


# --- data/ ----------------------------------------------------------------------------------------


def readme_rows() -> dict[str, int]:
    """`file` -> rows, from the table of data/README.md."""
    text = (DATA / "README.md").read_text()
    return {m[0]: int(m[1]) for m in re.findall(r"^\| `([\w./-]+\.jsonl)` \| (\d+) \|", text, re.M)}


def test_data_readme_lists_every_file_with_its_true_row_count():
    rows = readme_rows()
    on_disk = sorted(str(p.relative_to(DATA)) for p in DATA.glob("*/*.jsonl"))
    assert sorted(rows) == on_disk and on_disk
    for name, n in rows.items():
        lines = (DATA / name).read_text(encoding="utf-8").splitlines()
        assert len(lines) == n, f"data/README.md says {name} has {n} rows; it has {len(lines)}"
        assert all(json.loads(x) for x in lines)


def test_every_data_folder_carries_its_license_and_the_whole_stays_small():
    folders = [p for p in DATA.iterdir() if p.is_dir()]
    assert {p.name for p in folders} == {"do-not-answer", "eval", "hh-rlhf-harmless-dev", "mt-bench", "refusal-labels"}
    for folder in folders:
        assert (folder / "LICENSE").stat().st_size > 500, folder
        assert f"({folder.name}/LICENSE)" in (DATA / "README.md").read_text()
    assert sum(p.stat().st_size for p in DATA.rglob("*") if p.is_file()) < 600_000


@pytest.mark.parametrize("script, rows, option", [
    ("bench_revise.py", "do-not-answer/prompts.jsonl", '"--n", type=int, default=128'),
    ("bench_label.py", "hh-rlhf-harmless-dev/pairs.jsonl", '"--pairs", type=int, default=256'),
    ("bench_engine.py", "mt-bench/questions.jsonl", None),  # repeats its 80 prompts past 80
])
def test_the_benchmarks_read_the_shipped_data_and_their_defaults_fit(script, rows, option):
    text = (REPO / "scripts" / script).read_text()
    folder, name = rows.split("/")
    assert f'REPO / "data" / "{folder}" / "{name}"' in text
    if option:
        assert option in text and int(option.rsplit("=", 1)[1]) <= readme_rows()[rows]


# --- The packaged constitutions and prompts ----------------------------------------------------------

ORIGINALS = {"principles.yaml": REPO / "principles.yaml",
             **{f"constitution/{p.name}": p for p in sorted((REPO / "constitution").glob("*.yaml"))},
             "examples/prompts.jsonl": REPO / "examples" / "prompts.jsonl",
             **{f"eval/{p.name}": p for p in sorted((DATA / "eval").glob("*.jsonl"))},
             "eval/LICENSE": DATA / "eval" / "LICENSE"}


def packaged_files(root: Path) -> dict[str, Path]:
    found = {"principles.yaml": root / "principles.yaml", "examples/prompts.jsonl": root / "examples" / "prompts.jsonl",
             "eval/LICENSE": root / "eval" / "LICENSE"}
    return {**found, **{f"constitution/{p.name}": p for p in sorted((root / "constitution").glob("*.yaml"))},
            **{f"eval/{p.name}": p for p in sorted((root / "eval").glob("*.jsonl"))}}


def test_the_packaged_copies_are_the_top_level_originals():
    packaged = packaged_files(library.resources())
    assert sorted(packaged) == sorted(ORIGINALS)
    for name, original in ORIGINALS.items():
        assert packaged[name].read_bytes() == original.read_bytes(), f"cai/resources/{name} drifted from {name}"


def test_library_names_every_packaged_constitution():
    files = library.library()
    assert list(files)[0] == DEFAULT_PATH == "default"
    assert sorted(files) == sorted(["default", *(p.stem for p in (REPO / "constitution").glob("*.yaml"))])
    assert load_constitution("hhh").hash == load_constitution(REPO / "constitution" / "hhh.yaml").hash
    # an include between packaged files (business-assistant includes ../principles.yaml) resolves
    assert load_constitution("business-assistant").hash == \
        load_constitution(REPO / "constitution" / "business-assistant.yaml").hash
    assert library.example_prompts().read_bytes() == (REPO / "examples" / "prompts.jsonl").read_bytes()
    assert {n: p.read_bytes() for n, p in library.eval_suites().items()} == \
        {p.stem: p.read_bytes() for p in (DATA / "eval").glob("*.jsonl")}


@pytest.mark.parametrize("value, is_name", [
    ("default", True), ("hhh", True), ("business-assistant", True), ("./hhh", False), ("hhh.yaml", False),
    ("constitution/hhh.yaml", False), ("principles.yaml", False), ("/abs/file", False), (Path("hhh"), True),
])
def test_a_bare_word_is_a_name_anything_else_a_path(value, is_name):
    assert library.is_name(value) is is_name


def test_an_unknown_name_says_what_ships(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "hh").write_text("name: x\n")  # a file of that name is not read: a bare word is a name
    with pytest.raises(ConstitutionError, match="no constitution named 'hh' ships with cai") as e:
        load_constitution("hh")
    assert e.value.fix.startswith("did you mean 'hhh'? packaged: business-assistant, business-style, default, "
                                  "harmless-cai, hhh;")
    assert "./hh" in e.value.fix


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """A user's project folder: no cai files in it, except a principles.yaml of their own that
    cai must not pick up silently."""
    work = tmp_path / "project"
    work.mkdir()
    (work / "principles.yaml").write_text(
        'name: mine\nversion: "1"\nprinciples:\n  - {id: p, critique: c, revision: r, compare: q}\n')
    monkeypatch.chdir(work)
    return work


DEFAULT = library.library()["default"]


def test_principles_check_with_no_argument_checks_the_packaged_default(elsewhere):
    c = load_constitution(DEFAULT)
    result = CliRunner().invoke(app, ["principles", "check"])
    assert result.exit_code == 0, result.output
    assert result.output == f"default ({DEFAULT}): ok: cai-default {c.version}, {len(c.principles)} principles, " \
                            f"hash {c.hash}\n"
    assert load_constitution().hash == c.hash != load_constitution("principles.yaml").hash


def test_principles_list_names_the_packaged_files(elsewhere):
    result = CliRunner().invoke(app, ["principles", "list"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    for name in library.library():
        assert f"│ {name} " in result.output
    assert f"example prompts: {library.example_prompts()}" in result.output


def test_revise_from_any_folder_uses_the_packaged_constitution(elsewhere, monkeypatch):
    monkeypatch.setattr("cai.revise.make_engine", lambda cfg: FakeEngine())
    (elsewhere / "my.jsonl").write_text('{"id": "a", "prompt": "Hi"}\n{"id": "b", "prompt": "How do I pick a lock?"}\n')
    result = CliRunner().invoke(app, ["revise", "--prompts", "my.jsonl", "--out", "run", "--rounds", "1"])
    assert result.exit_code == 0, result.output
    assert f"constitution: default ({DEFAULT})" in result.output
    recs = [json.loads(x) for x in (elsewhere / "run" / "records.jsonl").read_text().splitlines()]
    assert [r["constitution"]["hash"] for r in recs] == [load_constitution(DEFAULT).hash] * 2
    assert "constitution: default\n" in (elsewhere / "run" / "config.yaml").read_text()


def test_label_and_judge_eval_from_any_folder_use_the_packaged_constitution(elsewhere):
    from cai.judge_eval import JudgeEvalConfig, run_judge_eval
    from cai.label import LabelConfig, run_label

    pairs = elsewhere / "pairs.jsonl"
    conv = [{"role": "user", "content": "q"}]
    pairs.write_text(json.dumps({"id": "x", "prompt": conv, "chosen": [{"role": "assistant", "content": "a"}],
                                 "rejected": [{"role": "assistant", "content": "b"}]}) + "\n")
    run_label(LabelConfig(input=pairs, out=elsewhere / "label"), judge_engine=FakeEngine())
    judged = [json.loads(x) for x in (elsewhere / "label" / "judgments.jsonl").read_text().splitlines()]
    want = load_constitution(DEFAULT).hash
    assert [j["constitution"]["hash"] for j in judged] == [want]
    report = run_judge_eval(JudgeEvalConfig(pairs=pairs, bootstrap_samples=10), engine=FakeEngine())
    assert report["constitution_hash"] == want


# --- The built wheel ----------------------------------------------------------------------------------


def _can_build_without_isolation() -> bool:
    try:
        import setuptools
        import wheel  # noqa: F401
    except ImportError:
        return False
    return int(setuptools.__version__.split(".")[0]) >= 68


def test_the_wheel_holds_the_resources_and_works_from_any_folder(tmp_path):
    """Build the wheel from a copy of the sources (the build writes build/ and *.egg-info where it
    runs), install it into a folder of its own and run cai from that install, elsewhere."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "principles.yaml"):
        shutil.copy2(REPO / name, src / name)
    for name in ("constitution", "examples", "data/eval"):
        shutil.copytree(REPO / name, src / name)
    shutil.copytree(REPO / "cai", src / "cai", symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    # pip builds in an isolated environment (from the package index) unless this one has what
    # pyproject.toml's build-system asks for
    isolation = ["--no-build-isolation"] if _can_build_without_isolation() else []
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", *isolation, "-w", str(tmp_path / "dist"),
                    str(src)], check=True, capture_output=True)
    (whl,) = (tmp_path / "dist").glob("cai-*.whl")
    with zipfile.ZipFile(whl) as z:
        inside = {n.removeprefix("cai/resources/"): z.read(n) for n in z.namelist() if n.startswith("cai/resources/")}
    assert sorted(inside) == sorted(ORIGINALS)
    for name, original in ORIGINALS.items():
        assert inside[name] == original.read_bytes(), name

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(target),
                    str(whl)], check=True, capture_output=True)
    work = tmp_path / "project"
    work.mkdir()
    (work / "principles.yaml").write_text("not: a constitution\n")  # must not be picked up
    env = dict(os.environ, PYTHONPATH=str(target))

    def cai(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cai", *args], cwd=work, env=env, capture_output=True, text=True)

    where = subprocess.run([sys.executable, "-c", "import cai; print(cai.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True)
    assert where.stdout.strip() == str(target / "cai" / "__init__.py")
    r = cai("principles", "check", "default", "business-assistant", "hhh")
    assert r.returncode == 0, r.stdout + r.stderr
    packaged = target / "cai" / "resources"
    assert r.stdout.startswith(f"default ({packaged / 'principles.yaml'}): ok: cai-default")
    assert f"business-assistant ({packaged / 'constitution' / 'business-assistant.yaml'}): ok" in r.stdout
    suites = subprocess.run([sys.executable, "-c", "from cai import library; print(*library.eval_suites().values())"],
                            cwd=work, env=env, capture_output=True, text=True, check=True)
    names = ("benign-risky", "harmful", "helpful")
    assert suites.stdout.split() == [str(packaged / "eval" / f"{n}.jsonl") for n in names]
