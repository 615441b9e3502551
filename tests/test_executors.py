"""Executors: the process pool and a real local Ray cluster give the local executor's records,
quantised cells start only after their FP32 parent is stored, a worker killed mid-cell costs a
retry and nothing else, and failures are stored without stopping the grid."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import yaml

from bench.data import PreparedData
from bench.runner import RunOptions, RunSummary, plan_grid, run_grid
from bench.runner.executors import MAX_RETRIES, ExecutorOptions, execute
from bench.runner.executors.base import Finished
from bench.runner.executors.local import LocalExecutor
from bench.runner.executors.order import Waits, waits
from bench.runner.executors.task import CellTask
from bench.store import CellRecord, ResultsStore
from bench.store.database import stage_columns
from bench.train import EpochHook
from tests.conftest import killable_grid_dict, tiny_grid_dict
from tests.test_resume import ok_count, settled_ok_count

METHODS = [{"name": "fp32"}, {"name": "ptq", "bits": [[8, 8]]}]
# a little longer than the tiny grid's cells, so that a worker can be killed in the middle of one
TRAIN = {"epochs": 3, "batch_size": 16, "lr": 0.003}
CELLS = 4   # fp32 and ptq W8A8, 2 seeds
# a light saliency stage: it runs in the worker and reads the parent's maps from the store
STAGES = {"saliency": {"methods": ["gradient"], "n_samples": 4, "sensitivity_samples": 1,
                       "deletion_steps": 2, "overlays": 1, "threads": 1}}


class ClockedStore(ResultsStore):
    """A store that notes when (and how often) each cell's record is committed."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.commits: dict[str, list[datetime]] = {}

    def commit(self, record: CellRecord, staged: Path | None = None) -> None:
        super().commit(record, staged)
        self.commits.setdefault(record.cell_id, []).append(datetime.now(UTC).replace(tzinfo=None))


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("grid") / "grid.yaml"
    path.write_text(yaml.safe_dump(tiny_grid_dict(methods=METHODS, train=TRAIN, stages=STAGES)))
    return path


def run(grid: Path, store: ResultsStore, executor: str, workers: int | None = None
        ) -> RunSummary:
    options = RunOptions(grid=str(grid), store=store.root, torch_device="cpu", quiet=True,
                         executor=executor, workers=workers)
    return run_grid(plan_grid(options), store, options)


def results(store: ResultsStore) -> dict[str, tuple]:
    """Per cell id: status, accuracy, macro F1, stage columns and the stored test logits."""
    return {r.cell_id: (r.status, r.accuracy, r.macro_f1, stage_columns(r),
                        np.load(store.artifact_dir(r.cell_id) / "predictions.npz")["logits"])
            for r in store.records()}


def assert_same(a: dict[str, tuple], b: dict[str, tuple]) -> None:
    assert sorted(a) == sorted(b)
    for cell_id, (*values, logits) in a.items():
        assert values == list(b[cell_id][:-1]), cell_id
        assert np.array_equal(logits, b[cell_id][-1]), cell_id


def assert_parents_first(store: ClockedStore) -> None:
    children = [r for r in store.records() if r.parent_id]
    assert children and all(r.metrics["saliency"]["reference"]["skipped"] is None
                            for r in children)   # the worker read its parent's maps
    for child in children:
        assert child.started_at >= store.commits[child.parent_id][0], child.cell_id


@pytest.fixture(scope="module")
def local(grid: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    store = ResultsStore(tmp_path_factory.mktemp("local") / "s")
    summary = run(grid, store, "local")
    assert len(summary.ran) == CELLS and not summary.failed
    return results(store)


def pool_workers() -> list[psutil.Process]:
    """Live pool workers under this process: children of its forkserver."""
    workers = []
    for process in psutil.Process().children(recursive=True):
        try:
            if (process.status() != psutil.STATUS_ZOMBIE
                    and "forkserver" in " ".join(process.parent().cmdline())):
                workers.append(process)
        except psutil.Error:
            continue
    return workers


def kill_a_worker_mid_cell(staging: Path, killed: list[int]) -> None:
    """Once a cell is being computed (its staging folder exists), SIGKILL one pool worker."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        workers = pool_workers()
        if workers and any(staging.iterdir()):
            workers[0].kill()
            killed.append(workers[0].pid)
            return
        time.sleep(0.005)


@pytest.fixture(scope="module")
def pool(grid: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The grid on a 2-process pool, one of whose workers is killed in the middle of a cell."""
    store = ClockedStore(tmp_path_factory.mktemp("pool") / "s")
    killed: list[int] = []
    killer = threading.Thread(target=kill_a_worker_mid_cell, args=(store.staging_root, killed))
    killer.start()
    summary = run(grid, store, "process", workers=2)
    killer.join()
    return {"store": store, "summary": summary, "killed": killed}


def test_process_pool_gives_the_local_records(pool: dict, local: dict) -> None:
    assert_same(results(pool["store"]), local)


def test_worker_killed_mid_cell_is_retried_and_every_cell_stored_once(pool: dict) -> None:
    store, summary = pool["store"], pool["summary"]
    assert pool["killed"] and summary.retried
    assert len(summary.ran) == CELLS and not summary.failed
    assert all(len(times) == 1 for times in store.commits.values())
    records = store.records()
    assert len(records) == CELLS and {r.status for r in records} == {"ok"}
    folders = {p.name for p in store.artifact_root.iterdir() if p.name != ".staging"}
    assert folders == {r.cell_id for r in records}
    assert not list(store.staging_root.iterdir())
    assert not pool_workers()


def test_local_ray_settles_token_auth_and_usage_stats_explicitly() -> None:
    from bench.runner.executors.ray_executor import settle_local_ray_env

    first: dict[str, str] = {}
    settle_local_ray_env(first)
    assert first["RAY_USAGE_STATS_ENABLED"] == "0" and len(first["RAY_AUTH_TOKEN"]) == 64
    second: dict[str, str] = {}
    settle_local_ray_env(second)
    assert first["RAY_AUTH_TOKEN"] != second["RAY_AUTH_TOKEN"]   # fresh for each cluster
    chosen = {"RAY_AUTH_TOKEN": "mine", "RAY_USAGE_STATS_ENABLED": "1"}
    settle_local_ray_env(chosen)                 # the user's own settings are kept
    assert chosen == {"RAY_AUTH_TOKEN": "mine", "RAY_USAGE_STATS_ENABLED": "1"}


def test_process_pool_starts_quantised_cells_after_their_parent_is_stored(pool: dict) -> None:
    assert_parents_first(pool["store"])


@pytest.fixture(scope="module")
def ray_cluster() -> None:
    """One local Ray cluster (2 CPUs, 127.0.0.1) for the module; the executor joins it."""
    ray = pytest.importorskip("ray")
    from bench.runner.executors.ray_executor import settle_local_ray_env

    settled: dict[str, str] = {}
    settle_local_ray_env(settled)              # token auth and usage stats settled explicitly
    mp = pytest.MonkeyPatch()
    for name, value in settled.items():
        mp.setenv(name, value)
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 _node_ip_address="127.0.0.1")
        yield
    finally:
        ray.shutdown()
        mp.undo()


@pytest.fixture(scope="module")
def on_ray(ray_cluster: None, grid: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> ClockedStore:
    store = ClockedStore(tmp_path_factory.mktemp("ray") / "s")
    summary = run(grid, store, "ray")
    assert len(summary.ran) == CELLS and not summary.failed
    return store


def test_ray_gives_the_local_records(on_ray: ClockedStore, local: dict) -> None:
    assert_same(results(on_ray), local)
    assert {r.provenance["executor"] for r in on_ray.records()} == {"ray"}


def test_ray_starts_quantised_cells_after_their_parent_is_stored(on_ray: ClockedStore) -> None:
    assert_parents_first(on_ray)


def test_failed_cell_is_stored_and_its_children_fail_without_running(
        grid: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.runner.cell as cell_module

    real = cell_module.seed_everything

    def seed_everything(seed: int) -> None:
        if seed == 1:
            raise RuntimeError("boom")
        real(seed)

    monkeypatch.setattr(cell_module, "seed_everything", seed_everything)
    store = ResultsStore(tmp_path / "s")
    summary = run(grid, store, "local")
    assert len(summary.ran) == 2 and len(summary.failed) == 2
    by = {(r.method, r.seed): r for r in store.records()}
    assert by["fp32", 1].status == "failed" and "RuntimeError: boom" in by["fp32", 1].error
    assert by["ptq", 1].error.startswith(f"parent failed: {_label('fp32', 1)}")
    assert by["fp32", 0].status == by["ptq", 0].status == "ok"


def _label(method: str, seed: int) -> str:
    return f"synthetic/smallcnn/{method}/seed {seed}"


class CrashingExecutor(LocalExecutor):
    """Two slots; whenever the victim cell is in flight, the worker dies with every cell in
    flight (as a process pool breaks): pinned on a cell only when it was alone."""

    def __init__(self, victim: tuple[str, int]) -> None:
        super().__init__(ExecutorOptions(torch_device="cpu"))
        self.victim = victim
        self.queue: list[tuple[CellTask, PreparedData]] = []
        self.attempts: dict[str, int] = {}

    @property
    def slots(self) -> int:
        return 2

    def submit(self, task: CellTask, data: PreparedData, on_epoch: EpochHook | None) -> None:
        self.queue.append((task, data))
        cell_id = task.cell.cell_id
        self.attempts[cell_id] = self.attempts.get(cell_id, 0) + 1

    def wait(self) -> list[Finished]:
        if any((t.cell.config.method, t.cell.config.seed) == self.victim for t, _ in self.queue):
            crashed = [Finished(t.cell.cell_id, crash="killed", sole=len(self.queue) == 1)
                       for t, _ in self.queue]
            self.queue.clear()
            return crashed
        task, data = self.queue.pop(0)
        self._next = (task, data, None)
        return super().wait()


def test_cell_that_keeps_killing_its_worker_is_stored_failed(grid: Path, tmp_path: Path
                                                             ) -> None:
    options = RunOptions(grid=str(grid), torch_device="cpu", quiet=True)
    plan = plan_grid(options)
    store = ResultsStore(tmp_path / "s")
    executor = CrashingExecutor(victim=("fp32", 0))
    summary = execute(plan, store, executor, quiet=True)
    by = {(r.method, r.seed): r for r in store.records()}
    assert len(by) == CELLS
    victim = by["fp32", 0]
    assert victim.status == "failed" and victim.error.startswith(
        f"WorkerCrashed: the worker died {MAX_RETRIES + 1} times")
    assert executor.attempts[victim.cell_id] == MAX_RETRIES + 2   # one crash was not pinned
    assert by["ptq", 0].error.startswith("parent failed")
    assert by["fp32", 1].status == by["ptq", 1].status == "ok"   # the bystander was cleared
    assert sorted(summary.failed) == sorted([victim.cell_id, by["ptq", 0].cell_id])
    assert not list(store.staging_root.iterdir())


def test_dry_run_names_the_executor(grid: Path, tmp_path: Path, cli: Callable[..., Any]) -> None:
    result = cli("run", "--grid", grid, "--store", tmp_path / "s", "--dry-run", "--no-estimate",
                 "--executor", "process", "--workers", "2")
    assert result.exit_code == 0, result.output
    assert "executor process: 2 worker processes" in result.output
    assert "process pool (2)" in result.output


@pytest.mark.parametrize("flags, message", [
    (("--executor", "slurm"), "unknown executor 'slurm'; known: local, process, ray"),
    (("--executor", "process", "--address", "auto"), "--address is for --executor ray"),
    (("--workers", "2"), "--executor local runs one cell at a time"),
])
def test_bad_executor_flags_exit_2(grid: Path, tmp_path: Path, cli: Callable[..., Any],
                                   flags: tuple[str, ...], message: str) -> None:
    result = cli("run", "--grid", grid, "--store", tmp_path / "s", *flags)
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "s").exists()


def test_driver_killed_then_resumed_leaves_no_worker_and_no_duplicate(
        tmp_path: Path, cli: Callable[..., Any]) -> None:
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump(killable_grid_dict(methods=METHODS, seeds=4)))
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "bench.cli", "run", "--grid", str(grid), "--store", str(store),
           "--quiet", "--executor", "process", "--workers", "2"]
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while (ok_count(store / "medq.sqlite") or 0) < 1 and driver.poll() is None:
        assert time.monotonic() < deadline, "first cell never finished"
        time.sleep(0.02)
    workers = psutil.Process(driver.pid).children(recursive=True)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    killed_at = settled_ok_count(store / "medq.sqlite")
    assert 1 <= killed_at < 2 * CELLS, "the kill must land mid-grid"
    _, alive = psutil.wait_procs(workers, timeout=60)
    assert not alive, "pool workers outlived the driver"

    done = cli(*cmd[3:])   # resumed in this process
    assert done.exit_code == 0, done.output
    assert f"{2 * CELLS - killed_at} ran, {killed_at} cached, 0 failed" in done.output
    records = ResultsStore(store).records()
    assert len(records) == 2 * CELLS and {r.status for r in records} == {"ok"}
    assert not list((store / "artifacts" / ".staging").iterdir())


def test_what_each_cell_waits_for(tmp_path: Path) -> None:
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(tiny_grid_dict(methods=[*METHODS, {"name": "sgt"}])))
    plan = plan_grid(RunOptions(grid=str(path)))
    by = {(c.config.method, c.config.seed): c.cell_id for c in plan.cells}
    got = waits(plan)
    for seed in (0, 1):
        fp32 = by["fp32", seed]
        assert got[fp32] == Waits()
        assert got[by["ptq", seed]] == Waits(needs=frozenset({fp32}))
        assert got[by["sgt", seed]] == Waits(follows=frozenset({fp32}))


def test_a_file_from_the_driver_that_arrives_damaged_is_raised_not_stored(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """compute_cell turns every error into a failed cell; a shipped file that arrived damaged is
    no result of the cell, so run_task raises it and the driver retries the task as a crash."""
    from types import SimpleNamespace

    from bench.runner import cell as cell_module
    from bench.runner.executors import shipping
    from bench.runner.executors.task import run_task
    from bench.runner.outcome import CellOutcome

    def damaged(blob: Any, target: Path) -> None:
        raise shipping.ArtifactDamaged(f"{target.name} arrived with another SHA-256")

    def compute(cell: Any, data: Any, store: Any, *_: Any) -> CellOutcome:
        try:
            store.artifact_dir("parent")
        except Exception as err:   # as compute_cell does: a failed cell is a result
            return CellOutcome(CellRecord(cell_id="c1", status="failed", error=str(err)))
        return CellOutcome(CellRecord(cell_id="c1", status="ok"))

    monkeypatch.setattr(shipping, "fetch_file", damaged)
    monkeypatch.setattr(cell_module, "compute_cell", compute)
    store = shipping.ShippedStore(tmp_path, shipping.Shipment(files={"parent": {
        "model.pt": shipping.Blob("0" * 64, 1, ())}}))
    cell = SimpleNamespace(cell_id="c1", data_key="k",
                           config=SimpleNamespace(train=SimpleNamespace(precision="fp32")))
    task = SimpleNamespace(cell=cell, torch_device="cpu", executor="ray", grid_name="g",
                           store=None)
    with pytest.raises(shipping.ArtifactDamaged, match=r"model\.pt"):
        run_task(task, data=object(), store=store)


def _header(tmp_path: Path, files: dict[str, bytes]) -> tuple[Any, list[Any]]:
    """What a Ray worker streams for a cell: where it runs, its header, its files in chunks."""
    from bench.runner.executors.shipping import Header, Node
    from bench.store.artifacts import file_sha256

    record = CellRecord(cell_id="c1", status="ok")
    sizes = {}
    for name, content in files.items():
        (tmp_path / "src").mkdir(exist_ok=True)
        (tmp_path / "src" / name).write_bytes(content)
        sizes[name] = (file_sha256(tmp_path / "src" / name), len(content))
    items: list[Any] = [Node("n" * 20, "127.0.0.1", "worker-a"), Header(record, sizes)]
    for name, content in files.items():
        items.extend((name, content[i:i + 3]) for i in range(0, len(content), 3))
    return record, items


def test_files_streamed_from_a_worker_are_checked_on_arrival(tmp_path: Path) -> None:
    from bench.runner.executors.shipping import Incoming

    files = {"model.onnx": b"0123456789", "metrics.json": b"{}"}
    record, items = _header(tmp_path, files)
    good = Incoming("c1", tmp_path / "staging")
    for item in items:
        good.take(item)
    finished = good.finish()
    assert finished.crash is None and finished.node == "worker-a (127.0.0.1, Ray node nnnnnnnnnnnn)"
    assert finished.outcome.record is record
    assert {p.name: p.read_bytes() for p in finished.outcome.staged.iterdir()} == files

    damaged = Incoming("c1", tmp_path / "staging")
    for item in items:
        if isinstance(item, tuple) and item[1] == b"345":
            item = (item[0], b"3x5")   # a chunk damaged on the way
        damaged.take(item)
    finished = damaged.finish()
    assert finished.outcome is None and finished.sole
    assert finished.crash.startswith("ArtifactDamaged: model.onnx arrived with another SHA-256")
    assert "on worker-a (127.0.0.1" in finished.crash
    assert not damaged.folder.exists()

    cut = Incoming("c1", tmp_path / "staging")
    for item in items[:-1]:
        cut.take(item)
    assert "metrics.json" in cut.finish().crash   # a file that never arrived whole


def test_the_estimate_of_a_joined_ray_cluster_counts_its_cpus(
        ray_cluster: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.runner import estimate as estimate_module
    from bench.runner.executors.ray_executor import RayExecutor

    monkeypatch.setattr(estimate_module, "local_cores", lambda: 1)   # this machine: 1 core
    executor = RayExecutor(ExecutorOptions(address="auto", torch_device="cpu"))
    chosen = estimate_module.assumptions(executor)
    assert chosen.concurrency == 2   # the module's cluster has 2 CPUs
    assert "the Ray cluster's 2 cores" in chosen.note
