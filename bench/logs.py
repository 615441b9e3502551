"""Logging of a run: buffered in memory until the store exists, then written to its log folder.

Buffering means that a run refused for bad input (exit 2) writes nothing into the store.
"""

from __future__ import annotations

import logging
from datetime import datetime
from logging.handlers import MemoryHandler
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def start_buffer() -> MemoryHandler:
    handler = MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return handler


def to_file(buffer: MemoryHandler, log_dir: Path) -> Path:
    """Write buffered records, and every later one, to a new log file in log_dir."""
    path = log_dir / f"run-{datetime.now().strftime('%Y%m%d-%H%M%S-%f')}.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(FORMAT))
    buffer.setTarget(handler)
    buffer.flush()
    root = logging.getLogger()
    root.removeHandler(buffer)
    root.addHandler(handler)
    return path
