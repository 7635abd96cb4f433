"""`cai report`'s page in a real browser: headless Chromium (Debian's `chromium` package) opens the
report of a run folder of every kind; the page must log nothing to the console (no error, no
failed load), every chart must lay out its data, and its screenshot must not be blank. The checks
are shown to fail on pages that break each of them.

Skipped where no Chromium is installed, unless CAI_REQUIRE_BROWSER=1 (CI: .ci/run installs it),
where a missing browser fails instead. CAI_REPORT_SCREENSHOT=PATH keeps the report's screenshot."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest
from browser import PageResult, chromium_or_skip, open_page, problems
from report_runs import make_all

from cai.report import write_report

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def chromium() -> str:
    return chromium_or_skip()


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    folders = make_all(root)
    out = root / "report.html"
    write_report(list(folders.values()), out)
    return out


def test_the_report_opens_cleanly_draws_every_chart_and_is_not_blank(chromium, report, tmp_path):
    r = open_page(report, chromium)
    assert problems(r) == []
    # Every chart in the file is on the page and drew data; the escaped hostile texts ran nothing.
    assert len(r.svgs) == report.read_text().count("<svg ") >= 20
    assert r.scripts == 0
    shot = tmp_path / "report.png"
    shot.write_bytes(r.screenshot)
    assert shot.stat().st_size > 10_000
    if os.environ.get("CAI_REPORT_SCREENSHOT"):
        shutil.copy(shot, os.environ["CAI_REPORT_SCREENSHOT"])


PAGE = ('<!DOCTYPE html><html><head><meta charset="utf-8"></head><body><p>A chart:</p>'
        '<svg width="200" height="80"><rect class="mark" x="10" y="10" width="100" height="40" fill="#1f77b4"/>'
        '</svg>{extra}</body></html>')


@pytest.mark.parametrize("extra, body, expected", [
    ("", None, None),  # the good page: no problem (so the failures below are the checks firing)
    ("<script>throw new Error('deliberate')</script>", None, "uncaught exception"),
    ("<script>console.error('deliberate')</script>", None, "console.error: deliberate"),
    ('<img src="missing.png">', None, "Failed to load resource"),
    ("<svg width='200' height='80'></svg>", None, "did not draw"),
    ("<svg width='200' height='80'><rect class='mark' x='0' y='0' width='0' height='0'/></svg>", None,
     "did not draw"),
    ("", '<!DOCTYPE html><html><body style="background:#fff"></body></html>', "blank"),
])
def test_the_checks_fail_on_a_broken_page(chromium, tmp_path, extra, body, expected):
    page = tmp_path / "page.html"
    page.write_text(body if body is not None else PAGE.replace("{extra}", extra))
    found = problems(open_page(page, chromium))
    if expected is None:
        assert found == []
    else:
        assert any(expected in p for p in found), found


def test_a_blank_screenshot_is_caught_even_with_charts_measured():
    """problems() reads the screenshot itself: a page whose charts measured fine but whose picture
    is one colour (it never painted) fails."""
    image = pytest.importorskip("PIL.Image")
    buf = io.BytesIO()
    image.new("RGB", (50, 50), "white").save(buf, format="PNG")
    r = PageResult(svgs=[{"shapes": 3, "marks": 1, "width": 100, "height": 50, "label": "x"}], text=10,
                   screenshot=buf.getvalue())
    assert problems(r) == ["the screenshot is blank (one colour)"]


def test_chromium_is_gone_after_a_session_that_failed_midway(chromium, tmp_path, monkeypatch):
    """A check that raises inside the DevTools session (here: the screenshot) still ends the
    browser and every process it started: none is left running with the session's temporary
    profile, the profile folder itself is removed (with everything the browser wrote: its crash
    database and caches too), and the error raised is the check's own (not
    the cleanup's: the zygote still wrote into the profile after the browser exited, and removing
    it failed now and then with "Directory not empty")."""
    import subprocess
    import tempfile
    import time

    import browser

    profiles: list[str] = []
    real_mkdtemp = tempfile.mkdtemp

    def recorded(*args, **kwargs):
        profiles.append(real_mkdtemp(*args, **kwargs))
        return profiles[-1]

    real_call = browser._Session.call

    def failing(self, method, **params):
        if method == "Page.captureScreenshot":
            raise RuntimeError("deliberate")
        return real_call(self, method, **params)

    launched: list[dict] = []
    real_popen = browser.subprocess.Popen

    def popen(args, **kwargs):
        if args[0] == chromium:  # not the pgrep below
            launched.append(kwargs)
        return real_popen(args, **kwargs)

    monkeypatch.setattr(browser.tempfile, "mkdtemp", recorded)
    monkeypatch.setattr(browser.subprocess, "Popen", popen)
    monkeypatch.setattr(browser._Session, "call", failing)
    page = tmp_path / "page.html"
    page.write_text(PAGE.replace("{extra}", ""))
    with pytest.raises(RuntimeError, match="deliberate"):
        open_page(page, chromium)
    (profile,) = profiles
    deadline = time.monotonic() + 10
    while (left := subprocess.run(["pgrep", "-f", profile], capture_output=True, text=True).stdout.split()) \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == [] and not Path(profile).exists()
    # Everything it writes went into that profile: its crash database and caches are under
    # ~/.config/chromium and ~/.cache otherwise, outside the test's reach.
    (kwargs,) = launched
    assert kwargs["env"]["XDG_CONFIG_HOME"] == kwargs["env"]["XDG_CACHE_HOME"] == profile
