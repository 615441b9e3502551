"""Bounds on what one exchanged record may hold, in one place: the length of a text field, the
size of a JSON field, the number of latency samples, and whether a measurement's figures are
physically possible. `records` builds the exchange models from these; a field added there
(a column of `cells` or `measurements`) gets its bound here.

A record arrives from anyone who holds a device token, or in a bundle from anywhere: without
these, a 200 KB gzip'd upload can become a 200 MiB stored record that every public page and
report then carries, and a p50 of -1 ms can replace a device's good measurement.
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_TEXT_CHARS = 64 << 10
"""The most characters of a free-text field (an error message with its traceback)."""
MAX_JSON_BYTES = 1 << 20
"""The most bytes one JSON field (`details`, `config`, `metrics`, ...) takes as compact JSON."""
MAX_SAMPLES = 100_000
"""The most latency samples of one measurement: the timing protocol's cap
(bench.measure.protocol.MAX_SAMPLES, which a test keeps equal)."""
MAX_ARTIFACT_FILES = 10_000
"""The most artifact files one cell may list."""


def bounded_text(value: str) -> str:
    """``value`` if it has at most MAX_TEXT_CHARS characters; ValueError otherwise."""
    if len(value) > MAX_TEXT_CHARS:
        raise ValueError(f"is {len(value)} characters long; at most {MAX_TEXT_CHARS} are "
                         "allowed")
    return value


def clip_text(value: str) -> str:
    """``value`` cut to MAX_TEXT_CHARS characters (for a writer's own long messages)."""
    if len(value) <= MAX_TEXT_CHARS:
        return value
    note = "\n[... cut to 64 KiB]"
    return value[:MAX_TEXT_CHARS - len(note)] + note


def json_size(value: Any) -> int:
    """The bytes ``value`` takes as compact JSON."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def bounded_json(value: Any) -> Any:
    """``value`` if its compact JSON takes at most MAX_JSON_BYTES; ValueError otherwise."""
    size = json_size(value)
    if size > MAX_JSON_BYTES:
        raise ValueError(f"takes {size} bytes as JSON; at most {MAX_JSON_BYTES} are allowed")
    return value


def require_finite(value: float | None) -> float | None:
    """``value`` unless it is NaN or infinite (a measurement's figure is a number or absent)."""
    if value is not None and not math.isfinite(value):
        raise ValueError(f"{value} is not a finite number")
    return value
