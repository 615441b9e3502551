"""`ray`: each cell a Ray task, submitted as soon as the cells it waits for are stored.

Without --address a local Ray cluster is started on 127.0.0.1 with --workers CPUs (default:
this machine's cores) and stopped at the end; `--address auto` or `ray://HOST:PORT` joins a
running cluster. A task asks for what its cell needs: one CPU (a cell trains on one torch
thread), and one GPU when the cell runs on CUDA. Workers write into the store's staging folder
and read the FP32 parents from the store, so on a multi-node cluster every node needs
medq-bench installed and the store on a file system mounted at the same path. Retries of
a task whose worker died are the driver's (max_retries=0 here), like every executor's.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

from bench.data import PreparedData
from bench.errors import ConfigError
from bench.runner.executors.base import (
    Executor,
    ExecutorOptions,
    Finished,
    local_cores,
    register_executor,
)
from bench.runner.executors.task import CELL_THREADS, CellTask, run_task
from bench.runner.plan import Cell

if TYPE_CHECKING:
    import torch

    from bench.train import EpochHook

LOCAL_HOST = "127.0.0.1"


@register_executor
class RayExecutor(Executor):
    name = "ray"
    takes_address = True

    def __init__(self, options: ExecutorOptions) -> None:
        super().__init__(options)
        if importlib.util.find_spec("ray") is None:
            raise ConfigError("--executor ray needs Ray: pip install 'medq-bench[ray]'")
        if options.address is not None and options.workers is not None:
            raise ConfigError("--workers sizes the local Ray cluster; with --address the "
                              "cluster's own resources decide")
        self.workers = options.workers or local_cores()
        self._owns_ray = False
        self._torch_device: torch.device | None = None
        self._remote: Any = None
        self._refs: dict[Any, str] = {}

    def describe(self) -> str:
        where = (f"Ray cluster at {self.options.address}" if self.options.address
                 else f"a local Ray cluster on {LOCAL_HOST} with {self.workers} CPUs")
        return f"{where}; each cell a task of 1 CPU (+1 GPU on CUDA), {CELL_THREADS} torch thread"

    def placement(self, cell: Cell) -> str:
        gpu = {"cuda": ", num_gpus=1", "auto": " (+num_gpus=1 if the cluster has GPUs)"}
        return f"ray task num_cpus=1{gpu.get(self.options.torch_device, '')}"

    @property
    def slots(self) -> int:
        return 1 << 30   # Ray queues tasks by their resources

    @property
    def concurrency(self) -> int:
        """One cell a CPU of the cluster: --workers, or this machine's cores (a cluster
        joined by --address is assumed to be this size too)."""
        return self.workers

    def start(self) -> None:
        import ray
        import torch

        if not ray.is_initialized():
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if self.options.address is None:
                ray.init(num_cpus=self.workers, _node_ip_address=LOCAL_HOST, **options)
            else:
                try:
                    ray.init(address=self.options.address, **options)
                except (ConnectionError, ValueError) as err:
                    raise ConfigError(f"no Ray cluster at {self.options.address}: {err}") from err
            self._owns_ray = True
        self._remote = ray.remote(run_task)
        if self.options.torch_device == "auto":
            has_gpu = ray.cluster_resources().get("GPU", 0) >= 1
            self._torch_device = torch.device("cuda" if has_gpu else "cpu")
        else:
            self._torch_device = torch.device(self.options.torch_device)

    def torch_device(self) -> torch.device:
        assert self._torch_device is not None, "torch_device() before start()"
        return self._torch_device

    def check_torch_device(self) -> None:
        """The cluster's GPUs are its own: a CUDA cell's task asks for one (see `submit`)."""
        return None

    def submit(self, task: CellTask, data: PreparedData, on_epoch: EpochHook | None) -> None:
        import torch

        gpus = 1 if torch.device(task.torch_device).type == "cuda" else 0
        ref = self._remote.options(num_cpus=CELL_THREADS, num_gpus=gpus, max_retries=0,
                                   name=f"cell {task.cell.label}").remote(task)
        self._refs[ref] = task.cell.cell_id

    def wait(self) -> list[Finished]:
        import ray

        ready, _ = ray.wait(list(self._refs), num_returns=1)
        finished = []
        for ref in ready:
            cell_id = self._refs.pop(ref)
            try:
                finished.append(Finished(cell_id, ray.get(ref)))
            except ray.exceptions.RayError as err:
                finished.append(Finished(cell_id, crash=f"{type(err).__name__}: {err}"))
        return finished

    def close(self) -> None:
        import ray

        for ref in self._refs:
            ray.cancel(ref, force=True)
        self._refs.clear()
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False
