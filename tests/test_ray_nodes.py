"""`--executor ray` on a two-node cluster whose worker node shares no disk with the driver.

Both nodes and the driver (`bench run`) run on this machine in a network namespace of their
own that has only the loopback interface, so every address is 127.0.0.1 and nothing reaches
outside the machine (Ray's servers listen on every interface they see). The head offers no CPU,
so every cell lands on a worker node, which runs in its own mount namespace (`unshare -m`) with
empty tmpfs over the store, the cache and the data root. Ray's token authentication is on and
its usage statistics off, both set explicitly. The grid's cells (FP32 and PTQ, deploy and
saliency stages) must come back with the local executor's metrics, every artifact in the
driver's store with its SHA-256; a driver killed while results are in flight, or a worker node
that dies mid-cell, loses and duplicates nothing.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from bench.runner import RunOptions, plan_grid, run_grid
from bench.store import ResultsStore
from bench.store.artifacts import mismatches
from bench.store.peek import LOG_DIR, peek_done_ids
from tests.conftest import tiny_grid_dict
from tests.imaging import make_folder
from tests.test_executors import ClockedStore, assert_same, results

HOST = "127.0.0.1"
METHODS = [{"name": "fp32"}, {"name": "ptq", "bits": [[8, 8]]}]
STAGES = {"deploy": {},
          "saliency": {"methods": ["gradient"], "n_samples": 4, "sensitivity_samples": 1,
                       "deletion_steps": 2, "overlays": 1, "threads": 1}}
CELLS = 2
BIN = Path(sys.executable).parent
_PORTS = iter(random.Random(28).sample(range(20000, 60000), 200))


def ray_start(*args: str) -> list[str]:
    """`ray start` on 127.0.0.1; the nodes share one network namespace, so each its own ports."""
    ports = {flag: next(_PORTS) for flag in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
        "metrics-export-port", "node-manager-port", "object-manager-port")}
    return [str(BIN / "ray"), "start", "--block", f"--node-ip-address={HOST}",
            "--disable-usage-stats", "--object-store-memory=100000000",
            *(f"--{flag}={port}" for flag, port in ports.items()), *args]


def stop(process: subprocess.Popen) -> None:
    """End a process we started and everything in its session."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(20)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(20)


def isolated() -> bool:
    """Whether this process may make network and mount namespaces with tmpfs mounts."""
    if not all(shutil.which(tool) for tool in ("unshare", "nsenter", "ip")):
        return False
    probe = subprocess.run(["unshare", "-n", "-m", "sh", "-c",
                            "ip link set lo up && mount -t tmpfs tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("nodes")
    found = {name: root / name for name in ("store", "cache", "data")}
    make_folder(found["data"], classes=("a", "b", "c"), per_class=14)
    found["cache"].mkdir()
    found["store"].mkdir()
    found["grid"] = root / "grid.yaml"
    found["grid"].write_text(yaml.safe_dump(tiny_grid_dict(
        datasets=[{"name": "imagefolder", "root": str(found["data"]), "image_size": 16}],
        methods=METHODS, seeds=1, stages=STAGES)))
    return found


class Cluster:
    """A head with no CPU and isolated worker nodes of 2 CPUs, in a loopback-only network."""

    def __init__(self, paths: dict[str, Path]) -> None:
        self.paths = paths
        self.env = {**os.environ, "MEDQ_CACHE": str(paths["cache"]),
                    "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex,
                    "RAY_USAGE_STATS_ENABLED": "0"}
        self.started: list[subprocess.Popen] = []
        self.workers: list[subprocess.Popen] = []
        # a temp folder of its own: `ray start --head` notes its address in the temp folder,
        # where a bare `ray.init()` (other tests, other Ray users here) would find it
        self.temp = Path(tempfile.mkdtemp(prefix="medq-ray-", dir="/tmp"))
        try:   # whatever started is stopped if a later step raises
            self.network = subprocess.Popen(
                ["unshare", "-n", "sh", "-c", "ip link set lo up && exec sleep 100000"],
                start_new_session=True)
            self.started.append(self.network)
            self.enter = ["nsenter", f"--net=/proc/{self.network.pid}/ns/net"]
            self.port = next(_PORTS)
            self.address = f"{HOST}:{self.port}"
            time.sleep(0.5)   # the namespace's loopback is up
            self.head = self.popen(ray_start("--head", f"--port={self.port}", "--num-cpus=0",
                                             "--include-dashboard=false",
                                             f"--temp-dir={self.temp}"))
        except BaseException:
            self.stop()
            raise

    def popen(self, command: list[str], **options: Any) -> subprocess.Popen:
        options.setdefault("stdout", subprocess.DEVNULL)
        options.setdefault("stderr", subprocess.DEVNULL)
        process = subprocess.Popen([*self.enter, *command], env=self.env,
                                   start_new_session=True, **options)
        self.started.append(process)
        return process

    def start_worker(self) -> subprocess.Popen:
        mounts = " && ".join(f"mount -t tmpfs tmpfs {self.paths[name]}"
                             for name in ("store", "cache", "data"))
        command = " ".join(ray_start(f"--address={self.address}", "--num-cpus=2",
                                     f"--temp-dir={self.temp / f'w{len(self.workers)}'}"))
        worker = self.popen(["unshare", "-m", "sh", "-c", f"{mounts} && exec {command}"])
        self.workers.append(worker)
        return worker

    def wait_for_nodes(self, count: int) -> None:
        script = ("import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False); "
                  "print(sum(n['Alive'] for n in ray.nodes()))")
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert self.head.poll() is None, "the head node exited"
            probe = subprocess.run([*self.enter, sys.executable, "-c", script, self.address],
                                   capture_output=True, text=True, timeout=120, env=self.env)
            if probe.stdout.strip().splitlines()[-1:] == [str(count)]:
                return
            time.sleep(1)
        raise TimeoutError(f"the Ray cluster at {self.address} never had {count} nodes")

    def bench_run(self, store: Path, log: Path) -> subprocess.Popen:
        """`bench run` of the grid on the cluster, as a driver in the cluster's network."""
        with log.open("w") as handle:
            return self.popen([str(BIN / "bench"), "run", "--grid", str(self.paths["grid"]),
                               "--store", str(store), "--executor", "ray", "--address",
                               self.address, "--device", "cpu", "--quiet"],
                              stdout=handle, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        for process in reversed(self.started):
            stop(process)
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(paths: dict[str, Path]) -> Iterator[Cluster]:
    pytest.importorskip("ray")
    if not isolated():
        pytest.skip("needs `unshare -n -m`, nsenter and tmpfs mounts (root)")
    nodes = Cluster(paths)
    try:
        nodes.wait_for_nodes(1)
        nodes.start_worker()
        nodes.wait_for_nodes(2)
        yield nodes
    finally:
        nodes.stop()


def assert_every_artifact_stored(store: ResultsStore) -> list[Any]:
    records = store.records()
    assert len(records) == CELLS and {r.status for r in records} == {"ok"}
    for record in records:
        assert record.artifact_hashes
        assert mismatches(store.artifact_dir(record.cell_id), record.artifact_hashes) == []
    assert not list(store.staging_root.iterdir())
    return records


def test_a_worker_that_shares_no_disk_computes_every_cell(
        cluster: Cluster, paths: dict[str, Path], tmp_path: Path) -> None:
    local = ResultsStore(tmp_path / "local")
    options = RunOptions(grid=str(paths["grid"]), store=local.root, torch_device="cpu",
                         quiet=True)
    start = time.perf_counter()
    summary = run_grid(plan_grid(options), local, options)
    local_seconds = time.perf_counter() - start
    assert len(summary.ran) == CELLS and not summary.failed

    start = time.perf_counter()
    driver = cluster.bench_run(paths["store"], tmp_path / "driver.log")
    assert driver.wait(600) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    print(f"\ntwo-node ray (bench run): {time.perf_counter() - start:.1f} s, "
          f"local executor (in process): {local_seconds:.1f} s")
    store = ResultsStore(paths["store"])
    assert_same(results(store), results(local))
    for record in assert_every_artifact_stored(store):
        assert record.provenance["executor"] == "ray"
        assert f"({HOST}, Ray node" in record.provenance["node"]
        assert record.provenance["data_from"] == "driver (Ray object store)"
        assert any(name.endswith(".onnx") for name in record.artifact_hashes)
    child = next(r for r in store.records() if r.parent_id)
    assert child.metrics["saliency"]["reference"]["skipped"] is None   # the parent's maps came
    output = (tmp_path / "driver.log").read_text()
    assert "Ray cluster: 2 nodes, 2 CPUs, 0 GPUs" in output


def test_a_result_larger_than_the_object_store_arrives_whole(cluster: Cluster, tmp_path: Path
                                                             ) -> None:
    """150 MB of artifacts from a worker node whose object store holds 100 MB."""
    script = tmp_path / "big.py"
    script.write_text("""
import os, sys, tempfile
from pathlib import Path
import ray
from bench.runner.executors.shipping import Incoming, stream_files
from bench.store import CellRecord

def big_cell(size):
    folder = Path(tempfile.mkdtemp())
    (folder / "weights.pt").write_bytes(os.urandom(size))
    yield from stream_files(CellRecord(cell_id="big", status="ok"), folder)

ray.init(address=sys.argv[1], log_to_driver=False)
stream = ray.remote(big_cell).options(
    num_returns="streaming", _generator_backpressure_num_objects=4).remote(150 << 20)
incoming = Incoming("big", Path(sys.argv[2]))
for ref in stream:
    incoming.take(ray.get(ref))
finished = incoming.finish()
assert finished.crash is None, finished.crash
print((finished.outcome.staged / "weights.pt").stat().st_size)
""")
    probe = cluster.popen([sys.executable, str(script), cluster.address, str(tmp_path / "in")],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = probe.communicate(timeout=300)
    assert probe.returncode == 0, err[-3000:]
    assert out.split() == [str(150 << 20)]


def test_a_driver_killed_while_results_are_in_flight_loses_and_duplicates_nothing(
        cluster: Cluster, paths: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "s"
    staging = root / "artifacts" / ".staging"
    driver = cluster.bench_run(root, tmp_path / "killed.log")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and driver.poll() is None:
        if (staging.is_dir() and any(staging.iterdir())) or peek_done_ids(root):
            driver.kill()
            break
        time.sleep(0.002)
    assert driver.wait(30) == -signal.SIGKILL, "the driver finished before it could be killed"
    resumed = cluster.bench_run(root, tmp_path / "resumed.log")
    assert resumed.wait(600) == 0, (tmp_path / "resumed.log").read_text()[-3000:]
    store = ClockedStore(root)
    assert_every_artifact_stored(store)
    folders = {p.name for p in store.artifact_root.iterdir() if p.name != ".staging"}
    assert folders == {r.cell_id for r in store.records()}


def cell_processes(node: subprocess.Popen) -> list[psutil.Process]:
    """The processes of ``node`` running a cell (Ray titles them `ray::cell ...`)."""
    found = []
    for process in psutil.Process(node.pid).children(recursive=True):
        try:
            if "ray::cell" in " ".join(process.cmdline()):
                found.append(process)
        except psutil.Error:
            continue
    return found


def kill_raylet_mid_cell(cluster: Cluster, killed: list[str]) -> None:
    """Once the worker node has run a cell for a second, SIGKILL its raylet and start a fresh
    worker node for the retry."""
    node = cluster.workers[-1]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not cell_processes(node):
        time.sleep(0.01)
    time.sleep(1.0)
    for process in psutil.Process(node.pid).children(recursive=True):
        if process.name() == "raylet":
            process.kill()
            killed.append(process.name())
    cluster.start_worker()


def test_a_node_that_dies_mid_cell_costs_a_retry_that_names_it(
        cluster: Cluster, paths: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "s"
    killed: list[str] = []
    killer = threading.Thread(target=kill_raylet_mid_cell, args=(cluster, killed))
    killer.start()
    driver = cluster.bench_run(root, tmp_path / "driver.log")
    code = driver.wait(600)
    killer.join()
    output = (tmp_path / "driver.log").read_text()
    assert code == 0, output[-3000:]
    output += "".join(log.read_text() for log in (root / LOG_DIR).glob("*.log"))
    assert killed == ["raylet"]
    retries = [line for line in output.splitlines() if "; retrying (1/" in line]
    assert len(retries) == 1 and f"({HOST}, Ray node" in retries[0], output[-3000:]
    store = ResultsStore(root)
    assert_every_artifact_stored(store)
    assert len(store.records()) == CELLS
