"""Progress bars for long work: a grid bar (cells, current cell, ETA) and an epoch bar.

Bars show only on a terminal and never with --quiet; the work is the same either way.
"""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class RunProgress:
    def __init__(self, total_cells: int, quiet: bool = False, console: Console | None = None
                 ) -> None:
        console = console or Console(stderr=True)
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=console, disable=quiet or not console.is_terminal, transient=False)
        self._grid = self._progress.add_task("grid", total=total_cells)
        self._epochs: TaskID | None = None
        self.per_node: dict[str, int] = {}
        self._running = ""

    def __enter__(self) -> RunProgress:
        self._progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._progress.stop()

    def start_cell(self, label: str, epochs: int) -> None:
        self._progress.update(self._grid, description=f"grid  {label}")
        if self._epochs is not None:
            self._progress.remove_task(self._epochs)
        self._epochs = self._progress.add_task("  epochs", total=max(epochs, 1))

    def epoch_done(self, epoch: int, row: dict[str, float]) -> None:
        if self._epochs is not None:
            self._progress.update(self._epochs, completed=epoch,
                                  description=f"  epoch {epoch} loss {row['loss']:.3f}")

    def cells_running(self, labels: list[str]) -> None:
        """Cells running elsewhere at once (worker executors): named on the grid bar."""
        if self._epochs is not None:
            self._progress.remove_task(self._epochs)
            self._epochs = None
        self._running = labels[0] if len(labels) == 1 else f"{len(labels)} cells in flight"
        self._describe()

    def _describe(self) -> None:
        nodes = ", ".join(f"{n}: {c}" for n, c in sorted(self.per_node.items()))
        text = " | ".join(t for t in (self._running, nodes and f"done per node: {nodes}") if t)
        self._progress.update(self._grid, description=f"grid  {text}" if text else "grid")

    def cell_done(self, node: str | None = None) -> None:
        """One more cell finished (on ``node``, counted per node on the bar, if known)."""
        if node is not None:
            self.per_node[node] = self.per_node.get(node, 0) + 1
            self._describe()
        self._progress.advance(self._grid)
