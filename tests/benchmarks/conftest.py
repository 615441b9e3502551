"""Benchmarks run only with `make bench` (MEDQ_BENCH=1): they take minutes and judge targets
on ratios measured within one run, which a shared CI machine cannot promise."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("MEDQ_BENCH") == "1":
        return
    skip = pytest.mark.skip(reason="benchmark: run with `make bench` (MEDQ_BENCH=1)")
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(skip)
