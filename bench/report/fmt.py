"""Number formatting shared by every output format (one place, so every format agrees)."""

from __future__ import annotations

import math
from typing import Any

DASH = "-"


def missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def num(value: Any, digits: int = 4) -> str:
    return DASH if missing(value) else f"{float(value):.{digits}f}"


def pval(value: Any) -> str:
    """p-values with three significant digits (``0.0312``, ``1.2e-05``)."""
    return DASH if missing(value) else f"{float(value):.3g}"


def kib(value: Any) -> str:
    return DASH if missing(value) else f"{float(value) / 1024:.1f}"


def pct(value: Any) -> str:
    return DASH if missing(value) else f"{float(value):.1f}%"


def ratio(value: Any) -> str:
    return DASH if missing(value) else f"{float(value):.2f}x"


def points(value: Any, mark: str | None = None) -> str:
    """A signed difference in percentage points, ``-1.8`` or ``+0.3``, then its mark."""
    if missing(value):
        return DASH
    shown = f"{float(value):+.1f}"
    return f"{shown} {mark}" if mark else shown


def signed(value: Any, digits: int = 3) -> str:
    """A signed difference, ``-0.012`` or ``+0.003``."""
    return DASH if missing(value) else f"{float(value):+.{digits}f}"


def mean_ci(mean: Any, low: Any, high: Any, digits: int = 4) -> str:
    """``0.8123 ± 0.0123`` (half-width of the interval; the mean alone when it has none)."""
    if missing(mean):
        return DASH
    if missing(low) or missing(high):
        return num(mean, digits)
    return f"{num(mean, digits)} ± {(float(high) - float(low)) / 2:.{digits}f}"


def interval(low: Any, high: Any, digits: int = 4) -> str:
    if missing(low) or missing(high):
        return DASH
    return f"[{float(low):.{digits}f}, {float(high):.{digits}f}]"
