"""Results store: cell records (SQLAlchemy) and their artifact folders."""

from bench.store.database import ResultsStore, StoreBusyError
from bench.store.schema import RESULT_COLUMNS, CellRecord

__all__ = ["RESULT_COLUMNS", "CellRecord", "ResultsStore", "StoreBusyError"]
