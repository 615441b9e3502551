"""Results store: cell records (SQLAlchemy) and their artifact folders.

The names below are imported from their modules on first use, so that the store's light modules
(peek, artifacts, identity) import without SQLAlchemy.
"""

from __future__ import annotations

from bench.lazy import lazy_exports

_EXPORTS = {
    "ResultsStore": "database",
    "StoreBusyError": "peek",
    "RESULT_COLUMNS": "schema",
    "CellRecord": "schema",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
