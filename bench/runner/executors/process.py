"""`process`: a pool of worker processes on this machine (one torch thread each).

Workers are forked from a forkserver that has imported the worker code once (spawned where
there is no forkserver), so a pool starts, and restarts after a crash, without every worker
importing torch again.

A pool whose worker dies breaks as a whole: every cell in flight comes back as crashed (pinned
on the cell only if it was alone), and a fresh pool takes the retries. Workers exit by
themselves when the driver dies, so a killed `bench run` leaves none behind. multiprocessing's
temporary folder (the forkserver's socket) is a scratch folder `medq-mp-*` owned by the driver
(bench.exchange.scratch), not `pymp-*`: the folder of a killed run is removed by the next one.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from types import TracebackType
from typing import TYPE_CHECKING

from bench.data import PreparedData
from bench.exchange.scratch import Scratch
from bench.runner.executors.base import (
    Executor,
    ExecutorOptions,
    Finished,
    local_cores,
    register_executor,
)
from bench.runner.executors.task import CELL_THREADS, WORKER_MODULES, CellTask, run_task
from bench.runner.plan import Cell

if TYPE_CHECKING:
    import psutil

    from bench.train import EpochHook

DRIVER_POLL_SECONDS = 1.0
MP_PREFIX = "medq-mp-"
_mp_scratch: list[Scratch] = []


def own_temp_dir() -> None:
    """Give multiprocessing a scratch folder of this process as its temporary folder (unless it
    has one already), removed at exit, or by the next run if this one is killed."""
    from multiprocessing import process

    config = process.current_process()._config  # multiprocessing.util.get_temp_dir reads it
    if config.get("tempdir") is None:
        scratch = Scratch(MP_PREFIX)
        _mp_scratch.append(scratch)
        config["tempdir"] = str(scratch.path)
        atexit.register(scratch.close)


def worker_context() -> multiprocessing.context.BaseContext:
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(WORKER_MODULES))
    return context


def _exit_with(driver: psutil.Process) -> None:
    import psutil

    while driver.is_running() and driver.status() != psutil.STATUS_ZOMBIE:
        time.sleep(DRIVER_POLL_SECONDS)
    os._exit(1)


def init_worker(driver_pid: int) -> None:
    """Pool initializer: one torch thread, and exit as soon as the driver is gone (a forkserver
    outlives its driver while any worker it forked is alive)."""
    import psutil
    import torch

    torch.set_num_threads(CELL_THREADS)
    driver = psutil.Process(driver_pid)
    threading.Thread(target=_exit_with, args=(driver,), daemon=True).start()


@register_executor
class ProcessExecutor(Executor):
    name = "process"

    def __init__(self, options: ExecutorOptions) -> None:
        super().__init__(options)
        self.workers = options.workers or local_cores()
        self._pool: ProcessPoolExecutor | None = None
        self._futures: dict[Future, tuple[str, ProcessPoolExecutor]] = {}

    def describe(self) -> str:
        return (f"{self.workers} worker processes on this machine, "
                f"{CELL_THREADS} torch thread a cell")

    def placement(self, cell: Cell) -> str:
        return f"process pool ({self.workers})"

    @property
    def slots(self) -> int:
        return self.workers

    def _ensure_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            own_temp_dir()
            self._pool = ProcessPoolExecutor(self.workers, mp_context=worker_context(),
                                             initializer=init_worker, initargs=(os.getpid(),))
        return self._pool

    def submit(self, task: CellTask, data: PreparedData, on_epoch: EpochHook | None) -> None:
        pool = self._ensure_pool()
        try:
            future = pool.submit(run_task, task)
        except BrokenProcessPool:   # a worker died between cells: its cells come back in wait()
            pool.shutdown(wait=False)
            self._pool = None
            pool = self._ensure_pool()
            future = pool.submit(run_task, task)
        self._futures[future] = (task.cell.cell_id, pool)

    def wait(self) -> list[Finished]:
        done, _ = wait(self._futures, return_when=FIRST_COMPLETED)
        for future in done:
            if isinstance(future.exception(), BrokenProcessPool):
                return self._broken(self._futures[future][1])
        return [self._finished(f, sole=True) for f in done]

    def _broken(self, pool: ProcessPoolExecutor) -> list[Finished]:
        """Every cell that was in flight on a broken pool, once its processes are all gone."""
        pool.shutdown(wait=True)
        if pool is self._pool:
            self._pool = None
        lost = [f for f, (_, in_pool) in self._futures.items() if in_pool is pool]
        return [self._finished(f, sole=len(lost) == 1) for f in lost]

    def _finished(self, future: Future, sole: bool) -> Finished:
        cell_id, _ = self._futures.pop(future)
        error = future.exception()
        if error is None:
            return Finished(cell_id, future.result())
        return Finished(cell_id, crash=f"{type(error).__name__}: {error}",
                        sole=sole or not isinstance(error, BrokenProcessPool))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None and self._pool is not None:
            # the driver is going down: stop the cells in flight rather than wait for them
            processes = getattr(self._pool, "_processes", None) or {}
            for process in list(processes.values()):
                process.terminate()
        self.close()
