"""Results store: cell records (SQLAlchemy) and their artifact folders.

The names below are imported from their modules on first use, so that the store's light modules
(peek, artifacts, identity) import without SQLAlchemy.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ResultsStore": "database",
    "StoreBusyError": "peek",
    "RESULT_COLUMNS": "schema",
    "CellRecord": "schema",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
