"""Inline SVG charts, drawn here with no chart library, so the page needs nothing but itself.

Every chart is a function of plain numbers and labels that returns one `<svg>` string; every
label is escaped (`esc`), so a text from a run folder cannot add markup. Charts are drawn only
when they have data: a caller with nothing to plot leaves the chart out instead of drawing an
empty frame. The shapes that show data carry class="mark" (the browser test checks that every
chart laid out at least one).
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
"""Series colours, in order (colour-blind-safe enough for up to four series side by side)."""
WIDTH = 540
FONT = 'font-family="system-ui, sans-serif" font-size="12"'


def esc(value: object) -> str:
    """`value` as text that is safe inside HTML and SVG, in content and in quoted attributes."""
    return html.escape(str(value), quote=True)


def pct(v: float) -> str:
    return f"{100 * v:.0f}%"


def num(v: float) -> str:
    """A number in at most 4 significant digits, without exponent for ordinary sizes."""
    if v == 0 or not math.isfinite(v):
        return f"{v:g}"
    return f"{v:,.0f}" if 1e3 <= abs(v) < 1e9 else f"{v:.3g}"  # 4,353 rather than 4.35e+03


def ticks(lo: float, hi: float, count: int = 5, *, whole: bool = False) -> list[float]:
    """Round tick values covering [lo, hi] (1, 2, 2.5 or 5 times a power of ten apart; whole
    numbers only with `whole`, for steps)."""
    if hi <= lo:
        hi = lo + 1.0 if lo + 1.0 > lo else lo + abs(lo) / 2  # + 1.0 is lost in a huge lo's rounding
    # Each term divided before subtracting: hi - lo overflows to inf for values near the largest float.
    raw = hi / count - lo / count
    raw = max(raw, 1.0) if whole else raw
    power = 10.0 ** math.floor(math.log10(raw))
    steps = [m * power for m in (1, 2, 2.5, 5, 10)]
    step = next(s for s in steps if s >= raw and (not whole or float(s).is_integer()))
    first = math.floor(lo / step) * step
    out = [round(first + i * step, 10) for i in range(int(math.ceil(hi / step - first / step)) + 1)]
    return [t for t in out if math.isfinite(t)] if len(out) > 1 else [lo, hi]


@dataclass(frozen=True)
class Scale:
    """A linear map from data [lo, hi] to pixels [a, b]."""

    lo: float
    hi: float
    a: float
    b: float

    def __call__(self, v: float) -> float:
        # Halved before subtracting, so that no difference of two finite floats overflows.
        span = self.hi / 2 - self.lo / 2 or 0.5
        at = self.a + (v / 2 - self.lo / 2) / span * (self.b - self.a)
        # A value outside a fixed domain (a win rate's interval below 0) is drawn at its edge, not
        # off the chart, nor at inf where it is huge.
        return min(max(at, min(self.a, self.b)), max(self.a, self.b))


def _svg(width: float, height: float, title: str, body: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width:.0f}" height="{height:.0f}" '
            f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label="{esc(title)}" {FONT}>'
            f"<title>{esc(title)}</title>{''.join(body)}</svg>")


def _text(x: float, y: float, s: str, anchor: str = "start", extra: str = "") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{extra}>{esc(s)}</text>'


def _line(x1: float, y1: float, x2: float, y2: float, stroke: str = "#999", extra: str = "") -> str:
    return f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{stroke}"{extra}/>'


def _short(label: str, chars: int) -> str:
    return label if len(label) <= chars else label[: chars - 1] + "…"


@dataclass(frozen=True)
class Interval:
    """One row of an interval chart: a value with its 95% interval (None: no value for this row)."""

    label: str
    value: float | None
    low: float | None = None
    high: float | None = None
    n: int | None = None
    note: str = ""


def interval_chart(rows: Sequence[Interval], title: str, *, domain: tuple[float, float] | None = (0.0, 1.0),
                   reference: float | None = None, fmt: Callable[[float], str] = pct) -> str:
    """A forest plot: one row per label, a dot at the value and a bar over its 95% interval, on a
    shared axis (`domain`, or the rows' own range when None), with an optional reference line
    (0.5 for a win rate: no difference). A row without a value shows its note instead."""
    left, right, row_h, top = 140, 160, 26, 14
    width = WIDTH
    height = top + row_h * len(rows) + 34
    values = [v for r in rows for v in (r.value, r.low, r.high) if v is not None]
    lo, hi = domain if domain is not None else (min(values + [reference or 0.0]), max(values + [reference or 0.0]))
    grid = ticks(lo, hi)
    lo, hi = (lo, hi) if domain is not None else (grid[0], grid[-1])
    x = Scale(lo, hi, left, width - right)
    body = [f'<rect x="{left}" y="{top - 4}" width="{width - left - right}" height="{row_h * len(rows) + 4}" '
            f'fill="#fafafa"/>']
    axis_y = top + row_h * len(rows) + 4
    for t in grid:
        if lo - 1e-9 <= t <= hi + 1e-9:
            body += [_line(x(t), top - 4, x(t), axis_y, "#e3e3e3"), _text(x(t), axis_y + 14, fmt(t), "middle")]
    if reference is not None:
        body.append(_line(x(reference), top - 4, x(reference), axis_y, "#555", ' stroke-dasharray="4 3"'))
    for i, r in enumerate(rows):
        cy = top + row_h * i + row_h / 2
        body.append(_text(left - 8, cy + 4, _short(r.label, 21), "end"))
        if r.value is None:
            body.append(_text(left + 6, cy + 4, r.note or "no value", extra=' fill="#888"'))
            continue
        colour = PALETTE[i % len(PALETTE)]
        if r.low is not None and r.high is not None:
            body += [_line(x(r.low), cy, x(r.high), cy, colour, ' stroke-width="3" stroke-linecap="round"'),
                     _line(x(r.low), cy - 5, x(r.low), cy + 5, colour), _line(x(r.high), cy - 5, x(r.high), cy + 5,
                                                                               colour)]
        body.append(f'<circle class="mark" cx="{x(r.value):.1f}" cy="{cy:.1f}" r="5" fill="{colour}"/>')
        shown = fmt(r.value) + (f" [{fmt(r.low)}, {fmt(r.high)}]" if r.low is not None and r.high is not None else "")
        body.append(_text(width - right + 8, cy + 4, shown + (f" n={r.n}" if r.n is not None else "")))
    return _svg(width, height, title, body)


def bar_chart(rows: Sequence[tuple[str, float]], title: str, *, fmt: Callable[[float], str] = num) -> str:
    """Horizontal bars from zero, one per label (negative values to the left of the zero line)."""
    left, right, row_h, top = 170, 90, 22, 10
    height = top + row_h * len(rows) + 10
    lo, hi = min([0.0] + [v for _, v in rows]), max([0.0] + [v for _, v in rows])
    x = Scale(lo, hi if hi > lo else lo + 1.0, left, WIDTH - right)
    body = [_line(x(0), top - 4, x(0), top + row_h * len(rows), "#555")]
    for i, (label, v) in enumerate(rows):
        y = top + row_h * i
        a, b = sorted((x(0), x(v)))
        body += [f'<rect x="{a:.1f}" y="{y + 3}" width="{max(b - a, 1.0):.1f}" height="{row_h - 6}" '
                 f'fill="{PALETTE[0]}" class="mark"/>',
                 _text(left - 8, y + row_h / 2 + 4, _short(label, 26), "end"),
                 _text(max(x(v), x(0)) + 6, y + row_h / 2 + 4, fmt(v))]
    return _svg(WIDTH, height, title, body)


@dataclass(frozen=True)
class Series:
    """One line of a line chart: (x, y) points in x order; an optional 95% band per point."""

    name: str
    xs: Sequence[float]
    ys: Sequence[float]
    lows: Sequence[float] | None = None
    highs: Sequence[float] | None = None
    labels: Sequence[str] | None = None
    """A text beside each point (the step of a checkpoint on a path), or None."""


def line_chart(series: Sequence[Series], title: str, *, x_label: str = "step", y_label: str = "",
               y_domain: tuple[float, float] | None = None, reference: float | None = None,
               fmt: Callable[[float], str] = num) -> str:
    """Lines over a shared x axis, a dot at each point, error bars where a series has them, and
    a legend. A series of one point shows as a dot."""
    left, right, top, plot_h = 58, 16, 26, 180
    height = top + plot_h + 44
    xs = [x for s in series for x in s.xs]
    ys = [y for s in series for y in list(s.ys) + list(s.lows or []) + list(s.highs or [])]
    if reference is not None:
        ys.append(reference)
    ylo, yhi = y_domain if y_domain is not None else (min(ys), max(ys))
    ygrid = ticks(ylo, yhi, 4)
    ylo, yhi = (ylo, yhi) if y_domain is not None else (ygrid[0], ygrid[-1])
    xgrid = ticks(min(xs), max(xs), 6, whole=all(float(v).is_integer() for v in xs))
    x = Scale(xgrid[0], xgrid[-1], left, WIDTH - right)
    y = Scale(ylo, yhi, top + plot_h, top)
    body = [f'<rect x="{left}" y="{top}" width="{WIDTH - left - right}" height="{plot_h}" fill="#fafafa"/>']
    for t in ygrid:
        if ylo - 1e-9 <= t <= yhi + 1e-9:
            body += [_line(left, y(t), WIDTH - right, y(t), "#e3e3e3"), _text(left - 6, y(t) + 4, fmt(t), "end")]
    for t in xgrid:
        body += [_line(x(t), top + plot_h, x(t), top + plot_h + 4, "#555"), _text(x(t), top + plot_h + 16, num(t),
                                                                                 "middle")]
    body.append(_text((left + WIDTH - right) / 2, top + plot_h + 34, x_label, "middle", ' fill="#555"'))
    if y_label:
        body.append(_text(12, top + plot_h / 2, y_label, "middle",
                          f' fill="#555" transform="rotate(-90 12 {top + plot_h / 2:.1f})"'))
    if reference is not None:
        body.append(_line(left, y(reference), WIDTH - right, y(reference), "#555", ' stroke-dasharray="4 3"'))
    legend_x = left
    for i, s in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        points = " ".join(f"{x(a):.1f},{y(b):.1f}" for a, b in zip(s.xs, s.ys, strict=True))
        if len(s.xs) > 1:
            body.append(f'<polyline class="mark" points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for j, (a, b) in enumerate(zip(s.xs, s.ys, strict=True)):
            if s.lows is not None and s.highs is not None:
                body.append(_line(x(a), y(s.lows[j]), x(a), y(s.highs[j]), colour, ' stroke-width="1.5"'))
            body.append(f'<circle class="mark" cx="{x(a):.1f}" cy="{y(b):.1f}" r="{3 if len(s.xs) > 30 else 4}" '
                        f'fill="{colour}"/>')
            if s.labels is not None:
                body.append(_text(x(a) + 6, y(b) - 6, s.labels[j], extra=' fill="#555" font-size="11"'))
        body += [f'<rect x="{legend_x}" y="8" width="10" height="10" fill="{colour}"/>',
                 _text(legend_x + 14, 17, _short(s.name, 40))]
        legend_x += 24 + 6.5 * min(len(s.name), 40)
    return _svg(WIDTH, height, title, body)


def reliability_chart(points: Sequence[tuple[float, float, int]], title: str) -> str:
    """A reliability diagram: each (mean confidence, observed agreement, n) bin as a dot whose area
    grows with n, against the diagonal a calibrated judge would sit on. Confidence runs from 0.5
    (a coin flip between the two responses) to 1."""
    left, top, side = 58, 14, 220
    x = Scale(0.5, 1.0, left, left + side)
    y = Scale(0.0, 1.0, top + side, top)
    body = [f'<rect x="{left}" y="{top}" width="{side}" height="{side}" fill="#fafafa"/>',
            _line(x(0.5), y(0.5), x(1.0), y(1.0), "#555", ' stroke-dasharray="4 3"')]
    for t in (0.5, 0.6, 0.7, 0.8, 0.9, 1.0):
        body += [_line(x(t), top + side, x(t), top + side + 4, "#555"), _text(x(t), top + side + 16, pct(t), "middle")]
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        body += [_line(left, y(t), left + side, y(t), "#e3e3e3"), _text(left - 6, y(t) + 4, pct(t), "end")]
    body += [_text(left + side / 2, top + side + 34, "judge's confidence in its pick", "middle", ' fill="#555"'),
             _text(12, top + side / 2, "agrees with humans", "middle",
                   f' fill="#555" transform="rotate(-90 12 {top + side / 2:.1f})"')]
    biggest = max(n for _, _, n in points)
    for conf, agree, n in points:
        r = 3 + 9 * math.sqrt(n / biggest)
        body += [f'<circle class="mark" cx="{x(conf):.1f}" cy="{y(agree):.1f}" r="{r:.1f}" fill="{PALETTE[0]}" '
                 f'fill-opacity="0.7"/>',
                 _text(x(conf) + r + 3, y(agree) + 4, f"n={n}", extra=' fill="#555"')]
    return _svg(left + side + 70, top + side + 44, title, body)


def histogram(values: Sequence[float], title: str, *, lo: float = 0.0, hi: float = 1.0, bins: int = 10,
              x_label: str = "") -> str:
    """Counts of `values` in `bins` equal bins over [lo, hi] (the last bin includes hi)."""
    counts = [0] * bins
    for v in values:
        if math.isfinite(v):  # clamped before int(): a huge value divides to inf
            counts[int(min(bins - 1, max(0.0, (v - lo) / (hi - lo) * bins)))] += 1
    left, right, top, plot_h = 48, 16, 12, 140
    x = Scale(lo, hi, left, WIDTH - right)
    grid = ticks(0, max(counts), 4)
    y = Scale(0, grid[-1], top + plot_h, top)
    body = [f'<rect x="{left}" y="{top}" width="{WIDTH - left - right}" height="{plot_h}" fill="#fafafa"/>']
    for t in grid:
        body += [_line(left, y(t), WIDTH - right, y(t), "#e3e3e3"), _text(left - 6, y(t) + 4, num(t), "end")]
    width = (hi - lo) / bins
    for i, c in enumerate(counts):
        a, b = x(lo + i * width), x(lo + (i + 1) * width)
        body.append(f'<rect x="{a + 1:.1f}" y="{y(c):.1f}" width="{b - a - 2:.1f}" height="{y(0) - y(c):.1f}" '
                    f'fill="{PALETTE[0]}" class="mark"/>')
    for t in ticks(lo, hi, 5):
        body.append(_text(x(t), top + plot_h + 16, num(t), "middle"))
    body.append(_text((left + WIDTH - right) / 2, top + plot_h + 34, x_label, "middle", ' fill="#555"'))
    return _svg(WIDTH, top + plot_h + 44, title, body)
