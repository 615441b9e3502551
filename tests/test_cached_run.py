"""A run with nothing to do, and a dry run, plan without the training stack: method, backbone and
stage declarations import without torch, split manifests come from their cache, the store is
read with the standard library. The manifest cache follows the data and never changes a cell id.
(Timing targets are in tests/benchmarks/test_bench_cached_run.py.)"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from bench.cli import app
from bench.config import DataConfig, GridConfig
from bench.data import DATASETS, plan_data, prepare
from bench.data.manifests import entry_path, source_fingerprint, write_summary
from bench.errors import DataError
from bench.runner.plan import build_plan, confirm_data
from bench.runner.stages import STAGES, load_stages
from bench.store import ResultsStore
from bench.store.migrate import head
from bench.store.peek import DB_NAME, peek_done_ids, schema_head
from tests.conftest import tiny_grid_dict
from tests.device_venv import ROOT
from tests.imaging import make_folder, write_image
from tests.test_kvasir import kvasir_cfg, make_archive, sha

TRAINING_STACK = ("torch", "torchvision", "brevitas", "sklearn")
STORE_STACK = ("sqlalchemy", "alembic")   # the store's ORM: a peek reads its SQLite file
HEAVY = TRAINING_STACK + STORE_STACK

# Runs `bench ARGS` and reports, on its last stderr line, which training-stack or ORM packages
# were imported and from which lines of medq-bench (the innermost three), so that a failure
# names the import to move into a function.
TRACED_CLI = f"""
import atexit, json, sys, traceback
first = {{}}
class Tracer:
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in {HEAVY!r} and top not in first:
            stack = traceback.extract_stack()
            first[top] = [f"{{f.filename}}:{{f.lineno}} {{f.line}}" for f in stack
                          if "/bench/" in f.filename or "/methods/" in f.filename][-3:]
        return None
sys.meta_path.insert(0, Tracer())
atexit.register(lambda: sys.stderr.write("\\nIMPORTED " + json.dumps(first) + "\\n"))
from bench.cli import app
app(sys.argv[1:], prog_name="bench")
"""


def traced_bench(*args: object, env: dict[str, str] | None = None
                 ) -> tuple[subprocess.CompletedProcess[str], dict[str, list[str]]]:
    proc = subprocess.run([sys.executable, "-c", TRACED_CLI, *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, **(env or {})})
    line = next(ln for ln in reversed(proc.stderr.splitlines()) if ln.startswith("IMPORTED "))
    return proc, json.loads(line.removeprefix("IMPORTED "))


GRID = tiny_grid_dict(
    seeds=1, methods=[{"name": "fp32"}, {"name": "ptq", "bits": [[8, 8]]}, {"name": "sgt"}],
    stages={"deploy": {}, "saliency": {"methods": ["gradient"], "n_samples": 4,
                                       "sensitivity_samples": 1, "deletion_steps": 2, "overlays": 0,
                                       "threads": 1}})


@pytest.fixture(scope="module")
def cached_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A grid (fp32, ptq, sgt with deploy and saliency stages) run once into a store."""
    folder = tmp_path_factory.mktemp("cached")
    grid, store = folder / "grid.yaml", folder / "store"
    grid.write_text(yaml.safe_dump(GRID))
    result = CliRunner().invoke(app, ["run", "--grid", str(grid), "--store", str(store),
                                      "--quiet", "--device", "cpu"], catch_exceptions=False)
    assert result.exit_code == 0 and "3 ran, 0 cached" in result.output, result.output
    return grid, store


def test_a_fully_cached_run_imports_no_training_stack(cached_store):
    grid, store = cached_store
    proc, imported = traced_bench("run", "--grid", grid, "--store", store, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "0 ran, 3 cached, 0 failed, 0 skipped" in proc.stdout
    assert imported == {}, f"a run with nothing to do imported the training stack: {imported}"
    logs = sorted((store / "logs").glob("run-*.log"))
    assert "nothing to run" in logs[-1].read_text()


def test_a_dry_run_of_a_cached_store_imports_no_training_stack(cached_store):
    grid, store = cached_store
    proc, imported = traced_bench("run", "--grid", grid, "--store", store, "--dry-run",
                                  "--no-estimate")
    assert proc.returncode == 0, proc.stderr
    assert "3 cells: 3 cached, 0 will run" in proc.stdout
    assert imported == {}, imported


def test_a_dry_run_of_a_cached_store_has_nothing_to_estimate(cached_store):
    """The estimate is on by default; with every cell cached it times nothing, so it loads
    nothing either."""
    grid, store = cached_store
    proc, imported = traced_bench("run", "--grid", grid, "--store", store, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "every cell is cached, nothing to time" in proc.stdout
    assert imported == {}, imported


def test_a_cached_run_still_runs_what_is_missing(cached_store, tmp_path):
    """The quick path answers only when every cell is done: a new seed runs."""
    grid, store = cached_store
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    result = CliRunner().invoke(app, ["run", "--grid", str(grid), "--store", str(copy),
                                      "--quiet", "--seeds", "2", "--method", "fp32"],
                                catch_exceptions=False)
    assert result.exit_code == 0 and "1 ran, 1 cached" in result.output, result.output


def test_paper_dry_run_without_kvasir_plans_without_torch_or_download(tmp_path):
    cache = tmp_path / "empty-cache"
    proc, imported = traced_bench("run", "--grid", "paper", "--dry-run", "--no-estimate",
                                  "--store", tmp_path / "s", env={"MEDQ_CACHE": str(cache)})
    assert proc.returncode == 0, proc.stderr
    assert "data set 'kvasir' is not available here" in proc.stdout
    assert "Kvasir is not downloaded yet" in proc.stdout
    assert " will run" in proc.stdout and "0 cached" in proc.stdout
    assert imported == {}, imported
    assert not list(cache.rglob("*.part")) and not (tmp_path / "s").exists()


def test_the_store_is_peeked_without_writing_and_only_at_this_schema(cached_store, tmp_path):
    _, store = cached_store
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    connection = sqlite3.connect(copy / DB_NAME)   # the last connection: WAL folded back
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()
    assert not list(copy.glob(f"{DB_NAME}-*"))
    before = sorted(p.name for p in copy.iterdir())
    done = peek_done_ids(copy)
    assert done == ResultsStore(store, readonly=True).done_ids() and len(done) == 3
    assert sorted(p.name for p in copy.iterdir()) == before
    assert schema_head() == head()
    connection = sqlite3.connect(copy / DB_NAME)
    with connection:
        connection.execute("UPDATE alembic_version SET version_num = '0001'")
    connection.close()
    assert peek_done_ids(copy) is None           # an older schema: the store must be opened
    assert peek_done_ids(tmp_path / "nowhere") is None


def test_stages_are_declared_without_their_implementation():
    load_stages()
    from bench.saliency.methods import SALIENCY_METHODS

    assert {"deploy", "saliency"} <= set(STAGES)
    for stage in STAGES.values():
        assert callable(stage.run), stage.runs
    assert {"gradient", "integrated_gradients", "smoothgrad", "gradcam"} <= set(SALIENCY_METHODS)
    for method in SALIENCY_METHODS.values():
        assert callable(method.function), method.runs


# Imports the registries a plan reads (every method file, backbone, data set and stage
# declaration) and prints, for each heavy package requested, the medq-bench lines asking for it.
DECLARATIONS_CHECK = f"""
import json, sys, traceback
culprits = {{}}
class Tracer:
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in {HEAVY!r} and top not in culprits:
            culprits[top] = [f"{{f.filename}}:{{f.lineno}} {{f.line}}"
                             for f in traceback.extract_stack()
                             if "/bench/" in f.filename or "/methods/" in f.filename][-3:]
        return None
sys.meta_path.insert(0, Tracer())
import methods, bench.models, bench.data
from bench.runner.stages import load_stages
load_stages()
print(json.dumps(culprits))
"""


def test_every_method_backbone_data_set_and_stage_declares_itself_without_the_stack():
    """A method file (e.g. a new one) that imports torch, Brevitas or bench.quant at its top
    is named here: import them inside the hooks that use them (methods/base.py)."""
    proc = subprocess.run([sys.executable, "-c", DECLARATIONS_CHECK], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == {}


# ------------------------------------------------------------------ the split-manifest cache


def folder_cfg(root: Path) -> DataConfig:
    return DataConfig(name="imagefolder", root=str(root), image_size=16,
                      split={"val": 0.25, "test": 0.25})


def no_decoding(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    def refuse(*_: object) -> None:
        raise AssertionError(f"data set '{name}' was decoded")
    monkeypatch.setitem(DATASETS, name, dataclasses.replace(DATASETS[name], load=refuse))


def test_an_unchanged_folder_is_planned_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDQ_CACHE", str(tmp_path / "cache"))
    cfg = folder_cfg(make_folder(tmp_path / "images", per_class=4))
    fresh = plan_data(cfg)
    assert fresh.loaded and entry_path(cfg, source_fingerprint(cfg)).is_file()
    no_decoding(monkeypatch, "imagefolder")
    cached = plan_data(cfg)
    assert not cached.loaded and cached.summary == fresh.summary
    assert (cached.num_images, cached.num_classes) == (8, 2)
    assert (cached.summary.n_train, cached.summary.n_val, cached.summary.n_test) == (4, 2, 2)


def test_a_changed_image_invalidates_the_folder_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDQ_CACHE", str(tmp_path / "cache"))
    root = make_folder(tmp_path / "images", per_class=4)
    cfg = folder_cfg(root)
    first = plan_data(cfg).manifest_hash
    image = root / "a" / "0.png"
    write_image(image, seed=999)
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    again = plan_data(cfg)
    assert again.loaded, "a changed image must be decoded again, not planned from the cache"
    assert again.manifest_hash != first
    assert again.manifest_hash == prepare(cfg).split.manifest_hash


def grid_of(root: Path) -> GridConfig:
    return GridConfig.model_validate({
        **tiny_grid_dict(methods=[{"name": "fp32"}, {"name": "qat", "bits": [[4, 4]]}]),
        "datasets": [{"name": "synthetic", "image_size": 16,
                      "options": {"num_classes": 3, "num_images": 48}},
                     folder_cfg(root).model_dump()]})


def test_cached_manifests_give_the_cell_ids_of_a_fresh_preparation(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "images", per_class=4)
    monkeypatch.setenv("MEDQ_CACHE", str(tmp_path / "fresh"))
    fresh = [c.cell_id for c in build_plan(grid_of(root)).cells]
    monkeypatch.setenv("MEDQ_CACHE", str(tmp_path / "cache"))
    build_plan(grid_of(root))
    no_decoding(monkeypatch, "imagefolder")
    no_decoding(monkeypatch, "synthetic")
    plan = build_plan(grid_of(root))
    assert [c.cell_id for c in plan.cells] == fresh and len(fresh) == 8
    assert not any(d.loaded for d in plan.data.values())


def test_a_stale_entry_is_caught_before_any_cell_runs(tmp_path, monkeypatch):
    """An entry that lies (here: written by hand) gives provisional ids; confirming the data
    for the cells to run prepares it and plans again with the true ids."""
    root = make_folder(tmp_path / "images", per_class=4)
    monkeypatch.setenv("MEDQ_CACHE", str(tmp_path / "cache"))
    true_ids = [c.cell_id for c in build_plan(grid_of(root)).cells]
    cfg = folder_cfg(root)
    true = plan_data(cfg).summary
    write_summary(cfg, source_fingerprint(cfg), dataclasses.replace(true, manifest_hash="0" * 16))
    stale = build_plan(grid_of(root))
    assert [c.cell_id for c in stale.cells] != true_ids
    assert confirm_data(stale, done={c.cell_id for c in stale.cells}) is stale
    confirmed = confirm_data(stale, done=set())
    assert [c.cell_id for c in confirmed.cells] == true_ids


def test_kvasir_archive_is_planned_from_the_cache_until_it_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDQ_CACHE", str(tmp_path / "cache"))
    archive = make_archive(tmp_path)
    cfg = kvasir_cfg(root=str(archive), sha=sha(archive))
    with pytest.raises(DataError, match="not downloaded yet"):
        source_fingerprint(kvasir_cfg())
    assert source_fingerprint(cfg) is None          # not extracted yet: prepare to know
    first = plan_data(cfg)
    assert first.loaded and first.num_classes == 8
    cached = plan_data(cfg)
    assert not cached.loaded and cached.manifest_hash == first.manifest_hash
    os.utime(archive, ns=(archive.stat().st_atime_ns, archive.stat().st_mtime_ns + 10**9))
    assert plan_data(cfg).loaded


def test_the_stored_cells_pass_the_gpu_checks_cpu_half(cached_store):
    """The device the run was asked for reaches every record, and scripts/gpu_check.py finds
    the deploy and saliency results of a real store."""
    from tests.test_gpu_path import gpu_check

    _, store = cached_store
    cells = gpu_check.read_cells(store)
    assert len(cells) == 3 and gpu_check.check(cells, "cpu") == []
    assert gpu_check.check(cells, "cuda") != []


# Imports every submodule of PACKAGE first, then checks each exported name against its module.
LAZY_EXPORTS_CHECK = """
import importlib, pkgutil, sys
package = importlib.import_module(sys.argv[1])
def sub(name):
    return importlib.import_module(package.__name__ + "." + name)
for module in pkgutil.iter_modules(package.__path__):
    sub(module.name)
wrong = [n for n, m in package._EXPORTS.items() if getattr(package, n) is not getattr(sub(m), n)]
assert not wrong, wrong
"""


@pytest.mark.parametrize("package", ["bench.deploy", "bench.saliency"])
def test_a_lazy_packages_names_are_its_modules_objects_in_any_import_order(package):
    """Each name a lazy package exports is its module's object, also when every submodule was
    imported first (a submodule of the same name must not shadow the function)."""
    proc = subprocess.run([sys.executable, "-c", LAZY_EXPORTS_CHECK, package], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
