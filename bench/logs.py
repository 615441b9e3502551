"""Logging of a run: buffered in memory until the store exists, then written to its log folder.

Buffering means that a run refused for bad input (exit 2) writes nothing into the store.
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime
from logging.handlers import MemoryHandler
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class LogFile(logging.FileHandler):
    """A run's log file. A write that fails because the disk is full stops logging to the file
    with one line on stderr, instead of logging's "--- Logging error ---" and a traceback for
    every later record; the run itself says what happened (bench.errors.DiskFullError)."""

    stopped = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.stopped:
            super().emit(record)

    def flush(self) -> None:
        try:
            super().flush()
        except OSError as error:
            self._full(error)

    def close(self) -> None:
        try:
            super().close()
        except OSError as error:
            self._full(error)

    def _full(self, error: OSError) -> None:
        from bench.errors import disk_full

        if disk_full(error) is None:
            raise error
        self._stop()

    def _stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            sys.stderr.write(f"medq-bench: no space left to write the log {self.baseFilename}; "
                             "logging to it stopped\n")

    def handleError(self, record: logging.LogRecord) -> None:
        from bench.errors import disk_full

        if disk_full(sys.exc_info()[1]) is None:
            super().handleError(record)
            return
        self._stop()


def start_buffer() -> MemoryHandler:
    handler = MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return handler


def to_file(buffer: MemoryHandler, log_dir: Path) -> Path:
    """Write buffered records, and every later one, to a new log file in log_dir."""
    path = log_dir / f"run-{datetime.now().strftime('%Y%m%d-%H%M%S-%f')}.log"
    handler = LogFile(path)
    handler.setFormatter(logging.Formatter(FORMAT))
    buffer.setTarget(handler)
    buffer.flush()
    root = logging.getLogger()
    root.removeHandler(buffer)
    root.addHandler(handler)
    return path
