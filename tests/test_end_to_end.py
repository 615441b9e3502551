"""A tiny grid end to end: run, cache hit, determinism, results formats and the report."""

from __future__ import annotations

import csv
import io
import json

import pytest

FIELDS = ("cell_id", "dataset", "backbone", "method", "w_bits", "a_bits", "seed", "status",
          "accuracy", "macro_f1", "train_seconds")


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    import yaml
    from typer.testing import CliRunner

    from bench.cli import app
    from tests.conftest import tiny_grid_dict
    tmp = tmp_path_factory.mktemp("e2e")
    grid = tmp / "grid.yaml"
    grid.write_text(yaml.safe_dump(tiny_grid_dict()))
    runner = CliRunner()
    first = runner.invoke(app, ["run", "--grid", str(grid), "--store", str(tmp / "s"), "--quiet"])
    second = runner.invoke(app, ["run", "--grid", str(grid), "--store", str(tmp / "s"),
                                 "--quiet"])
    return tmp, grid, first, second


def test_first_run_trains_every_cell(ran):
    _, _, first, _ = ran
    assert first.exit_code == 0, first.output
    assert "2 ran, 0 cached" in first.output


def test_second_run_trains_nothing(ran):
    _, _, _, second = ran
    assert second.exit_code == 0 and "0 ran, 2 cached" in second.output


def test_results_json_and_csv(ran, cli):
    tmp = ran[0]
    rows = json.loads(cli("results", "--store", tmp / "s", "--format", "json").output)
    assert len(rows) == 2 and all(set(FIELDS) <= set(r) for r in rows)
    assert {r["seed"] for r in rows} == {0, 1}
    assert all(r["status"] == "ok" and r["w_bits"] == 32 and r["a_bits"] == 32 for r in rows)
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
    table = list(csv.DictReader(io.StringIO(cli("results", "--store", tmp / "s", "--format",
                                                "csv").output)))
    assert [r["cell_id"] for r in table] == [r["cell_id"] for r in rows]


def test_artifacts_and_provenance(ran):
    from bench.store import ResultsStore

    store = ResultsStore(ran[0] / "s")
    for r in store.records():
        folder = store.artifact_dir(r.cell_id)
        assert {"model.pt", "predictions.npz", "split.json", "metrics.json"} <= {
            p.name for p in folder.iterdir()}
        assert r.provenance["packages"]["torch"] and r.provenance["machine"]["cpu_model"]
        assert len(r.metrics["per_class_recall"]) == 3
        assert len(r.metrics["confusion_matrix"]) == 3
    assert list((ran[0] / "s" / "logs").glob("run-*.log"))


def test_same_config_and_seed_give_identical_metrics(ran, cli):
    tmp, grid = ran[0], ran[1]
    assert cli("run", "--grid", grid, "--store", tmp / "s2", "--quiet").exit_code == 0
    a = json.loads(cli("results", "--store", tmp / "s", "--format", "json").output)
    b = json.loads(cli("results", "--store", tmp / "s2", "--format", "json").output)
    key = ("cell_id", "accuracy", "macro_f1")
    assert [tuple(r[k] for k in key) for r in a] == [tuple(r[k] for k in key) for r in b]


def test_dry_run_shows_cached_cells(ran, cli):
    tmp, grid = ran[0], ran[1]
    result = cli("run", "--grid", grid, "--store", tmp / "s", "--dry-run", "--seeds", "3")
    assert result.exit_code == 0
    assert "2 cached, 1 will run" in result.output


def test_report(ran, cli):
    tmp = ran[0]
    out = tmp / "report.html"
    assert cli("report", "--store", tmp / "s", "--out", out).exit_code == 0
    html = out.read_text()
    assert 'id="results-table"' in html and "fp32" in html
    assert "http://" not in html and "https://" not in html


def test_report_of_empty_store(cli, tmp_path):
    from bench.store import ResultsStore

    ResultsStore(tmp_path / "empty")
    result = cli("report", "--store", tmp_path / "empty", "--out", tmp_path / "r.html")
    assert result.exit_code == 0
    assert "no records yet" in (tmp_path / "r.html").read_text()
