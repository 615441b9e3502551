"""`local`: cells run in this process, one after another (the default)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.data import PreparedData
from bench.errors import ConfigError
from bench.runner.executors.base import Executor, ExecutorOptions, Finished, register_executor
from bench.runner.executors.task import CELL_THREADS, CellTask, run_task

if TYPE_CHECKING:
    from bench.train import EpochHook


@register_executor
class LocalExecutor(Executor):
    name = "local"
    in_process = True

    def __init__(self, options: ExecutorOptions) -> None:
        super().__init__(options)
        if options.workers not in (None, 1):
            raise ConfigError("--executor local runs one cell at a time; for --workers "
                              f"{options.workers} use --executor process or ray")
        self._next: tuple[CellTask, PreparedData, EpochHook | None] | None = None

    def describe(self) -> str:
        return f"this process, one cell at a time, {CELL_THREADS} torch thread a cell"

    def placement(self, cell: object) -> str:
        return "this process"

    @property
    def slots(self) -> int:
        return 1

    def submit(self, task: CellTask, data: PreparedData, on_epoch: EpochHook | None) -> None:
        self._next = (task, data, on_epoch)

    def wait(self) -> list[Finished]:
        assert self._next is not None, "wait() without a submitted cell"
        task, data, on_epoch = self._next
        self._next = None
        return [Finished(task.cell.cell_id, run_task(task, data, on_epoch))]
