"""What an executor is, and the registry of executors by name.

An executor runs cells somewhere (this process, worker processes, Ray tasks) and hands back
what they computed; the driver (`driver.py`) decides what runs when and alone writes the store.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, ClassVar

from bench.errors import ConfigError
from bench.registry import Registry

if TYPE_CHECKING:
    import torch

    from bench.data import PreparedData
    from bench.runner.executors.task import CellTask
    from bench.runner.outcome import CellOutcome
    from bench.runner.plan import Cell
    from bench.train import EpochHook


@dataclass(frozen=True)
class ExecutorOptions:
    """`bench run --executor/--workers/--address/--device`."""

    workers: int | None = None      # None: one per CPU core here (local: always 1)
    address: str | None = None      # Ray only: "auto" or "ray://HOST:PORT"
    torch_device: str = "auto"      # `--device`: cpu, cuda or auto (not the record's device)


@dataclass(frozen=True)
class Finished:
    """A cell handed back by an executor: its outcome, or why its worker died (`crash`).

    `sole` is False when a crash cannot be pinned on this cell (a process pool breaks as a
    whole and takes every cell in flight with it). `node`: where it ran, if the executor knows.
    """

    cell_id: str
    outcome: CellOutcome | None = None
    crash: str | None = None
    sole: bool = True
    node: str | None = None


def resolve_torch_device(name: str) -> torch.device:
    """The torch device ``name`` (auto: CUDA if there is one here); ConfigError for CUDA on a
    machine without a CUDA device."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch_device = torch.device(name)
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: this machine has no CUDA device that torch "
                          f"{torch.__version__} can use (torch.cuda.is_available() is False); "
                          "use --device cpu or auto")
    return torch_device


def local_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class Executor(ABC):
    """Runs the cells the driver submits; `wait` blocks until at least one is finished."""

    name: ClassVar[str]
    in_process: ClassVar[bool] = False   # cells run in the driver: epoch progress is visible
    takes_address: ClassVar[bool] = False

    def __init__(self, options: ExecutorOptions) -> None:
        self.options = options
        if options.address is not None and not self.takes_address:
            raise ConfigError(f"--address is for --executor ray, not {self.name}")

    @abstractmethod
    def describe(self) -> str:
        """Where the cells go, in words (dry runs and the run log); starts nothing."""

    def placement(self, cell: Cell) -> str:
        """Where this cell would go (a column of the dry-run plan)."""
        return self.name

    @property
    @abstractmethod
    def slots(self) -> int:
        """How many cells may be submitted at once."""

    @property
    def concurrency(self) -> int:
        """How many cells it would run at once (for estimates; starts nothing)."""
        return self.slots

    def start(self) -> None:
        """Acquire workers (called once, before the first submit); nothing to do by default."""
        return None

    def torch_device(self) -> torch.device:
        """The torch device cells train on (`auto` resolved where they run); valid after start."""
        return resolve_torch_device(self.options.torch_device)

    def check_torch_device(self) -> None:
        """ConfigError if the cells' torch device is not to be had where they run; called before
        the store is opened, starts nothing. Here: the cells run on this machine."""
        resolve_torch_device(self.options.torch_device)

    @abstractmethod
    def submit(self, task: CellTask, data: PreparedData, on_epoch: EpochHook | None) -> None:
        """Start a cell. `data` and `on_epoch` serve in-process executors; workers prepare the
        data themselves from the cell's DataConfig (cached on disk), so no tensors travel."""

    @abstractmethod
    def wait(self) -> list[Finished]:
        """Block until at least one submitted cell is finished; return every finished one."""

    def close(self) -> None:
        """Release workers; nothing to do by default."""
        return None

    def __enter__(self) -> Executor:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


EXECUTORS: Registry[type[Executor]] = Registry(
    "executor", "executors", ("bench.runner.executors.local", "bench.runner.executors.process",
                              "bench.runner.executors.ray_executor"))
"""Executors by name (`bench run --executor`): the built-in ones and plugins' (entry points
`medq_bench.executors`)."""


def register_executor(cls: type[Executor]) -> type[Executor]:
    """Class decorator: make an executor available to `bench run --executor` by its `name`."""
    return EXECUTORS.register(cls.name, cls)


def get_executor(name: str) -> type[Executor]:
    return EXECUTORS.get(name)


def make_executor(name: str, options: ExecutorOptions) -> Executor:
    return get_executor(name)(options)
