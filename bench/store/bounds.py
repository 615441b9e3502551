"""Bounds on what one exchanged record may hold, in one place: the length of a text field, the
size of a JSON field, the number of latency samples, and whether a measurement's figures are
physically possible. `records` builds the exchange models from these; a field added there
(a column of `cells` or `measurements`) gets its bound here.

`check_received` is applied where records arrive from elsewhere (an upload, a bundle being
imported or pulled); a store's own records are not re-judged when they leave it.
A record arrives from anyone who holds a device token, or in a bundle from anywhere: without
these, a 200 KB gzip'd upload can become a 200 MiB stored record that every public page and
report then carries, and a p50 of -1 ms can replace a device's good measurement.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable
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


LATENCY_FIELDS = ("latency_ms_min", "latency_ms_p50", "latency_ms_p90", "latency_ms_p99")
"""A measurement's latencies in the order they must keep (min <= p50 <= p90 <= p99)."""
POSITIVE_FIELDS = (*LATENCY_FIELDS, "latency_ms_mean", "peak_rss_mb", "size_bytes",
                   "packed_size_bytes")
"""Figures of a measurement that are > 0 where present."""
NON_NEGATIVE_FIELDS = ("latency_ms_std", "latency_cv", "load_time_s")
"""Figures of a measurement that are >= 0 where present."""
FINITE_FIELDS = (*POSITIVE_FIELDS, *NON_NEGATIVE_FIELDS)
"""A measurement's floats that must be numbers (NaN and infinity are refused, not nulled)."""
SUMMARY_TOLERANCE = 1e-9
"""Relative (and, in ms, absolute) tolerance of a stated summary against the recomputed one."""


def check_physical(record: Any) -> None:
    """ValueError unless the measurement ``record``'s figures are physically possible: each
    figure finite, latencies, memory and sizes > 0, min <= p50 <= p90 <= p99, and the summary
    equal to the one recomputed from `samples_s` (in seconds) where it has samples."""
    for name in FINITE_FIELDS:
        value = getattr(record, name)
        if value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{name} is {value}, not a finite number")
        if name in POSITIVE_FIELDS and value <= 0:
            raise ValueError(f"{name} is {value}; it must be > 0")
        if value < 0:
            raise ValueError(f"{name} is {value}; it must be >= 0")
    present = [(name, getattr(record, name)) for name in LATENCY_FIELDS
               if getattr(record, name) is not None]
    for (low_name, low), (high_name, high) in itertools.pairwise(present):
        if low > high:
            raise ValueError(f"{low_name} {low} is above {high_name} {high}")
    if record.samples_s:
        _check_summary(record)


def _check_summary(record: Any) -> None:
    summary = latency_summary(record.samples_s)
    for name, expected in summary.items():
        stated = getattr(record, name)
        if stated is None:
            continue
        if not math.isclose(stated, expected, rel_tol=SUMMARY_TOLERANCE,
                            abs_tol=SUMMARY_TOLERANCE):
            raise ValueError(f"{name} is {stated}, but its {len(record.samples_s)} samples_s "
                             f"give {expected}")


def latency_summary(samples_s: list[float]) -> dict[str, float]:
    """The summary columns of latency samples (seconds) in ms, as `bench measure` computes them
    (bench.measure.protocol.summarize: sample std, numpy's linear percentiles)."""
    ordered = sorted(v * 1000.0 for v in samples_s)
    n = len(ordered)
    mean = math.fsum(ordered) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in ordered) / (n - 1)) if n > 1 else 0.0

    def percentile(q: float) -> float:
        rank = (n - 1) * q / 100.0
        low = math.floor(rank)
        high = min(low + 1, n - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)

    summary = {"latency_ms_mean": mean, "latency_ms_std": std, "latency_ms_min": ordered[0],
               "latency_ms_p50": percentile(50), "latency_ms_p90": percentile(90),
               "latency_ms_p99": percentile(99)}
    if mean > 0:
        summary["latency_cv"] = std / mean
    return summary


def check_received(measurements: Iterable[Any]) -> None:
    """ValueError naming the first measurement received (an upload, a bundle) whose figures
    are not physically possible (`check_physical`), or that is successful with a summary but
    without the samples_s it comes from."""
    for record in measurements:
        what = (f"measurement of cell {record.cell_id} on {record.device} under "
                f"{record.profile}")
        try:
            check_physical(record)
        except ValueError as err:
            raise ValueError(f"{what}: {err}") from err
        if record.status == "ok" and not record.samples_s and any(
                getattr(record, name) is not None for name in LATENCY_FIELDS):
            raise ValueError(f"{what}: a summary without the samples_s it comes from")
