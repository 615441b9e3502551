"""Timing protocol: warm up, then time every call until count and duration are both reached.

This module is imported by the measurement worker, so it uses the standard library only.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence

Clock = Callable[[], float]
MAX_SAMPLES = 100_000
"""The most samples one run keeps (a fast model under a long minimum duration stops here), so a
measurement record stays bounded (bench.store.bounds.MAX_SAMPLES, kept equal by a test)."""


def run_protocol(
    fn: Callable[[], object],
    warmup: int,
    min_repetitions: int,
    min_duration_s: float,
    clock: Clock = time.perf_counter,
    max_samples: int = MAX_SAMPLES,
) -> list[float]:
    """Call ``fn`` ``warmup`` times untimed, then time calls until at least
    ``min_repetitions`` samples were taken *and* ``min_duration_s`` seconds have passed, or
    ``max_samples`` were taken, whichever comes first.

    Returns every timed sample in seconds, in call order.
    """
    if warmup < 0 or not 1 <= min_repetitions <= max_samples or min_duration_s < 0:
        raise ValueError("need warmup >= 0, 1 <= min_repetitions <= max_samples and "
                         "min_duration_s >= 0")
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    start = clock()
    now = start
    while (len(samples) < min_repetitions or now - start < min_duration_s) \
            and len(samples) < max_samples:
        before = clock()
        fn()
        now = clock()
        samples.append(now - before)
    return samples


def percentile(sorted_samples: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile ``q`` (0-100) of already sorted samples (numpy's default)."""
    if not sorted_samples:
        raise ValueError("no samples")
    rank = (len(sorted_samples) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(sorted_samples) - 1)
    return sorted_samples[low] + (sorted_samples[high] - sorted_samples[low]) * (rank - low)


def percentile_key(q: float) -> str:
    """Summary key of percentile ``q``: 50 -> ``p50``, 99.9 -> ``p99.9``."""
    return f"p{q:g}"


def summarize(samples: Sequence[float], percentiles: Sequence[float] = (50, 90, 99)) -> dict:
    """n, mean, std (sample, n-1), cv (std/mean), min, max and the requested percentiles."""
    if not samples:
        raise ValueError("cannot summarise an empty list of samples")
    ordered = sorted(samples)
    mean = statistics.fmean(ordered)
    std = statistics.stdev(ordered) if len(ordered) > 1 else 0.0
    summary = {
        "n": len(ordered),
        "mean": mean,
        "std": std,
        "cv": std / mean if mean > 0 else math.nan,
        "min": ordered[0],
        "max": ordered[-1],
    }
    for q in percentiles:
        summary[percentile_key(q)] = percentile(ordered, q)
    return summary
