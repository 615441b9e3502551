"""Executors by name (`bench run --executor`), and the driver that runs a plan with one."""

from bench.runner.executors.base import (
    EXECUTORS,
    Executor,
    ExecutorOptions,
    get_executor,
    make_executor,
    register_executor,
)
from bench.runner.executors.driver import MAX_RETRIES, RunSummary, execute

__all__ = ["EXECUTORS", "MAX_RETRIES", "Executor", "ExecutorOptions", "RunSummary", "execute",
           "get_executor", "make_executor", "register_executor"]
