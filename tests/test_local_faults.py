"""Local faults give a message, never a silent wrong result: a parent whose stored files differ
from its record (or are gone) is recomputed before its children, a file that changes under a
cell fails it naming the file."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from bench.data import filehash
from bench.data.imagefolder import folder_source, load_folder, scan_class_folders
from bench.errors import DataError
from bench.store import ResultsStore
from tests.imaging import make_folder

FP32_ONLY = [{"name": "fp32"}]
WITH_CHILD = [{"name": "fp32"}, {"name": "ptq", "bits": [[8, 8]]}]


def _records(store: Path) -> dict[tuple[str, int], object]:
    return {(r.method, r.seed): r for r in ResultsStore(store).records()}


def _logits(store: Path, record) -> np.ndarray:
    with np.load(store / record.artifacts / "predictions.npz") as f:
        return f["logits"]


@pytest.fixture
def clean_child(tmp_path, write_grid, cli) -> np.ndarray:
    """The logits of seed 0's PTQ child in a store nobody tampered with."""
    store = tmp_path / "clean"
    assert cli("run", "--grid", write_grid(methods=WITH_CHILD), "--store", store,
               "--quiet").exit_code == 0
    return _logits(store, _records(store)[("ptq", 0)])


@pytest.mark.parametrize("fault", ["other_weights", "folder_gone"])
def test_a_damaged_parent_is_recomputed_before_its_child(tmp_path, write_grid, cli, clean_child,
                                                         caplog, fault):
    store = tmp_path / "store"
    assert cli("run", "--grid", write_grid(methods=FP32_ONLY), "--store", store,
               "--quiet").exit_code == 0
    parents = _records(store)
    seed0 = store / parents[("fp32", 0)].artifacts
    if fault == "other_weights":
        shutil.copy(store / parents[("fp32", 1)].artifacts / "model.pt", seed0 / "model.pt")
    else:
        shutil.rmtree(seed0)
    with caplog.at_level(logging.WARNING):
        result = cli("run", "--grid", write_grid(methods=WITH_CHILD), "--store", store,
                     "--quiet")
    assert result.exit_code == 0, result.output
    assert "recomputing it" in caplog.text and "model.pt" in caplog.text
    after = _records(store)
    assert after[("ptq", 0)].status == "ok"
    assert np.array_equal(_logits(store, after[("ptq", 0)]), clean_child)
    assert not ResultsStore(store).damaged(after[("fp32", 0)])


def test_a_parent_file_changed_under_the_child_fails_it_naming_the_file(tmp_path, write_grid,
                                                                         cli):
    from bench.config import load_grid
    from bench.runner.cell import load_fp32_model
    from bench.runner.plan import build_plan
    from bench.store.artifacts import ArtifactMismatchError

    store = tmp_path / "store"
    grid = write_grid(methods=WITH_CHILD, seeds=1)
    assert cli("run", "--grid", grid, "--store", store, "--quiet").exit_code == 0
    opened = ResultsStore(store)
    child = next(c for c in build_plan(load_grid(str(grid))).cells if c.config.parent_id)
    parent = opened.get(child.config.parent_id)
    load_fp32_model(opened, child, 3)   # intact: loads
    weights = store / parent.artifacts / "model.pt"
    data = weights.read_bytes()
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(ArtifactMismatchError, match=r"model\.pt: its SHA-256 differs"):
        load_fp32_model(opened, child, 3)
    weights.unlink()
    with pytest.raises(ArtifactMismatchError, match=r"model\.pt: missing"):
        load_fp32_model(opened, child, 3)


# --- ImageFolder: identity by content, a damaged or unwritable cache ----------------------


def _same_size_other_content(path: Path) -> None:
    """Replace ``path``'s bytes with others of the same length, its times put back."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


def test_a_folder_is_identified_by_content_not_size_and_time(tmp_path):
    root = make_folder(tmp_path / "imgs")
    cache = tmp_path / "cache"
    before = folder_source(root, 16, cache)
    _same_size_other_content(root / "a" / "0.png")
    assert folder_source(root, 16, cache) != before
    replacement = tmp_path / "new.png"
    shutil.copy2(root / "b" / "1.png", replacement)
    _same_size_other_content(replacement)
    after = folder_source(root, 16, cache)
    shutil.copy2(replacement, root / "b" / "1.png")   # cp -p of a new release
    assert folder_source(root, 16, cache) != after


def test_an_unchanged_folder_is_not_read_again(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "imgs")
    cache = tmp_path / "cache"
    for path in root.rglob("*.png"):   # older than the racy window: their hashes are kept
        os.utime(path, (time.time() - 60, time.time() - 60))
    first = folder_source(root, 16, cache)
    read = []
    monkeypatch.setattr(filehash, "file_sha256", lambda p: read.append(p) or "0" * 64)
    assert folder_source(root, 16, cache) == first and read == []


def test_a_truncated_decoded_cache_is_rebuilt(tmp_path, caplog):
    root = make_folder(tmp_path / "imgs")
    cache = tmp_path / "cache"
    first = load_folder(root, 16, cache)
    (saved,) = cache.glob("imagefolder-*.pt")
    saved.write_bytes(saved.read_bytes()[:100])
    with caplog.at_level(logging.WARNING):
        again = load_folder(root, 16, cache)
    assert "decoding again" in caplog.text
    assert torch.equal(again.images, first.images) and again.fingerprint == first.fingerprint
    assert load_folder(root, 16, cache).fingerprint == first.fingerprint   # rebuilt file reads


def test_an_unwritable_cache_costs_a_warning_not_the_run(tmp_path, caplog):
    root = make_folder(tmp_path / "imgs")
    (tmp_path / "a-file").write_text("")
    cache = tmp_path / "a-file" / "cache"   # under a file: nothing can be written there
    with caplog.at_level(logging.WARNING):
        images = load_folder(root, 16, cache)
    assert len(images.ids) == 12
    assert "cannot write the decoded-image cache" in caplog.text
    assert "cannot write the file-hash index" in caplog.text


def test_an_image_name_that_is_not_utf8_is_refused_naming_it(tmp_path):
    root = make_folder(tmp_path / "imgs")
    bad = Path(os.fsdecode(os.fsencode(root / "a") + b"/x\xff.png"))
    shutil.copy(root / "a" / "0.png", bad)
    with pytest.raises(DataError, match=r"not valid UTF-8: b'.*x\\xff\.png'"):
        scan_class_folders(root)


# --- grids: bounded before they are expanded, true/false are not numbers ------------------


@pytest.mark.parametrize("change, message", [
    ({"seeds": 300_000_000}, "300,000,000 seeds asked for; at most 10,000"),
    ({"seeds": True}, "not true/false"),
    ({"train": {"epochs": True}}, "train.epochs"),
])
def test_grid_counts_are_bounded_and_strict(write_grid, cli, tmp_path, change, message):
    result = cli("run", "--grid", write_grid(**change), "--store", tmp_path / "s", "--dry-run",
                 "--no-estimate")
    assert result.exit_code == 2 and message in result.output, result.output


def test_seeds_flag_is_bounded_before_the_list_is_built(write_grid, cli, tmp_path):
    result = cli("run", "--grid", write_grid(), "--store", tmp_path / "s", "--seeds",
                 "100000000", "--dry-run", "--no-estimate")
    assert result.exit_code == 2 and "at most 10,000 seeds" in result.output, result.output


@pytest.mark.parametrize("text, message", [
    ("name: deep\nmethods: " + "[" * 1000 + "]" * 1000 + "\n", "nested too deeply"),
    ("# " + "x" * (1 << 20) + "\nname: big\n", "at most 1,048,576 are read"),
])
def test_hostile_grid_files_exit_2_with_a_message(cli, tmp_path, text, message):
    grid = tmp_path / "grid.yaml"
    grid.write_text(text)
    result = cli("run", "--grid", grid, "--store", tmp_path / "s", "--dry-run", "--no-estimate")
    assert result.exit_code == 2 and message in result.output, result.output


# --- stores that cannot be used: exit 2 naming what is wrong -------------------------------


def _ran(cli, write_grid, store: Path):
    return cli("run", "--grid", write_grid(seeds=1), "--store", store, "--quiet")


def test_a_store_that_is_a_file_exits_2(cli, write_grid, tmp_path):
    (tmp_path / "afile").write_text("")
    result = _ran(cli, write_grid, tmp_path / "afile")
    assert result.exit_code == 2 and "is a file, not a store folder" in result.output


@pytest.mark.parametrize("kind", ["folder", "devnull"])
def test_a_database_that_is_no_file_exits_2(cli, write_grid, tmp_path, kind):
    store = tmp_path / "s"
    store.mkdir()
    if kind == "folder":
        (store / "medq.sqlite").mkdir()
    else:
        (store / "medq.sqlite").symlink_to(os.devnull)
    result = _ran(cli, write_grid, store)
    assert result.exit_code == 2, result.output
    assert ("is a folder" if kind == "folder" else "a link to /dev/null") in result.output
    for verb in ("results", "report"):
        assert cli(verb, "--store", store).exit_code == 2


def test_a_store_from_a_newer_version_names_its_revision(cli, write_grid, tmp_path):
    import sqlite3

    store = tmp_path / "s"
    assert _ran(cli, write_grid, store).exit_code == 0
    with sqlite3.connect(store / "medq.sqlite") as con:
        con.execute("UPDATE alembic_version SET version_num = '0099_future'")
    for args in (("results", "--store", store), ("run", "--grid", write_grid(seeds=1),
                                                 "--store", store)):
        result = cli(*args)
        assert result.exit_code == 2, result.output
        assert "schema revision 0099_future" in result.output
        assert "made by medq-bench 0.1.0" in result.output or "newer medq-bench" in result.output


def test_a_lock_that_cannot_be_made_is_a_read_only_store(tmp_path, monkeypatch):
    import errno

    from filelock import FileLock

    from bench.store.peek import exclusive
    from bench.store.sqlite_file import StoreReadOnly

    def refuse(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(FileLock, "acquire", refuse)
    with pytest.raises(StoreReadOnly, match=r"\.run\.lock.*Read-only file system"), \
            exclusive(tmp_path, "run"):
        pass


# --- the cache: never /.cache, and one that cannot be written does not stop a run ----------


def test_an_empty_home_does_not_put_the_cache_at_the_root(monkeypatch):
    import pwd

    from bench.data.base import cache_dir

    monkeypatch.delenv("MEDQ_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", "")
    monkeypatch.setattr("pathlib.Path.mkdir", lambda *a, **k: None)
    home = pwd.getpwuid(os.getuid()).pw_dir
    assert cache_dir() == Path(home) / ".cache" / "medq-bench" != Path("/.cache/medq-bench")


def test_a_cache_under_a_file_costs_warnings_not_the_run(write_grid, cli, tmp_path,
                                                         monkeypatch, caplog):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("MEDQ_CACHE", str(tmp_path / "a-file" / "cache"))
    with caplog.at_level(logging.WARNING):
        result = cli("run", "--grid", write_grid(seeds=1), "--store", tmp_path / "s", "--quiet")
    assert result.exit_code == 0, result.output
    assert "cannot create the cache folder" in caplog.text
    assert "cannot write the split-manifest cache entry" in caplog.text


# --- a full disk: exit 2 naming it, nothing stored as failed, the rerun completes ----------


@pytest.mark.parametrize("where", ["worker", "commit"])
def test_a_full_disk_stops_the_run_naming_it_and_the_rerun_completes(write_grid, cli, tmp_path,
                                                                     monkeypatch, where):
    import errno

    from bench.runner import cell as cell_module

    store = tmp_path / "s"
    grid = write_grid(seeds=2)
    calls = []
    full = OSError(errno.ENOSPC, "No space left on device", str(store / "artifacts" / "x"))
    if where == "worker":
        def write(folder, *args):
            raise full
        monkeypatch.setattr(cell_module, "_write_artifacts", write)
    else:
        commit = ResultsStore.commit

        def commit_once(self, record, staged=None):
            calls.append(record.cell_id)
            if len(calls) == 2:
                raise full
            commit(self, record, staged)
        monkeypatch.setattr(ResultsStore, "commit", commit_once)
    result = cli("run", "--grid", grid, "--store", store, "--quiet")
    assert result.exit_code == 2, result.output
    assert "no space left on the disk holding" in result.output and "MiB free" in result.output
    assert "not stored (not failed)" in result.output
    assert all(r.status == "ok" for r in ResultsStore(store).records())
    monkeypatch.undo()
    again = cli("run", "--grid", grid, "--store", store, "--quiet")
    assert again.exit_code == 0 and "0 failed" in again.output, again.output
    assert len(ResultsStore(store).records()) == 2


def test_a_log_on_a_full_disk_stops_with_one_line(capfd):
    from bench.logs import LogFile

    handler = LogFile("/dev/full")
    logger = logging.getLogger("medq-test-full")
    logger.addHandler(handler)
    try:
        for i in range(3):
            logger.warning("record %d", i)
    finally:
        logger.removeHandler(handler)
        handler.close()
    err = capfd.readouterr().err
    assert "--- Logging error ---" not in err and err.count("no space left to write") == 1


# --- SIGINT and SIGTERM: a message, a log line, the exit code of the signal ----------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_says_how_many_cells_were_committed_and_logs_it(tmp_path, signum):
    from tests.conftest import killable_grid_dict
    from tests.test_resume import ok_count

    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump(killable_grid_dict(seeds=4)))
    store = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", "run", "--grid", str(grid),
                             "--store", str(store), "--quiet"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while (ok_count(store / "medq.sqlite") or 0) < 1 and proc.poll() is None:
        assert time.monotonic() < deadline, "first cell never finished"
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, stderr
    name = signal.Signals(signum).name
    assert f"interrupted ({name}):" in stderr and "cells committed, rerun to resume" in stderr
    assert "Traceback" not in stderr
    (log,) = (store / "logs").glob("run-*.log")
    assert f"interrupted ({name})" in log.read_text()


def test_a_killed_process_executor_run_leaves_no_temporary_folder_for_good(tmp_path):
    from tests.conftest import killable_grid_dict
    from tests.test_resume import ok_count

    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump(killable_grid_dict(seeds=3)))
    store, temp = tmp_path / "store", tmp_path / "tmp"
    temp.mkdir()
    cmd = [sys.executable, "-m", "bench.cli", "run", "--grid", str(grid), "--store", str(store),
           "--quiet", "--executor", "process", "--workers", "1"]
    env = {**os.environ, "TMPDIR": str(temp)}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 300
    while (ok_count(store / "medq.sqlite") or 0) < 1 and proc.poll() is None:
        assert time.monotonic() < deadline, "first cell never finished"
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert not list(temp.glob("pymp-*"))
    assert len(list(temp.glob("medq-mp-*"))) == 1
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert not list(temp.glob("pymp-*")) and not list(temp.glob("medq-mp-*"))
