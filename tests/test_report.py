"""`cai report`: run folders told apart by their files, each panel drawn from its data and absent
without it, every text from a run escaped, the page self-contained, and a folder of the wrong
kind a typed error. (The page in a real browser: test_report_browser.py.)"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from report_runs import HOSTILE, PPO_NAME, make_all, make_eval
from typer.testing import CliRunner

from cai.cli import app
from cai.errors import InputError, RecordError
from cai.report import build_report, curves, hacking, ladder, principles, svg, write_report
from cai.report.folders import kind_of
from cai.report.values import figure

SECTION_IDS = {"eval": {"ladder", "hacking", "samples"}, "revise": {"principles", "samples"}, "label": {"judge"},
               "judge_eval": {"judge"}, "ppo": {"ppo"}, "training": {"training"}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    return make_all(tmp_path_factory.mktemp("runs"))


def section_ids(page: str) -> set[str]:
    return set(re.findall(r'<section id="([a-z]+)">', page))


def section(page: str, id_: str) -> str:
    return page.split(f'<section id="{id_}">', 1)[1].split("</section>", 1)[0]


def test_each_stage_folder_is_told_by_its_files(runs):
    assert {k: kind_of(p) for k, p in runs.items()} == {k: k for k in runs}


def test_every_panel_is_drawn_from_its_data(runs):
    page, summary = build_report(list(runs.values()))
    assert section_ids(page) == set().union(*SECTION_IDS.values())
    assert summary.sections == ["The ladder", "Reward hacking", "PPO curves", "Training curves (SFT, reward model)",
                                "The judge", "Principles", "Samples side by side"]
    ladder_html = section(page, "ladder")
    # The refuser declines all harmful and benign prompts: 100% harmless and over-refusal, n=2, with
    # Wilson's interval; the longer policy wins every helpful prompt under a judge that likes length
    # (every prompt won outright: Wilson's interval too, 4/(4 + 1.96^2) = 51% below).
    assert "100% [34%, 100%] n=2" in ladder_html
    assert "100% [51%, 100%] n=4" in ladder_html
    for caption in ("Harmless rate", "Over-refusal rate", "Win rate against the baseline", "Length difference",
                    "Win rate per principle", "Cost of each rung", "total.tokens_generated", "total.seconds",
                    "runs/sft-3", "a base model (no training cost)"):
        assert caption in ladder_html
    assert ladder_html.count("<svg ") == 2 + 1 + 3 + 4  # refusal rates, win rate, drift x3 suites, 4 cost fields
    assert "<td>12</td>" in ladder_html  # prompt_tokens_per_answer: in the table, not charted
    # The stage table writes seconds as the charts do (3 figures), not every digit of a float.
    assert "<td>2.51</td>" in ladder_html and "2.5123456789" not in ladder_html
    hack = section(page, "hacking")
    assert hack.count("<svg ") == 3 and "runs/ppo" in hack and "<b>yes</b>" in hack and "+2.10 [+1.80, +2.40]" in hack
    assert "No plot: the run was trained on the judge" in hack and ">step 6</text>" in hack
    ppo = section(page, "ppo")
    assert [t for t in ("Reward", "KL to the starting policy", "Response length", "Entropy") if t in ppo]
    assert ppo.count("<svg ") == 4
    assert section(page, "training").count("<svg ") == 2
    judge_html = section(page, "judge")
    assert "Calibration: confidence against agreement" in judge_html and "Soft labels" in judge_html
    assert "cai judge eval" in judge_html and "cai label" in judge_html
    assert "Words edited by a revision" in section(page, "principles")
    samples = section(page, "samples")
    # The revise prompts are the helpful suite's: each sample shows the chain and all four policies.
    first = samples.split('<div class="sample">')[1]
    assert "Critique, round 1" in first and "Revision, round 2" in first
    assert all(f"<h4>{p}" in first for p in ("base", "refuser", "long", "hostile"))


@pytest.mark.parametrize("kind", sorted(SECTION_IDS))
def test_a_panel_is_absent_without_its_data(runs, kind):
    page, _ = build_report([runs[kind]])
    assert section_ids(page) == SECTION_IDS[kind]


def test_a_figure_report_json_gives_as_an_error_says_why_and_the_fix(runs, tmp_path):
    """The length-controlled win rate of a policy whose answers are all 3 tokens longer cannot be
    computed (report.json: {error, fix}); its cell says n/a and a note below the table says why and
    what to do, escaped like every text."""
    page, _ = build_report([runs["eval"]])
    ladder_html = section(page, "ladder")
    assert ("long, LC win (helpful): n/a: every prompt&#x27;s length difference is +3 tokens: length and quality "
            "cannot be told apart (evaluate on more prompts") in ladder_html
    folder = tmp_path / "eval"
    shutil.copytree(runs["eval"], folder)
    report = json.loads((folder / "report.json").read_text())
    report["results"]["long"]["helpful"]["length_controlled_win_rate"]["fix"] = HOSTILE
    (folder / "report.json").write_text(json.dumps(report))
    page, _ = build_report([folder])
    assert HOSTILE not in page and svg.esc(HOSTILE) in section(page, "ladder")


def test_the_ladder_without_cost_or_reward_hacking_leaves_them_out(tmp_path):
    page, _ = build_report([make_eval(tmp_path, extras=False)])
    assert section_ids(page) == {"ladder", "samples"}
    assert "Cost of each rung" not in page


def test_text_from_the_runs_is_escaped(runs):
    page, _ = build_report(list(runs.values()))
    assert HOSTILE not in page and PPO_NAME not in page
    assert svg.esc(HOSTILE) in page and svg.esc(PPO_NAME) in page
    assert "<script" not in page.lower() and "<img" not in page.lower() and "<svg onload" not in page.lower()


def test_the_page_needs_nothing_outside_itself(runs):
    page, _ = build_report(list(runs.values()))
    assert not re.search(r"<(script|link|iframe|object|embed)\b", page, re.I)
    assert not re.search(r"@import|url\(", page)
    # Every href is an anchor on the page; the only URL is SVG's namespace name, which loads nothing.
    assert set(re.findall(r'href="([^"]*)"', page)) <= {f"#{i}" for i in set().union(*SECTION_IDS.values())}
    assert set(re.findall(r"https?://[^\s\"'<>]+", page)) == {"http://www.w3.org/2000/svg"}


def test_write_report_writes_the_page_atomically(runs, tmp_path):
    out = tmp_path / "sub" / "report.html"
    out.parent.mkdir()
    out.write_text("old")
    s = write_report([runs["ppo"]], out)
    assert out.read_text().startswith("<!DOCTYPE html>") and out.read_text().endswith("</html>\n")
    assert list(out.parent.iterdir()) == [out] and s.sections == ["PPO curves"]


def test_a_folder_of_run_folders_stands_for_them(runs, tmp_path):
    parent = tmp_path / "quickstart"
    parent.mkdir()
    for kind in ("revise", "training"):
        shutil.copytree(runs[kind], parent / kind)
    (parent / "notes").mkdir()
    page, summary = build_report([parent])
    assert section_ids(page) == {"principles", "samples", "training"}
    assert summary.skipped == [str(parent / "notes")]
    # A folder named twice is read once.
    _, again = build_report([parent, parent / "revise"])
    assert again.runs == summary.runs


def test_a_folder_of_the_wrong_kind_is_a_typed_error_naming_it_and_the_files_expected(tmp_path):
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "notes.txt").write_text("hello")
    expected = r"not a run folder \(it holds: notes.txt\).*records.jsonl \(cai revise\)"
    with pytest.raises(InputError, match=expected) as e:
        build_report([odd])
    assert e.value.location.file == str(odd) and "--out" in e.value.fix
    with pytest.raises(InputError, match="no such folder"):
        build_report([tmp_path / "missing"])
    with pytest.raises(InputError, match="not a folder"):
        build_report([odd / "notes.txt"])


def test_an_unreadable_file_in_a_run_folder_is_a_located_error(runs, tmp_path):
    bad = tmp_path / "eval"
    shutil.copytree(runs["eval"], bad)
    (bad / "report.json").write_text('{"results": ')
    with pytest.raises(InputError, match="invalid JSON") as e:
        build_report([bad])
    assert e.value.location.file == str(bad / "report.json")
    shutil.copy(runs["eval"] / "report.json", bad / "report.json")
    lines = (bad / "answers.jsonl").read_text().splitlines()
    (bad / "answers.jsonl").write_text("\n".join([lines[0], json.dumps({"id": "x", "policy": 3})]) + "\n")
    with pytest.raises(RecordError) as e:
        build_report([bad])
    assert e.value.location.line == 2


def test_cli_writes_the_page_and_prints_errors(runs, tmp_path):
    out = tmp_path / "r.html"
    result = CliRunner().invoke(app, ["report", str(runs["ppo"]), str(runs["label"]), "--out", str(out),
                                      "--title", "<b>my runs</b>"])
    assert result.exit_code == 0, result.output
    assert "<title>&lt;b&gt;my runs&lt;/b&gt;</title>" in out.read_text()
    odd = tmp_path / "odd"
    odd.mkdir()
    done = subprocess.run([sys.executable, "-m", "cai", "report", str(odd), "--out", str(tmp_path / "x.html")],
                          capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr.startswith("Error: ") and str(odd) in done.stderr
    assert not (tmp_path / "x.html").exists()


def test_cli_prints_folder_names_with_brackets_as_they_are(runs, tmp_path):
    """A folder name is data for the terminal too: `[bold]` in it is printed, not read as rich
    markup (it vanished), and a path that reads `[/b]` (folder `out[`, file `b].html`) no longer
    crashes the command after the page was written (a closing tag that matches nothing)."""
    root = tmp_path / "runs[red]"
    shutil.copytree(runs["ppo"], root / "ppo[bold]")
    (root / "notes[x]").mkdir()
    (tmp_path / "out[").mkdir()
    out = tmp_path / "out[" / "b].html"
    result = CliRunner().invoke(app, ["report", str(root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = "".join(result.output.split())  # the terminal wraps long paths anywhere
    assert f"readppo:{root / 'ppo[bold]'}" in text and f"skipped{root / 'notes[x]'}" in text
    assert str(out) in text


# --- The pieces -------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [
    (0.25, (0.25, None, None, None)),
    ({"value": 0.5, "low": 0.4, "high": 0.6, "n": 10, "method": "wilson"}, (0.5, 0.4, 0.6, 10)),
    ({"estimate": {"value": 0.7, "low": 0.6, "high": 0.8, "n": 4}, "wins": 3}, (0.7, 0.6, 0.8, 4)),
    ({"difference": {"value": -2.0, "low": -3.0, "high": -1.0, "n": 5}, "ratio": 0.9}, (-2.0, -3.0, -1.0, 5)),
    ({"rate": 0.8, "ci95": [0.5, 0.9], "n": 10}, (0.8, 0.5, 0.9, 10)),
    ({"error": "length and quality cannot be told apart"}, None),
    (True, None), (float("nan"), None), ("0.5", None), (None, None),
])
def test_figures_are_read_from_every_shape_report_json_uses(value, expected):
    f = figure(value)
    assert (None if f is None else (f.value, f.low, f.high, f.n)) == expected


def test_cost_is_found_wherever_report_json_keeps_it():
    top = {"cost": {"sft": {"seconds": 3, "tokens": {"generated": 7}}}, "results": {"sft": {}}}
    assert ladder.cost_of(top, "sft") == {"seconds": 3.0, "tokens.generated": 7.0}
    assert ladder.cost_of({"results": {"sft": {"cost": {"steps": 5}}}}, "sft") == {"steps": 5.0}
    assert ladder.cost_of({"provenance": {"policies": {"sft": {"cost": {"gpu_seconds": 1.5}}}}}, "sft") == {
        "gpu_seconds": 1.5}
    assert ladder.cost_of({"results": {"sft": {}}}, "sft") == {}
    # A served model: nothing known but a note, which the page still shows.
    served = {"cost": {"api": {"stages": [], "total": {"seconds": None}, "notes": ["api: a served model"]}},
              "results": {"api": {}}}
    assert ladder.cost_of(served, "api") == {} and "a served model" in ladder._cost(served, ["api"])


def test_reward_hacking_checkpoints_are_read_from_each_shape():
    cps = [{"step": 4, "rm_score": 1.0, "win_rate": {"value": 0.4}}, {"step": 2, "rm": 0.5, "judge_win_rate": 0.6}]
    for shape in (cps, {"steps": cps}, {"checkpoints": cps}, {"ppo": {"steps": cps}}, {"ppo": cps}):
        (name, run), = hacking.runs_of(shape).items()
        assert [(c.step, c.rm.value, c.win.value) for c in run.checkpoints] == [(2, 0.5, 0.6), (4, 1.0, 0.4)]
    (name, run), = hacking.runs_of({"judge-run": {"error": "no reward model"}}).items()
    assert name == "judge-run" and run.checkpoints == [] and run.entry["error"] == "no reward model"
    assert hacking.runs_of(None) == {} and hacking.runs_of({"note": "not measured"}) == {}


def test_a_step_logged_twice_by_a_resumed_run_counts_once_its_last_value():
    rows = [{"step": 1, "objective/kl": 0.1}, {"step": 2, "objective/kl": 0.5}, {"step": 2, "objective/kl": 0.2},
            {"step": 3, "eval/kl": 9.0}]
    assert curves.series(rows, "objective/kl") == ([1.0, 2.0], [0.1, 0.2])


def test_the_principle_that_rewrites_most_comes_first():
    assert principles.edited_share("a b c d", "a b c d") == 0.0
    assert principles.edited_share("a b c d", "w x y z") == 1.0
    changes = [principles.Change("light", principles.edited_share("a b c d", "a b c d e"), 1),
               principles.Change("heavy", 1.0, 10), principles.Change("heavy", 0.5, 4)]
    st = principles.stats(changes)
    assert [s.principle for s in st] == ["heavy", "light"]
    assert st[0].uses == 2 and st[0].edited == 0.75 and st[0].words == 7.0 and st[0].words_half_width > 0
    assert st[1].unchanged == 0.0 and st[1].words_half_width is None


@pytest.mark.parametrize("lo, hi, whole, expected", [
    (0.0, 1.0, False, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
    (0.0, 3.0, True, [0.0, 1.0, 2.0, 3.0]),
    (-0.53, 1.2, False, [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5]),
    (2.0, 2.0, False, [2.0, 2.2, 2.4, 2.6, 2.8, 3.0]),
])
def test_ticks_are_round_and_cover_the_range(lo, hi, whole, expected):
    assert svg.ticks(lo, hi, whole=whole) == pytest.approx(expected)


def _numbers(obj, f):
    """`obj` with every number (not bool) replaced by f(number)."""
    if isinstance(obj, dict):
        return {k: _numbers(v, f) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_numbers(v, f) for v in obj]
    return f(obj) if isinstance(obj, int | float) and not isinstance(obj, bool) else obj


@pytest.mark.parametrize("big", [1e308, 1e30])
def test_huge_numbers_in_report_json_draw_inside_the_charts(runs, tmp_path, big):
    """Every number of an eval's report.json made huge, of both signs (a diverged run, another
    tool's file): the page is still made, and no coordinate is inf or nan (a broken SVG)."""
    folder = tmp_path / "eval"
    shutil.copytree(runs["eval"], folder)
    report = json.loads((folder / "report.json").read_text())
    (folder / "report.json").write_text(json.dumps(_numbers(report, lambda v: big if v > 0.3 else -big)))
    page, _ = build_report([folder])
    assert 'class="mark"' in section(page, "ladder") and 'class="mark"' in section(page, "hacking")
    assert not re.findall(r'(?:x|y|x1|x2|y1|y2|cx|cy|width|height|points)="[^"]*(?:inf|nan)', page)
    assert all(0 <= float(c) <= 1000 for c in re.findall(r' c[xy]="([^"]+)"', page))


@pytest.mark.parametrize("kind, path, value", [
    ("eval", ("results", "base", "harmful"), "x"),
    ("eval", ("results", "base"), None),
    ("eval", ("results", "refuser", "helpful", "win_rate_by_principle"), 7),
    ("eval", ("provenance",), "x"),
    ("eval", ("provenance", "policies"), "x"),
    ("eval", ("provenance", "suites"), 7),
    ("eval", ("cost", "base", "stages"), 7),
    ("eval", ("cost", "base", "notes"), 7),
    ("judge_eval", ("calibration", "bins"), 7),
])
def test_a_part_of_report_json_in_an_unknown_shape_leaves_the_rest_of_the_page(runs, tmp_path, kind, path, value):
    """report.json from another cai version or edited by hand: a part in a shape the report does not
    know is left out (its panel draws without it), not a traceback for the whole page."""
    folder = tmp_path / kind
    shutil.copytree(runs[kind], folder)
    report = json.loads((folder / "report.json").read_text())
    inner = report
    for key in path[:-1]:
        inner = inner[key]
    inner[path[-1]] = value
    (folder / "report.json").write_text(json.dumps(report))
    page, _ = build_report([folder])
    assert 'class="mark"' in section(page, "ladder" if kind == "eval" else "judge")


@pytest.mark.parametrize("p", [float("nan"), 1e308])
def test_a_nan_or_huge_soft_label_in_judgments_jsonl_still_gives_the_histogram(runs, tmp_path, p):
    """judgments.jsonl of `cai label` with p = NaN (JSON allows it; left out) or 1e308 (counted in
    the last bin) on one pair: the histogram is drawn instead of the page failing on int()."""
    folder = tmp_path / "label"
    shutil.copytree(runs["label"], folder)
    lines = (folder / "judgments.jsonl").read_text().splitlines()
    lines[0] = json.dumps({**json.loads(lines[0]), "p": p})
    (folder / "judgments.jsonl").write_text("\n".join(lines) + "\n")
    page, _ = build_report([folder])
    assert "Soft labels" in section(page, "judge")


def test_a_chart_escapes_its_labels_and_marks_its_data():
    out = svg.interval_chart([svg.Interval("<b>x</b>", 0.5, 0.4, 0.6, 3), svg.Interval('"y"', None, note="<i>")],
                             "t<")
    assert "<b>" not in out and "&lt;b&gt;x&lt;/b&gt;" in out and "&quot;y&quot;" in out and "&lt;i&gt;" in out
    assert out.count('class="mark"') == 1


def test_an_unreadable_file_is_a_typed_error(runs, monkeypatch):
    """A file the system will not let cai read (no permission; root ignores permissions, so the
    error is raised by hand here) is an InputError naming it, not a traceback."""
    def denied(path, cls):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr("cai.report.folders.read_records", denied)
    with pytest.raises(InputError, match="cannot read: Permission denied") as e:
        build_report([runs["revise"]])
    assert e.value.location.file == str(runs["revise"] / "records.jsonl")
