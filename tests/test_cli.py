"""Exit codes and output formats of the CLI."""

from __future__ import annotations

import json

from bench.cli import app  # noqa: F401  (imported for the CLI fixture)


def test_unknown_grid_exits_2(cli, tmp_path):
    result = cli("run", "--grid", "nope", "--store", tmp_path / "s")
    assert result.exit_code == 2 and "smoke" in result.output


def test_bad_yaml_reports_line_and_column(cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmethods:\n  - name: fp32\n  bits: [[8, 8]\n")
    result = cli("run", "--grid", bad, "--store", tmp_path / "s")
    assert result.exit_code == 2
    assert "line 4" in result.output and "column" in result.output


def test_unknown_method_lists_valid_ones(cli, write_grid, tmp_path):
    result = cli("run", "--grid", write_grid(methods=[{"name": "magic"}]), "--store",
                 tmp_path / "s")
    assert result.exit_code == 2 and "fp32" in result.output and "magic" in result.output


def test_unknown_key_is_a_config_error(cli, write_grid, tmp_path):
    result = cli("run", "--grid", write_grid(epochz=3), "--store", tmp_path / "s")
    assert result.exit_code == 2 and "epochz" in result.output


def test_bad_flag_value_exits_2(cli, tmp_path):
    assert cli("run", "--device", "tpu", "--store", tmp_path / "s").exit_code == 2
    assert cli("run", "--seeds", "0", "--store", tmp_path / "s").exit_code == 2


def test_filter_to_method_not_in_grid(cli, write_grid, tmp_path):
    result = cli("run", "--grid", write_grid(), "--method", "fp32", "--backbone", "resnet18",
                 "--store", tmp_path / "s")
    assert result.exit_code == 2 and "not in grid" in result.output


def test_results_without_store_exits_2(cli, tmp_path):
    assert cli("results", "--store", tmp_path / "none").exit_code == 2


def test_listings(cli):
    assert "synthetic" in cli("datasets").output and "kvasir" in cli("datasets").output
    assert "resnet18" in cli("backbones").output
    assert "fp32" in cli("methods").output


def test_failed_cell_exits_1_and_is_stored(cli, write_grid, tmp_path, monkeypatch):
    import methods.fp32

    def explode(self, model, ctx, params):
        raise RuntimeError("deliberate failure")

    monkeypatch.setattr(methods.fp32.FP32, "prepare", explode)
    store = tmp_path / "s"
    result = cli("run", "--grid", write_grid(seeds=1), "--store", store, "--quiet")
    assert result.exit_code == 1
    rows = json.loads(cli("results", "--store", store, "--format", "json").output)
    assert rows[0]["status"] == "failed" and "deliberate failure" in rows[0]["error"]


def test_busy_store_exits_2(cli, write_grid, tmp_path):
    from bench.store import ResultsStore

    store = ResultsStore(tmp_path / "s")
    with store.exclusive("run"):
        result = cli("run", "--grid", write_grid(seeds=1), "--store", tmp_path / "s", "--quiet")
    assert result.exit_code == 2 and "another bench run" in result.output
