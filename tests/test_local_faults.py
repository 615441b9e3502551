"""Local faults give a message, never a silent wrong result: a parent whose stored files differ
from its record (or are gone) is recomputed before its children, a file that changes under a
cell fails it naming the file."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from bench.store import ResultsStore

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
    from bench.store.database import ArtifactMismatchError

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
