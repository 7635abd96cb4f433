"""The HTML page around the sections: one file, its CSS inline, no script, no link to anything
outside it (it opens offline, from disk, in any browser)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cai.report.svg import esc

CSS = """
:root { --fg: #1b1b1b; --muted: #5f6368; --line: #dadce0; --bg: #ffffff; --panel: #f8f9fa; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg);
       background: var(--bg); }
header { padding: 18px 28px 8px; border-bottom: 1px solid var(--line); }
header h1 { margin: 0 0 4px; font-size: 22px; }
nav a { margin-right: 14px; color: #1a73e8; text-decoration: none; }
main { padding: 8px 28px 40px; max-width: 1300px; }
section { margin-top: 26px; }
h2 { font-size: 18px; border-bottom: 2px solid var(--fg); padding-bottom: 2px; }
h3 { font-size: 15px; margin: 20px 0 6px; }
p.how, p.note { color: var(--muted); max-width: 900px; margin: 4px 0 10px; }
.charts { display: flex; flex-wrap: wrap; gap: 14px 22px; }
figure { margin: 0; max-width: 560px; }
figcaption { font-weight: 600; font-size: 13px; margin-bottom: 2px; }
svg.chart { display: block; max-width: 100%; height: auto; }
table { border-collapse: collapse; margin: 8px 0 14px; font-size: 13px; }
th, td { border: 1px solid var(--line); padding: 3px 8px; text-align: right; vertical-align: top; }
th { background: var(--panel); }
td.l, th.l { text-align: left; }
.tiles { display: flex; flex-wrap: wrap; gap: 10px; margin: 8px 0; }
.tile { border: 1px solid var(--line); border-radius: 6px; padding: 6px 12px; background: var(--panel); }
.tile b { display: block; font-size: 18px; }
.tile span { color: var(--muted); font-size: 12px; }
.sample { border: 1px solid var(--line); border-radius: 6px; margin: 14px 0; padding: 8px 12px; }
.cols { display: grid; grid-template-columns: repeat(auto-fit, minmax(260px, 1fr)); gap: 10px; }
.box { background: var(--panel); border-radius: 4px; padding: 6px 8px; }
.box h4 { margin: 0 0 4px; font-size: 12px; color: var(--muted); }
.text { white-space: pre-wrap; overflow-wrap: anywhere; max-height: 320px; overflow: auto; font-size: 13px; }
.tag { display: inline-block; text-transform: none; letter-spacing: 0; font-size: 11px; padding: 0 6px;
       border-radius: 8px; background: #e8eaed; margin-left: 4px; }
footer { color: var(--muted); font-size: 12px; border-top: 1px solid var(--line); padding: 10px 28px; }
code { font-size: 12px; }
"""


@dataclass(frozen=True)
class Section:
    """One panel of the page: an anchor id, a heading, and its body (HTML made by the section's
    module, every data text in it already escaped)."""

    id: str
    title: str
    body: str


def figure(caption: str, svg: str) -> str:
    return f"<figure><figcaption>{esc(caption)}</figcaption>{svg}</figure>"


def charts(figures: Sequence[str]) -> str:
    return f'<div class="charts">{"".join(figures)}</div>' if figures else ""


def how(text: str) -> str:
    """A 'how to read this' paragraph (text, escaped)."""
    return f'<p class="how">{esc(text)}</p>'


def tiles(items: Sequence[tuple[str, str]]) -> str:
    """Headline figures: (value, what it is)."""
    return '<div class="tiles">' + "".join(f'<div class="tile"><b>{esc(v)}</b><span>{esc(k)}</span></div>'
                                           for v, k in items) + "</div>"


def table(head: Sequence[str], rows: Sequence[Sequence[str]], *, left: int = 1) -> str:
    """A table of texts (escaped here); the first `left` columns are left-aligned."""
    def cells(tag: str, values: Sequence[str]) -> str:
        return "".join(f'<{tag}{" class=l" if i < left else ""}>{esc(v)}</{tag}>' for i, v in enumerate(values))
    return (f"<table><thead><tr>{cells('th', head)}</tr></thead><tbody>"
            + "".join(f"<tr>{cells('td', r)}</tr>" for r in rows) + "</tbody></table>")


def render(title: str, sections: Sequence[Section], footer: Sequence[str]) -> str:
    """The whole page."""
    nav = "".join(f'<a href="#{esc(s.id)}">{esc(s.title)}</a>' for s in sections)
    body = "".join(f'<section id="{esc(s.id)}"><h2>{esc(s.title)}</h2>{s.body}</section>' for s in sections)
    if not sections:
        body = '<p class="note">None of the folders holds anything to draw.</p>'
    foot = "".join(f"<div>{esc(line)}</div>" for line in footer)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
            f"<header><h1>{esc(title)}</h1><nav>{nav}</nav></header><main>{body}</main>"
            f"<footer>{foot}</footer></body></html>\n")
