"""`--executor ray` on a two-node cluster whose worker node shares no disk with the driver.

Both nodes run on this machine, every address 127.0.0.1; the head offers no CPU, so every cell
lands on the worker node, which runs in its own mount namespace (`unshare -m`) with empty tmpfs
over the store, the cache and the data root. Ray's token authentication is on and its usage
statistics off, both set explicitly. The grid's cells (FP32 and PTQ, deploy and saliency
stages) must come back with the local executor's metrics, every artifact in the driver's store
with its SHA-256.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from bench.runner import RunOptions, plan_grid, run_grid
from bench.store import ResultsStore
from bench.store.artifacts import mismatches
from tests.conftest import tiny_grid_dict
from tests.imaging import make_folder
from tests.test_executors import assert_same, results

HOST = "127.0.0.1"
METHODS = [{"name": "fp32"}, {"name": "ptq", "bits": [[8, 8]]}]
STAGES = {"deploy": {},
          "saliency": {"methods": ["gradient"], "n_samples": 4, "sensitivity_samples": 1,
                       "deletion_steps": 2, "overlays": 1, "threads": 1}}
CELLS = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def ray_start(*args: str) -> list[str]:
    """`ray start` on 127.0.0.1 with ports of its own (other Ray clusters may run here)."""
    return [str(Path(sys.executable).parent / "ray"), "start", "--block",
            f"--node-ip-address={HOST}", "--disable-usage-stats",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
            f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
            "--object-store-memory=100000000", *args]


def stop(process: subprocess.Popen) -> None:
    """End a node: its `ray start --block` and every process of its session."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


@pytest.fixture(scope="module")
def ray_env() -> Iterator[dict[str, str]]:
    """Token authentication on (a fresh token), usage statistics off, for this process and the
    nodes it starts."""
    pytest.importorskip("ray")
    settings = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex,
                "RAY_USAGE_STATS_ENABLED": "0"}
    saved = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    from ray._private.authentication_test_utils import reset_auth_token_state

    reset_auth_token_state()
    yield dict(os.environ)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    reset_auth_token_state()


def isolated() -> bool:
    """Whether this process may make a mount namespace with its own tmpfs mounts."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("nodes")
    found = {name: root / name for name in ("store", "cache", "data")}
    make_folder(found["data"], classes=("a", "b", "c"), per_class=14)
    found["cache"].mkdir()
    found["grid"] = root / "grid.yaml"
    found["grid"].write_text(yaml.safe_dump(tiny_grid_dict(
        datasets=[{"name": "imagefolder", "root": str(found["data"]), "image_size": 16}],
        methods=METHODS, seeds=1, stages=STAGES)))
    return found


@pytest.fixture(scope="module")
def cluster(ray_env: dict[str, str], paths: dict[str, Path]) -> Iterator[str]:
    """A head with no CPU and an isolated worker node with 2 CPUs; yields the address."""
    if not isolated():
        pytest.skip("needs `unshare -m` and tmpfs mounts (root, or user namespaces)")
    env = {**ray_env, "MEDQ_CACHE": str(paths["cache"])}
    port = free_port()
    address = f"{HOST}:{port}"
    head = subprocess.Popen(ray_start("--head", f"--port={port}", "--num-cpus=0",
                                      "--include-dashboard=false"),
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    mounts = " && ".join(f"mount -t tmpfs tmpfs {paths[name]}"
                         for name in ("store", "cache", "data"))
    paths["store"].mkdir(exist_ok=True)
    worker_cmd = " ".join(ray_start(f"--address={address}", "--num-cpus=2"))
    worker = None
    try:
        wait_for_nodes(address, 1, head)
        worker = subprocess.Popen(["unshare", "-m", "sh", "-c", f"{mounts} && exec {worker_cmd}"],
                                  env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        wait_for_nodes(address, 2, worker)
        yield address
    finally:
        for process in (worker, head):
            if process is not None:
                stop(process)


def wait_for_nodes(address: str, count: int, process: subprocess.Popen) -> None:
    script = ("import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False); "
              "print(sum(n['Alive'] for n in ray.nodes()))")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert process.poll() is None, "a Ray node exited while starting"
        probe = subprocess.run([sys.executable, "-c", script, address], capture_output=True,
                               text=True, timeout=120)
        if probe.returncode == 0 and probe.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        time.sleep(1)
    raise TimeoutError(f"the Ray cluster at {address} never had {count} nodes")


def run(paths: dict[str, Path], store: ResultsStore, executor: str, address: str | None = None
        ) -> float:
    options = RunOptions(grid=str(paths["grid"]), store=store.root, torch_device="cpu",
                         quiet=True, executor=executor, address=address)
    start = time.perf_counter()
    summary = run_grid(plan_grid(options), store, options)
    assert len(summary.ran) == CELLS and not summary.failed, summary
    return time.perf_counter() - start


def test_a_worker_that_shares_no_disk_computes_every_cell(
        cluster: str, paths: dict[str, Path], tmp_path: Path,
        capfd: pytest.CaptureFixture[str]) -> None:
    import ray

    local = ResultsStore(tmp_path / "local")
    local_seconds = run(paths, local, "local")
    store = ResultsStore(paths["store"])
    try:
        ray_seconds = run(paths, store, "ray", address=cluster)
    finally:
        ray.shutdown()
    print(f"two-node ray: {ray_seconds:.1f} s, local executor: {local_seconds:.1f} s")
    assert_same(results(store), results(local))
    records = store.records()
    for record in records:
        assert record.provenance["executor"] == "ray"
        assert "Ray node" in record.provenance["node"]
        assert record.provenance["data_from"] == "driver (Ray object store)"
        assert any(name.endswith(".onnx") for name in record.artifact_hashes)
        assert mismatches(store.artifact_dir(record.cell_id), record.artifact_hashes) == []
    child = next(r for r in records if r.parent_id)
    assert child.metrics["saliency"]["reference"]["skipped"] is None   # the parent's maps came
    err = capfd.readouterr().err
    assert "Ray cluster: 2 nodes, 2 CPUs, 0 GPUs" in err
