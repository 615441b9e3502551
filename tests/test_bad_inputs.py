"""Every bad input gets exit code 2 with its culprit named, and nothing is written: no store, no
log file, no `-wal`/`-shm` next to a damaged database (issue 18, point 1). One test a case."""

from __future__ import annotations

import os
import sqlite3
import struct
import subprocess
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import create_engine

from bench.data.imagefolder import decode_image
from bench.errors import DataError
from bench.store import ResultsStore, migrate
from bench.store.measurements import save_measurement
from tests.conftest import tiny_grid_dict
from tests.imaging import make_folder, write_image
from tests.server_helpers import batch, cell, measurement


def refused(result: Any, *culprits: str) -> str:
    """The output of a CLI call that must exit with 2 naming every culprit (on one line)."""
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    for culprit in culprits:
        assert " ".join(culprit.split()) in text, f"{culprit!r} not in {text!r}"
    assert "Traceback" not in result.output
    return text


def files(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time."""
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run_grid(cli: Any, grid: Path, store: Path, *extra: Any) -> Any:
    return cli("run", "--grid", grid, "--store", store, "--quiet", *extra)


def grid_file(tmp_path: Path, **changes: Any) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(tiny_grid_dict(**changes)))
    return path


def synthetic(**options: Any) -> list[dict[str, Any]]:
    return [{"name": "synthetic", "image_size": 16,
             "options": {"num_classes": 3, "num_images": 96, **options}}]


# ---------------------------------------------------------------- grid files


def test_a_binary_grid_file_is_named(cli, tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_bytes(bytes(range(256)))
    refused(run_grid(cli, grid, tmp_path / "s"), str(grid), "not UTF-8 text", "binary file")
    assert not (tmp_path / "s").exists()


def test_a_utf16_grid_file_is_named(cli, tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_bytes(yaml.safe_dump(tiny_grid_dict()).encode("utf-16"))
    refused(run_grid(cli, grid, tmp_path / "s"), str(grid), "UTF-16", "save it as UTF-8")
    assert not (tmp_path / "s").exists()


def test_a_duplicate_key_is_refused_with_both_lines(cli, tmp_path):
    grid = tmp_path / "grid.yaml"
    text = yaml.safe_dump(tiny_grid_dict(seeds=1), sort_keys=False)
    grid.write_text(text + "seeds: 2\n")
    first = text.splitlines().index("seeds: 1") + 1
    refused(run_grid(cli, grid, tmp_path / "s"), str(grid), "duplicate key 'seeds' at line "
            f"{len(text.splitlines()) + 1} (first at line {first})")
    nested = tmp_path / "nested.yaml"
    nested.write_text(text.replace("epochs: 1\n", "epochs: 1\n  epochs: 3\n", 1))
    refused(run_grid(cli, nested, tmp_path / "s"), "duplicate key 'epochs'")
    assert not (tmp_path / "s").exists()


# ---------------------------------------------------------------- data sets


def test_synthetic_num_classes_is_validated(cli, tmp_path):
    for bad in (0, 1):
        grid = grid_file(tmp_path, datasets=synthetic(num_classes=bad))
        refused(run_grid(cli, grid, tmp_path / "s"), "data set 'synthetic'",
                "options.num_classes", "greater than or equal to 2")
    typo = grid_file(tmp_path, datasets=synthetic(num_image=5))
    refused(run_grid(cli, typo, tmp_path / "s"), "options.num_image", "Extra inputs")
    assert not (tmp_path / "s").exists()


def test_a_size_beyond_the_machines_memory_is_refused_before_allocating(cli, tmp_path):
    grid = grid_file(tmp_path, datasets=synthetic(num_images=1_000_000_000_000))
    text = refused(run_grid(cli, grid, tmp_path / "s"), "options.num_images = 1000000000000",
                   "at image_size 16 needs about", "PiB of memory", "of RAM")
    assert "MemoryError" not in text
    assert not (tmp_path / "s").exists()


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header says ``width`` x ``height`` (grey) with a token of pixel data: what a
    decompression bomb looks like to a reader that trusts the header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(bytes(1 << 16))) + chunk(b"IEND", b""))
    return path


def test_a_decompression_bomb_is_named_with_its_pixel_count(cli, tmp_path):
    root = make_folder(tmp_path / "d")
    bomb = png_header(root / "a" / "bomb.png", 30000, 30000)
    result = cli("run", "--dataset", "imagefolder", "--data-root", root, "--store",
                 tmp_path / "s", "--quiet")
    refused(result, str(bomb), "30000 x 30000 = 900,000,000 pixels", "limit of 89,478,485",
            "options.max_image_pixels")
    assert not (tmp_path / "s").exists()


def test_the_pixel_limit_is_an_option_of_the_grid(cli, tmp_path):
    root = make_folder(tmp_path / "d")
    grid = grid_file(tmp_path, datasets=[{"name": "imagefolder", "root": str(root),
                                          "image_size": 16,
                                          "options": {"max_image_pixels": 399}}])
    refused(run_grid(cli, grid, tmp_path / "s"), "20 x 20 = 400 pixels", "limit of 399")
    bomb = png_header(tmp_path / "bomb.png", 30000, 30000)
    with pytest.raises(DataError, match="cannot read image"):
        decode_image(bomb, 16, max_pixels=10**9)  # past the pixel check: decoding fails


# ---------------------------------------------------------------- damaged stores


def damage(store: Path, how: str) -> Path:
    ResultsStore(store).engine.dispose()
    db = store / "medq.sqlite"
    data = db.read_bytes()
    db.write_bytes(data[:len(data) // 2] if how == "truncated" else b"garbage!" * 1000)
    return db


VERBS = {
    "results": lambda s, tmp: ("results", "--store", s),
    "report": lambda s, tmp: ("report", "--store", s, "--out", tmp / "r.html"),
    "export": lambda s, tmp: ("export", "--store", s, "--out", tmp / "b.tar.gz"),
    "compare": lambda s, tmp: ("compare", "--store", s, "--devices", "a,b"),
    "measure": lambda s, tmp: ("measure", "--profile", "host", "--store", s),
    "run": lambda s, tmp: ("run", "--grid", grid_file(tmp), "--store", s, "--quiet"),
}


@pytest.mark.parametrize("how", ["truncated", "garbage"])
@pytest.mark.parametrize("verb", sorted(VERBS))
def test_a_damaged_database_is_named_and_left_untouched(cli, tmp_path, how, verb):
    store = tmp_path / "s"
    db = damage(store, how)
    before = files(store)
    text = refused(cli(*VERBS[verb](store, tmp_path)), f"the store's database {db} is damaged",
                   "nothing was written to it", "bench import BUNDLE --store NEW_DIR")
    assert ("truncated" if how == "truncated" else "not an SQLite database") in text
    assert files(store) == before
    assert not list(store.glob("*-wal")) and not list(store.glob("*-shm"))
    assert not any((store / "logs").iterdir())


def test_import_into_a_damaged_store_is_refused(cli, tmp_path):
    source = ResultsStore(tmp_path / "src")
    source.ingest(batch([cell("c1")]))
    assert cli("export", "--store", source.root, "--out", tmp_path / "b.tar.gz").exit_code == 0
    db = damage(tmp_path / "s", "garbage")
    before = files(tmp_path / "s")
    refused(cli("import", tmp_path / "b.tar.gz", "--store", tmp_path / "s"), str(db),
            "is damaged")
    assert files(tmp_path / "s") == before


# ---------------------------------------------------------------- read-only stores


@contextmanager
def read_only(root: Path) -> Iterator[Path]:
    """``root`` as this process sees a read-only file system: as root (who writes anything
    regardless of modes) a read-only bind mount of it (EROFS, skipped where mounting is not
    allowed), else the folder itself made read-only."""
    if os.geteuid() != 0:
        paths = [root, *root.rglob("*")]
        for path in paths:
            path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield root
        finally:
            for path in paths:
                path.chmod(0o755 if path.is_dir() else 0o644)
        return
    view = root.with_name(root.name + "-ro")
    view.mkdir()
    mounted = subprocess.run(["mount", "--bind", str(root), str(view)], capture_output=True,
                             check=False).returncode == 0
    if mounted and subprocess.run(["mount", "-o", "remount,bind,ro", str(view)],
                                  capture_output=True, check=False).returncode == 0:
        try:
            yield view
        finally:  # lazily: engines of the stores opened in this process may hold the file
            subprocess.run(["umount", "--lazy", str(view)], check=True)
        return
    if mounted:
        subprocess.run(["umount", str(view)], check=True)
    pytest.skip("a read-only bind mount is not allowed here (and root writes anything)")


def filled_store(root: Path) -> ResultsStore:
    store = ResultsStore(root)
    store.ingest(batch([cell("c1", device="lab"), cell("c2", method="ptq", bits=8,
                                                       device="lab")],
                       [measurement("c1", device="lab"), measurement("c1", device="pi")]))
    store.engine.dispose()
    return store


def test_reading_verbs_work_on_a_read_only_store(cli, tmp_path):
    filled_store(tmp_path / "s")
    with read_only(tmp_path / "s") as store:
        before = files(store)
        for args in (("results", "--format", "json"), ("report", "--out", tmp_path / "r.html"),
                     ("export", "--out", tmp_path / "b.tar.gz"),
                     ("compare", "--devices", "lab,pi")):
            done = cli(args[0], "--store", store, *args[1:])
            assert done.exit_code == 0, (args, done.output)
        assert (tmp_path / "r.html").is_file() and (tmp_path / "b.tar.gz").is_file()
        assert files(store) == before
        refused(run_grid(cli, grid_file(tmp_path), store), f"the store {store} is read-only")
        assert files(store) == before


def store_at_revision(root: Path, revision: str) -> Path:
    """A store whose database has the schema of ``revision``, with one cell."""
    root.mkdir(parents=True)
    engine = create_engine(f"sqlite:///{root / 'medq.sqlite'}")
    with engine.begin() as connection:
        from alembic import command
        from alembic.config import Config
        config = Config()
        config.set_main_option("script_location", str(migrate.MIGRATIONS))
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
    engine.dispose()
    return root


def test_an_old_schema_on_a_read_only_store_is_a_clear_refusal(cli, tmp_path):
    store_at_revision(tmp_path / "s", "0003")
    with read_only(tmp_path / "s") as store:
        before = files(store)
        refused(cli("results", "--store", store), f"the store {store} is read-only",
                "schema revision 0003, older than this medq-bench's")
        assert files(store) == before


def test_a_writable_old_store_is_upgraded_by_a_reading_verb(cli, tmp_path):
    store = store_at_revision(tmp_path / "s", "0003")
    assert cli("results", "--store", store).exit_code == 0
    assert migrate.current(ResultsStore(store, readonly=True).engine) == migrate.head()


def test_a_current_store_is_read_without_a_migration_lock(tmp_path):
    filled_store(tmp_path / "s")
    (tmp_path / "s" / ".migrate.lock").unlink()
    assert len(ResultsStore(tmp_path / "s", readonly=True).records()) == 2
    assert not (tmp_path / "s" / ".migrate.lock").exists()


# ---------------------------------------------------------------- hardware profiles


@pytest.mark.parametrize(("line", "key"), [("memory_limit_mb = 99999999999999",
                                            "memory_limit_mb = 99999999999999"),
                                           ("cpu_quota = 100000.0", "cpu_quota = 100000")])
def test_a_profile_limit_beyond_the_machine_names_its_key(cli, tmp_path, line, key):
    profile = tmp_path / "absurd.toml"
    profile.write_text(f'description = "absurd"\n{line}\n')
    store = ResultsStore(tmp_path / "s")
    save_measurement(store.engine, measurement("c1").to_row())
    store.engine.dispose()
    before = files(store.root)
    text = refused(cli("measure", "--profile", profile, "--store", store.root),
                   "profile 'absurd'", key)
    assert "preexec_fn" not in text and "this machine's" in text
    assert files(store.root) == before


# ---------------------------------------------------------------- weak answers


@pytest.mark.parametrize(("changes", "culprits"), [
    ({"train": {"epochs": 0}}, ("train.epochs", "greater than or equal to 1")),
    ({"methods": [{"name": "ptq", "bits": []}]}, ("methods.0.bits", "at least 1 item")),
    ({"train": {"lr": float("inf")}}, ("train.lr", "finite number")),
    ({"datasets": [{"name": "synthetic", "split": {"val": 0.5, "test": 0.5}}]},
     ("datasets.0.split", "split.val + split.test = 0.5 + 0.5 = 1 leaves no image to train")),
], ids=["epochs-0", "bits-empty", "lr-inf", "val-plus-test"])
def test_weak_settings_are_refused_at_validation(cli, tmp_path, changes, culprits):
    refused(run_grid(cli, grid_file(tmp_path, **changes), tmp_path / "s"), *culprits)
    assert not (tmp_path / "s").exists()


def test_epochs_flag_refuses_zero(cli, tmp_path):
    assert run_grid(cli, grid_file(tmp_path), tmp_path / "s", "--epochs", "0").exit_code == 2


def test_a_class_with_one_image_names_its_folder(cli, tmp_path):
    root = make_folder(tmp_path / "d")
    write_image(root / "lonely" / "only.png")
    result = cli("run", "--dataset", "imagefolder", "--data-root", root, "--store",
                 tmp_path / "s", "--quiet")
    refused(result, f"class folder {root / 'lonely'} has only 1 image")
    assert not (tmp_path / "s").exists()


def test_a_split_too_small_for_the_classes_names_the_key(cli, tmp_path):
    datasets = [{**synthetic(num_images=12)[0], "split": {"val": 0.1, "test": 0.1}}]
    grid = grid_file(tmp_path, datasets=datasets)
    refused(run_grid(cli, grid, tmp_path / "s"), "split.test = 0.1 of 12 images gives 2 test "
            "images, fewer than the 3 classes")


def test_a_data_set_with_one_class_is_refused(cli, tmp_path):
    root = make_folder(tmp_path / "d", classes=("only",))
    result = cli("run", "--dataset", "imagefolder", "--data-root", root, "--store",
                 tmp_path / "s", "--quiet")
    refused(result, f"only one class folder (only) in {root}", "nothing to classify")
    assert not (tmp_path / "s").exists()


def test_sqlite_damage_check_reads_only(tmp_path):
    """The check itself: a healthy store passes, and checking writes nothing beside the file."""
    from bench.store.sqlite_file import check_database

    filled_store(tmp_path / "s")
    before = files(tmp_path / "s")
    check_database(tmp_path / "s" / "medq.sqlite")
    assert files(tmp_path / "s") == before
    with sqlite3.connect(tmp_path / "s" / "medq.sqlite") as con:
        assert con.execute("PRAGMA quick_check").fetchone() == ("ok",)
