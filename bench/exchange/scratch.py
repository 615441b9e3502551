"""Scratch folders that a killed process does not leave behind for good.

A scratch folder holds an owner lock (an exclusive ``flock`` on `.owner.lock`) for as long as
the process that made it lives; the lock file appears already locked (made under another name,
locked, then renamed into place). Whenever a scratch folder is made, the folders of the same
prefix beside it whose lock is free, their owner being gone (killed, crashed), are removed
first, so leftovers of a killed `bench import` never accumulate.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

OWNER_LOCK = ".owner.lock"
UNLOCKED_GRACE_S = 600.0
"""A folder of the prefix without an owner lock (made by an older version, or killed in the
instant before its lock appeared) is removed once it is this old."""


def _owner_gone(folder: Path) -> bool:
    lock = folder / OWNER_LOCK
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        try:
            return time.time() - folder.stat().st_mtime > UNLOCKED_GRACE_S
        except FileNotFoundError:
            return False
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def sweep(parent: Path, prefix: str) -> list[Path]:
    """Remove the scratch folders ``prefix*`` in ``parent`` whose owner is gone; those removed."""
    removed = []
    for folder in sorted(parent.glob(f"{prefix}*")):
        if folder.is_dir() and not folder.is_symlink() and _owner_gone(folder):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


class Scratch:
    """A fresh folder ``prefix*`` in ``parent`` (default: the system's temporary folder), owned
    by this process until `close` removes it."""

    def __init__(self, prefix: str, parent: Path | None = None) -> None:
        parent = Path(parent) if parent is not None else Path(tempfile.gettempdir())
        sweep(parent, prefix)
        self.path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        made = self.path / f".owner-{uuid.uuid4().hex}"
        self._fd = os.open(made, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        made.rename(self.path / OWNER_LOCK)

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc: object) -> None:
        self.close()
