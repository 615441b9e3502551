"""No leftovers, no overlaps (issue 18, point 3) and what is public (point 4): a killed import
leaves no scratch folder for good, a killed `bench measure` takes its timing worker with it and
a new one waits for any worker of the store, a refused run writes no log, bundles are refused
before large unlisted or re-sealed data is decompressed, and `bench serve` says who may read."""

from __future__ import annotations

import gzip
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from fastapi.testclient import TestClient

import bench.measure.runner as measure_runner
from bench.exchange import bundle as bundle_module
from bench.exchange.bundle import (
    MANIFEST,
    BundleDeviceError,
    BundleError,
    export_bundle,
    read_bundle,
)
from bench.exchange.scratch import Scratch, sweep
from bench.measure.isolation import WorkerStillRunning, worker_guard
from bench.server.app import create_app
from bench.server.settings import ServerSettings
from bench.server.tokens import create_token
from bench.store import ResultsStore
from tests.server_helpers import ROOT, batch, bearer, cell
from tests.test_bundle import members, resealed

BIG = 64 << 20


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])}


def wait_for(condition: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := condition():
            return found
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


# ---------------------------------------------------------------- killed import


KILLED_IMPORT = """
import sys
from bench.exchange.bundle import import_bundle
import_bundle(sys.argv[1], sys.stdin.buffer)
"""


def test_a_killed_import_leaves_no_scratch_folder_after_the_next_one(cli, tmp_path,
                                                                    monkeypatch):
    source = ResultsStore(tmp_path / "src")
    source.ingest(batch([cell(f"c{i}") for i in range(20)]))
    data = export_bundle(source, tmp_path / "b.tar.gz").path.read_bytes()
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", KILLED_IMPORT, str(tmp_path / "dst")],
                            stdin=subprocess.PIPE, env={**env(), "TMPDIR": str(scratch)})
    assert proc.stdin is not None
    proc.stdin.write(data[:len(data) // 2])
    proc.stdin.flush()
    (left,) = wait_for(lambda: list(scratch.glob("medq-bundle-*")))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert left.is_dir(), "the killed import left its scratch folder"
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    alive = Scratch("medq-bundle-")
    result = cli("import", tmp_path / "b.tar.gz", "--store", tmp_path / "dst")
    assert result.exit_code == 0, result.output
    assert list(scratch.glob("medq-bundle-*")) == [alive.path], "only a live owner's stays"
    alive.close()
    assert not list(scratch.iterdir())


def test_a_sweep_leaves_folders_of_living_owners(tmp_path):
    held = Scratch("medq-x-", tmp_path)
    (tmp_path / "medq-x-old").mkdir()
    os.utime(tmp_path / "medq-x-old", (0, 0))
    (tmp_path / "medq-x-new").mkdir()
    assert sweep(tmp_path, "medq-x-") == [tmp_path / "medq-x-old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([held.path.name, "medq-x-new"])
    held.close()


# ---------------------------------------------------------------- killed measure


@pytest.fixture(scope="module")
def deployed_store(tmp_path_factory) -> Path:
    """A store with one deployed cell (a tiny ONNX model), made without training."""
    import torch
    from torch import nn

    from bench.deploy import export_fp32

    root = tmp_path_factory.mktemp("deployed") / "s"
    store = ResultsStore(root)
    record = cell("onnx1").to_row()
    record.metrics = {"deploy": {"onnx_file": "model.onnx", "input_shape": [3, 8, 8],
                                 "columns": {}}}
    with store.staging("onnx1") as staged:
        export_fp32(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()), torch.zeros(1, 3, 8, 8),
                    staged / "model.onnx")
        store.commit(record, staged)
    store.engine.dispose()
    return root


def worker_of(parent: psutil.Process) -> psutil.Process | None:
    for child in parent.children(recursive=True):
        try:
            if any("_worker.py" in part for part in child.cmdline()):
                return child
        except psutil.NoSuchProcess:
            continue
    return None


def test_a_killed_measure_takes_its_timing_worker_with_it(deployed_store, tmp_path):
    slow = tmp_path / "slow.toml"
    slow.write_text('description = "a minute"\nwarmup = 0\nmin_repetitions = 1\n'
                    "min_duration_s = 120\n")
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", "measure", "--profile", str(slow),
                             "--store", str(deployed_store), "--quiet"], env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        worker = wait_for(lambda: worker_of(psutil.Process(proc.pid)), timeout=120)
        held = {Path(f.path).name for f in worker.open_files()}
        assert ".measure-worker.lock" in held, "the worker holds the store's worker guard"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        _, alive = psutil.wait_procs([worker], timeout=10)
        assert not alive, "the timing worker outlived its killed parent"
    finally:
        if proc.poll() is None:
            proc.kill()


HOLD = "import sys, time; time.sleep(float(sys.argv[1]))"


def test_a_measurement_waits_for_every_worker_of_the_store(tmp_path, cli, monkeypatch):
    """A worker inherits its parent's guard: while it lives, even with its parent gone, no new
    measurement of the store starts (exit 2 once the wait is over)."""
    lock = tmp_path / "s" / ".measure-worker.lock"
    ResultsStore(tmp_path / "s").engine.dispose()
    with worker_guard(lock) as fd:
        holder = subprocess.Popen([sys.executable, "-c", HOLD, "30"], pass_fds=(fd,))
    try:
        with pytest.raises(WorkerStillRunning), worker_guard(lock, wait_s=0.3):
            pass
        monkeypatch.setattr(measure_runner, "worker_guard", lambda path: worker_guard(path, 0.3))
        busy = cli("measure", "--profile", "host", "--store", tmp_path / "s")
        assert busy.exit_code == 2 and "a timing worker of an earlier bench measure" in \
            busy.output
    finally:
        holder.kill()
        holder.wait()
    with worker_guard(lock, wait_s=5):
        pass


# ---------------------------------------------------------------- large data refused early


class Counting:
    """Spy on the decompressed tar stream: the most bytes any read reached."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.most = 0
        read = bundle_module._TarStream.read
        spy = self

        def counted(stream: Any, size: int = -1) -> bytes:
            data = read(stream, size)
            spy.most = max(spy.most, stream.count)
            return data

        monkeypatch.setattr(bundle_module._TarStream, "read", counted)


class Zeros(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def write_bundle(path: Path, content: dict[str, bytes], big: str | None = None,
                 trailer: int = 0) -> Path:
    """A gzip'd tar of ``content`` whose member ``big`` holds BIG zero bytes instead, and
    ``trailer`` zero bytes after the archive; streamed, never in memory."""
    with path.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1) as gz:
        with tarfile.open(fileobj=gz, mode="w|") as tar:
            for name, data in content.items():
                info = tarfile.TarInfo(name)
                info.size = BIG if name == big else len(data)
                tar.addfile(info, io.BufferedReader(Zeros(BIG)) if name == big
                            else io.BytesIO(data))
        chunk = bytes(1 << 20)
        for _ in range(trailer >> 20):
            gz.write(chunk)
    return path


@pytest.fixture
def bundled(tmp_path) -> dict[str, bytes]:
    source = ResultsStore(tmp_path / "src")
    record = cell("c1").to_row()
    with source.staging("c1") as staged:
        (staged / "model.onnx").write_bytes(b"onnx")
        source.commit(record, staged)
    return members(export_bundle(source, tmp_path / "b.tar.gz", artifacts="all").path)


def test_a_large_unlisted_trailer_is_refused_at_once(bundled, tmp_path, monkeypatch):
    spy = Counting(monkeypatch)
    bad = write_bundle(tmp_path / "t.tar.gz", bundled, trailer=BIG)
    with pytest.raises(BundleError, match="data after the end of its archive"):
        read_bundle(bad)
    assert spy.most < 1 << 20, f"{spy.most} bytes decompressed"


def test_a_member_larger_than_declared_is_refused_before_its_data(bundled, tmp_path,
                                                                   monkeypatch):
    spy = Counting(monkeypatch)
    name = "medq-bundle/artifacts/c1/model.onnx"
    zeros_sha = "0" * 64

    def relist(doc: dict[str, Any]) -> None:
        doc["files"]["artifacts/c1/model.onnx"] = zeros_sha

    bad = write_bundle(tmp_path / "m.tar.gz", resealed(bundled, relist), big=name)
    with pytest.raises(BundleError, match=f"is {BIG} bytes in the bundle; its manifest declares"):
        read_bundle(bad)
    assert spy.most < 1 << 20

    def declare_too(doc: dict[str, Any]) -> None:
        relist(doc)
        doc["sizes"]["artifacts/c1/model.onnx"] = BIG

    bad = write_bundle(tmp_path / "n.tar.gz", resealed(bundled, declare_too), big=name)
    with pytest.raises(BundleError, match="not a file that cell c1's record lists"):
        read_bundle(bad)
    assert spy.most < 1 << 20


def test_the_servers_device_check_comes_before_the_members(bundled, tmp_path, monkeypatch):
    spy = Counting(monkeypatch)
    document = json.loads(bundled[f"medq-bundle/{MANIFEST}"])
    assert document["devices"] == ["dev-a"]
    big = write_bundle(tmp_path / "b.tar.gz", bundled, big="medq-bundle/artifacts/c1/model.onnx")
    with pytest.raises(BundleDeviceError, match="the bundle declares 'dev-a'"):
        read_bundle(big, device="dev-b")
    assert spy.most < 1 << 20
    app = create_app(ServerSettings.of(None, tmp_path / "srv"))
    token = create_token(app.state.store.engine, "dev-b")[1]
    small = write_bundle(tmp_path / "s.tar.gz", bundled).read_bytes()
    with TestClient(app) as client:
        answer = client.post("/api/v1/uploads", content=small,
                             headers={**bearer(token), "Content-Type": "application/gzip"})
    assert answer.status_code == 403 and "declares 'dev-a'" in answer.json()["detail"]


def test_a_version_1_bundle_still_imports(bundled, tmp_path):
    """Bundles written before sizes and signatures (version 1) are read as before."""
    def downgrade(doc: dict[str, Any]) -> None:
        doc["version"] = 1
        del doc["sizes"], doc["devices"]

    old = write_bundle(tmp_path / "v1.tar.gz", resealed(bundled, downgrade))
    with read_bundle(old) as loaded:
        assert loaded.manifest.version == 1 and [c.cell_id for c in loaded.batch.cells] == ["c1"]


# ---------------------------------------------------------------- a refused run writes nothing


def test_a_run_refused_because_the_store_is_busy_writes_no_log(cli, write_grid, tmp_path):
    store = ResultsStore(tmp_path / "s")
    with store.exclusive("run"):
        result = cli("run", "--grid", write_grid(seeds=1), "--store", store.root, "--quiet")
    assert result.exit_code == 2 and "another bench run" in result.output
    assert not list(store.log_dir.iterdir())


# ---------------------------------------------------------------- what is public


def test_serve_says_at_start_whether_reads_are_public(cli, tmp_path, monkeypatch):
    started: list[ServerSettings] = []
    monkeypatch.setattr("bench.server.app.serve", started.append)
    public = cli("serve", "--data", tmp_path / "srv", "--port", "9999")
    assert public.exit_code == 0, public.output
    text = " ".join(public.output.split())
    assert "reads are public: anyone who reaches 127.0.0.1:9999 can read every record, " \
           "device, artifact and the report without a token" in text
    private = cli("serve", "--data", tmp_path / "srv", "--private-reads")
    assert "reads are private (--private-reads)" in " ".join(private.output.split())
    assert [s.private_reads for s in started] == [False, True]


def test_devices_and_known_hashes_follow_the_records_rule(tmp_path):
    for private in (False, True):
        app = create_app(ServerSettings.of(None, tmp_path / f"srv-{private}",
                                           private_reads=private))
        token = create_token(app.state.store.engine, "dev-a")[1]
        with TestClient(app) as client:
            for headers in ({}, bearer(token)):
                answers = {client.get("/api/v1/records", headers=headers).status_code,
                           client.get("/api/v1/devices", headers=headers).status_code,
                           client.post("/api/v1/records/known", json={"hashes": []},
                                       headers=headers).status_code}
                assert answers == {401 if private and not headers else 200}, (private, headers)
