"""Open an HTML file in headless Chromium and report what a person would see wrong with it.

Chromium runs with a temporary profile (its crash database and caches too), in a process group
of its own that is ended with it, and its DevTools protocol on 127.0.0.1 (a port it picks),
driven over one websocket: the page is loaded from disk, every console call, uncaught exception and log entry
(a resource that failed to load) is collected, each <svg> is measured after layout, and a
screenshot of the whole page is taken. `problems()` turns that into a list of failures; an empty
list is a page that loaded cleanly, drew every chart and is not blank.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BINARIES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
TIMEOUT_S = 60.0

# Per <svg>: its data marks (class="mark", see cai/report/svg.py) that laid out with an area, all its
# shapes, and its rendered size.
MEASURE = """JSON.stringify({
  svgs: [...document.querySelectorAll('svg')].map(s => {
    const r = s.getBoundingClientRect();
    const marks = [...s.querySelectorAll('.mark')].filter(m => {
      const b = m.getBBox();
      return b.width > 0 && b.height > 0;
    });
    return {shapes: s.querySelectorAll('circle,rect,line,polyline,path,polygon,ellipse').length,
            marks: marks.length, width: r.width, height: r.height, label: s.getAttribute('aria-label') || ''};
  }),
  scripts: document.querySelectorAll('script').length,
  text: document.body ? document.body.innerText.trim().length : 0,
})"""


def find_chromium() -> str | None:
    return next((p for b in BINARIES if (p := shutil.which(b))), None)


def chromium_or_skip() -> str:
    """The Chromium binary; else the test is skipped with the reason, or fails where
    CAI_REQUIRE_BROWSER=1 (CI, whose .ci/run installs it)."""
    import pytest

    path = find_chromium()
    missing = [m for m in ("websockets", "PIL") if not _importable(m)]
    if path is None or missing:
        why = ("no Chromium binary on PATH (looked for chromium, chromium-browser, google-chrome); "
               "install Debian's `chromium` package" if path is None
               else f"Python packages missing for the browser test: {', '.join(missing)}")
        if os.environ.get("CAI_REQUIRE_BROWSER") == "1":
            pytest.fail(f"CAI_REQUIRE_BROWSER=1 but {why}")
        pytest.skip(why)
    return path


def _importable(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


@dataclass
class PageResult:
    console: list[str] = field(default_factory=list)
    """console.* calls, uncaught exceptions and log entries (failed loads), as text."""
    svgs: list[dict[str, Any]] = field(default_factory=list)
    scripts: int = 0
    text: int = 0
    screenshot: bytes = b""


class _Session:
    """Request/response over the DevTools websocket; events in between are kept."""

    def __init__(self, ws: Any) -> None:
        self.ws, self.next_id, self.events = ws, 0, []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=TIMEOUT_S))
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_loaded(self, url: str) -> None:
        """Until the file `url` has fired its load event (a late load event of the about:blank
        the browser started on does not count)."""
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            if any(e.get("method") == "Page.loadEventFired" for e in self.events):
                here = self.call("Runtime.evaluate", expression="location.protocol + ' ' + document.readyState",
                                 returnByValue=True)["result"]["value"]
                if here == "file: complete":  # our page (pages here are files), not about:blank
                    return
                self.events = [e for e in self.events if e.get("method") != "Page.loadEventFired"]
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not load within {TIMEOUT_S} s")
            self.events.append(json.loads(self.ws.recv(timeout=TIMEOUT_S)))


def _port(profile: Path, proc: subprocess.Popen) -> int:
    """The DevTools port Chromium picked (it writes it to DevToolsActivePort in the profile)."""
    active = profile / "DevToolsActivePort"
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited with {proc.returncode} before it listened")
        if active.is_file() and active.read_text().strip():
            return int(active.read_text().split()[0])
        time.sleep(0.05)
    raise TimeoutError(f"chromium did not open its DevTools port within {TIMEOUT_S} s")


def _console_text(e: dict[str, Any]) -> str | None:
    p = e.get("params", {})
    if e.get("method") == "Runtime.consoleAPICalled":
        return f"console.{p.get('type')}: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"])
    if e.get("method") == "Runtime.exceptionThrown":
        d = p.get("exceptionDetails", {})
        return f"uncaught exception: {d.get('text', '')} {d.get('exception', {}).get('description', '')}".strip()
    if e.get("method") == "Log.entryAdded":
        entry = p.get("entry", {})
        return f"log {entry.get('level')}: {entry.get('text')} {entry.get('url', '')}".strip()
    return None


def open_page(html: Path, chromium: str, width: int = 1200, height: int = 3000) -> PageResult:
    """Load `html` in a fresh headless Chromium; collect console output, SVG sizes and a screenshot."""
    from urllib.request import urlopen

    from websockets.sync.client import connect

    profile = tempfile.mkdtemp(prefix="cai-chromium-")
    try:
        # Its own process group, so that the zygote and renderers can be ended with it (_end).
        proc = subprocess.Popen(
            [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", f"--user-data-dir={profile}",
             f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            # Its crash database and caches go under ~/.config and ~/.cache otherwise: keep them in the profile.
            env={**os.environ, "LANG": "C.UTF-8", "XDG_CONFIG_HOME": profile, "XDG_CACHE_HOME": profile})
        try:
            port = _port(Path(profile), proc)
            with urlopen(f"http://127.0.0.1:{port}/json/list", timeout=TIMEOUT_S) as r:
                page = next(t for t in json.load(r) if t.get("type") == "page")
            with connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=TIMEOUT_S) as ws:
                s = _Session(ws)
                for domain in ("Runtime.enable", "Log.enable", "Page.enable"):
                    s.call(domain)
                url = html.resolve().as_uri()
                s.events.clear()
                s.call("Page.navigate", url=url)
                s.wait_loaded(url)
                measured = json.loads(s.call("Runtime.evaluate", expression=MEASURE, returnByValue=True)
                                      ["result"]["value"])
                shot = s.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
                result = PageResult(svgs=measured["svgs"], scripts=measured["scripts"], text=measured["text"],
                                    screenshot=base64.b64decode(shot["data"]))
                result.console = [t for e in s.events if (t := _console_text(e)) is not None]
                return result
        finally:
            _end(proc)
    finally:
        _remove(Path(profile))


def _end(proc: subprocess.Popen) -> None:
    """End the browser, then whatever of its process group outlives it: its zygote and renderers
    are still shutting down (and writing into the profile) when the main process has exited."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the group Popen(start_new_session=True) made for it alone
    except (ProcessLookupError, PermissionError):
        pass


def _remove(profile: Path) -> None:
    """Delete the temporary profile; a process of the browser that has not exited yet may still
    add a file to it, so retry for a while instead of failing the test on the cleanup."""
    deadline = time.monotonic() + 10
    while True:
        try:
            shutil.rmtree(profile)
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def blank(png: bytes) -> bool:
    """True when the screenshot is one colour (nothing drew)."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        return im.convert("RGB").getcolors(maxcolors=1) is not None


def problems(r: PageResult) -> list[str]:
    """Everything wrong with a loaded page; [] for a good one."""
    out = [f"console: {line}" for line in r.console]
    if not r.svgs:
        out.append("no chart (<svg>) on the page")
    for i, s in enumerate(r.svgs):
        if s["shapes"] == 0 or s["marks"] == 0 or s["width"] <= 0 or s["height"] <= 0:
            out.append(f"chart {i} ({s['label']!r}) did not draw: {s}")
    if r.text == 0:
        out.append("the page shows no text")
    if not r.screenshot or blank(r.screenshot):
        out.append("the screenshot is blank (one colour)")
    return out
