"""Reading figures out of report.json defensively: an `Estimate` mapping ({value, low, high, n}),
a `WinRate` ({estimate: {...}, wins, ...}), or a bare number all become one `Figure`; anything
else (an `error` entry, a missing key, a field another version of cai names differently) is None,
and the panel that wanted it draws without it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Figure:
    value: float
    low: float | None = None
    high: float | None = None
    n: int | None = None


def number(v: Any) -> float | None:
    """A finite number (bools are not numbers here), else None."""
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def figure(v: Any) -> Figure | None:
    """The figure in `v`: a number, an Estimate mapping, or a mapping with an `estimate`,
    `difference` (length drift) or `mean` in it."""
    if number(v) is not None:
        return Figure(float(v))
    if not isinstance(v, Mapping):
        return None
    for inner in ("estimate", "difference"):
        if isinstance(v.get(inner), Mapping):
            return figure(v[inner])
    value = number(v.get("value", v.get("mean", v.get("rate"))))
    if value is None:
        return None
    low, high = number(v.get("low")), number(v.get("high"))
    ci = v.get("ci95")
    if low is None and isinstance(ci, list | tuple) and len(ci) == 2:
        low, high = number(ci[0]), number(ci[1])
    n = v.get("n")
    return Figure(value, low, high, n if isinstance(n, int) and not isinstance(n, bool) else None)


def flat_numbers(d: Any, prefix: str = "") -> dict[str, float]:
    """The numeric leaves of a nested mapping, by dotted key ({"tokens": {"judged": 3}} ->
    {"tokens.judged": 3.0}); an Estimate-like leaf counts as its value."""
    if not isinstance(d, Mapping):
        return {}
    out: dict[str, float] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if number(v) is not None:
            out[key] = float(v)
        elif isinstance(v, Mapping) and "value" in v and figure(v) is not None:
            out[key] = figure(v).value  # type: ignore[union-attr]
        elif isinstance(v, Mapping):
            out.update(flat_numbers(v, key + "."))
    return out
