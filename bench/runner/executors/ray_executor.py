"""`ray`: each cell a Ray task, submitted as soon as the cells it waits for are stored.

Without --address a local Ray cluster is started on 127.0.0.1 with --workers CPUs (default:
this machine's cores; no usage statistics unless RAY_USAGE_STATS_ENABLED says so) and stopped
at the end; `--address auto` or `ray://HOST:PORT` joins a
running cluster. A task asks for what its cell needs: one CPU (a cell trains on one torch
thread), and one GPU when the cell runs on CUDA.

No node needs the driver's disk (shipping.py): a task computes its cell in node-local scratch
space and streams the record and the artifact files back through Ray's object store, where the
driver checks each file's SHA-256 and alone writes the store; the records and files a cell
reads (its FP32 parent's) and the prepared data set (for a worker that cannot read the data
root) travel the other way, each put once. Every node needs medq-bench installed, the same
version. Retries of a task whose worker or node died, or whose files arrived damaged, are the
driver's (max_retries=0 here), like every executor's; a crash's error names the node.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import secrets
import sys
from collections.abc import MutableMapping
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
from bench.runner.executors.shipping import Incoming, Shipper, stream_cell
from bench.runner.executors.task import CELL_THREADS, CellTask, open_store
from bench.runner.plan import Cell

if TYPE_CHECKING:
    import torch

    from bench.train import EpochHook

LOCAL_HOST = "127.0.0.1"
BACKPRESSURE_OBJECTS = 4
"""A task pauses once this many of its chunks wait unread by the driver."""


def settle_local_ray_env(environ: MutableMapping[str, str]) -> None:
    """Settle token authentication and usage statistics for a local Ray cluster, explicitly:
    a fresh random RAY_AUTH_TOKEN in the environment unless the user set one (the cluster's
    processes inherit it), so the token mode a bare ``ray.init()`` turns on for a new local
    cluster (unless RAY_AUTH_MODE says otherwise) uses it instead of making and writing
    ``~/.ray/auth_token`` (ray/_private/worker.py: enable_token_auth_by_default,
    ensure_token_if_auth_enabled); no usage statistics unless RAY_USAGE_STATS_ENABLED says so.
    RAY_AUTH_MODE itself is left to ray.init, which also refreshes the driver's cached config."""
    environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))


def cluster_summary(nodes: list[dict[str, Any]]) -> str:
    """The cluster in words: its live nodes, CPUs and GPUs (from `ray.nodes()`)."""
    alive = [n for n in nodes if n.get("Alive")]
    cpus = sum(n.get("Resources", {}).get("CPU", 0) for n in alive)
    gpus = sum(n.get("Resources", {}).get("GPU", 0) for n in alive)
    lines = [f"Ray cluster: {len(alive)} nodes, {cpus:g} CPUs, {gpus:g} GPUs"]
    for n in alive:
        res = n.get("Resources", {})
        lines.append(f"  node {n.get('NodeManagerAddress')} ({n.get('NodeID', '')[:12]}): "
                     f"{res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs")
    return "\n".join(lines)


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
        self._streams: dict[Any, Incoming] = {}
        self._shipper: Shipper | None = None

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
        """One cell a CPU (a GPU, with --device cuda) of the cluster: --workers or this
        machine's cores for a local cluster; a cluster at --address is asked."""
        resources = self._cluster_resources
        if resources is None:
            return self.workers
        unit = "GPU" if self.options.torch_device == "cuda" else "CPU"
        return max(int(resources.get(unit, 0) // (1 if unit == "GPU" else CELL_THREADS)), 1)

    @functools.cached_property
    def _cluster_resources(self) -> dict[str, float] | None:
        """The resources of the cluster at --address (joined only to read them, when this
        process is not connected yet); None without --address or when it cannot be reached."""
        if self.options.address is None:
            return None
        import ray

        if ray.is_initialized():
            return dict(ray.cluster_resources())
        try:
            ray.init(address=self.options.address, include_dashboard=False,
                     log_to_driver=False)
        except (ConnectionError, ValueError):
            return None
        try:
            return dict(ray.cluster_resources())
        finally:
            ray.shutdown()

    def start(self) -> None:
        import ray
        import torch

        if not ray.is_initialized():
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if self.options.address is None:
                settle_local_ray_env(os.environ)
                ray.init(num_cpus=self.workers, _node_ip_address=LOCAL_HOST, **options)
            else:
                try:
                    ray.init(address=self.options.address, **options)
                except (ConnectionError, ValueError) as err:
                    raise ConfigError(f"no Ray cluster at {self.options.address}: {err}") from err
            self._owns_ray = True
        print(cluster_summary(ray.nodes()), file=sys.stderr)
        self._remote = ray.remote(stream_cell)
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

        if self._shipper is None:
            self._shipper = Shipper(open_store(task.store))
        shipment = self._shipper.shipment(task, data)
        gpus = 1 if torch.device(task.torch_device).type == "cuda" else 0
        stream = self._remote.options(
            num_cpus=CELL_THREADS, num_gpus=gpus, max_retries=0, num_returns="streaming",
            _generator_backpressure_num_objects=BACKPRESSURE_OBJECTS,
            name=f"cell {task.cell.label}").remote(task, shipment)
        self._streams[stream] = Incoming(task.cell.cell_id, self._shipper.store.staging_root)

    def wait(self) -> list[Finished]:
        """Take every item that has arrived; a cell is finished once its stream has ended."""
        import ray

        finished: list[Finished] = []
        while not finished:
            ready, _ = ray.wait(list(self._streams), num_returns=1)
            for stream in ready:
                done = self._take(stream)
                if done is not None:
                    del self._streams[stream]
                    finished.append(done)
        return finished

    def _take(self, stream: Any) -> Finished | None:
        import ray

        incoming = self._streams[stream]
        try:
            incoming.take(ray.get(next(stream)))
        except StopIteration:
            return incoming.finish()
        except ray.exceptions.RayError as err:
            return incoming.crashed(f"{type(err).__name__}: {err}")
        return None

    def close(self) -> None:
        import ray

        for stream, incoming in self._streams.items():
            ray.cancel(stream, force=True)
            incoming.discard()
        self._streams.clear()
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False
