"""The deploy stage on real tiny cells: FP32, PTQ W8A8 and PTQ W4A4 trained by `bench run`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench.deploy.runtime import session_config, u8s8_saturates
from bench.deploy.stage import (
    DEPLOYED_PREDICTIONS,
    LOW_AGREEMENT,
    NO_INTEGER_KERNELS,
    ONNX_FILE,
    PACKED_FILE,
    PARTIALLY_INTEGER,
    container_note,
    deploy_flags,
)

GRID = {"methods": [{"name": "fp32"}, {"name": "ptq", "bits": [[8, 8], [4, 4]]}], "seeds": 1,
        "stages": {"deploy": {}}}


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """`bench run` of a tiny grid with the deploy stage: {(method, w_bits): (row, record)}."""
    import yaml
    from typer.testing import CliRunner

    from bench.cli import app
    from bench.store import ResultsStore
    from tests.conftest import tiny_grid_dict

    tmp = tmp_path_factory.mktemp("deploy")
    (tmp / "grid.yaml").write_text(yaml.safe_dump(tiny_grid_dict(**GRID)))
    runner = CliRunner()
    ran = runner.invoke(app, ["run", "--grid", str(tmp / "grid.yaml"), "--store",
                              str(tmp / "s"), "--quiet"], catch_exceptions=False)
    assert ran.exit_code == 0, ran.output
    rows = json.loads(runner.invoke(app, ["results", "--store", str(tmp / "s"), "--format",
                                          "json"]).output)
    store = ResultsStore(tmp / "s")
    return store, {(r["method"], r["w_bits"]): (r, store.get(r["cell_id"])) for r in rows}


def test_every_cell_reports_the_deploy_columns(deployed):
    _, cells = deployed
    assert set(cells) == {("fp32", 32), ("ptq", 8), ("ptq", 4)}
    for row, _ in cells.values():
        assert row["status"] == "ok"
        for column in ("size_bytes", "shipped_size_bytes", "packed_size_bytes", "int_kernels",
                       "int_coverage", "deployed_accuracy", "agreement", "params", "macs"):
            assert row[column] is not None and row[column] >= 0, column
        assert row["agreement"] >= 0.99 and row["deploy_flags"] == ""


def test_int_model_runs_integer_kernels_and_fp32_none(deployed):
    _, cells = deployed
    assert cells["fp32", 32][0]["int_kernels"] == 0
    assert cells["fp32", 32][0]["int_coverage"] == cells["fp32", 32][0]["int_coverage_macs"] == 0.0
    assert set(cells["fp32", 32][1].metrics["deploy"]["float_nodes"]) >= {"FusedConv", "Gemm"}
    for bits in (8, 4):
        row, record = cells["ptq", bits]
        assert row["int_kernels"] > 0 and row["int_coverage"] == row["int_coverage_macs"] == 1.0
        assert record.metrics["deploy"]["integer_model"] is True
        assert record.metrics["deploy"]["float_nodes"] == {}
    assert cells["fp32", 32][1].metrics["deploy"]["integer_model"] is False


def test_deployed_predictions_are_stored_listed_and_shipped_file_named(deployed):
    """ONNX Runtime's per-sample test outputs sit beside the torch ones, with the same keys;
    they are a hashed artifact (exported with `--artifacts all`), not a file a device pulls."""
    store, cells = deployed
    for (method, _), (row, record) in cells.items():
        folder = store.artifact_dir(record.cell_id)
        deploy = record.metrics["deploy"]
        assert deploy["deployed_predictions"] == DEPLOYED_PREDICTIONS
        assert DEPLOYED_PREDICTIONS in record.artifact_hashes
        with np.load(folder / DEPLOYED_PREDICTIONS) as ort_out, \
                np.load(folder / "predictions.npz") as torch_out:
            assert set(ort_out.files) == set(torch_out.files)
            np.testing.assert_array_equal(ort_out["index"], torch_out["index"])
            np.testing.assert_array_equal(ort_out["predictions"], ort_out["logits"].argmax(1))
            accuracy = (ort_out["predictions"] == ort_out["labels"]).mean()
            assert row["deployed_accuracy"] == pytest.approx(accuracy)
            agreement = (ort_out["predictions"] == torch_out["predictions"]).mean()
            assert row["agreement"] == pytest.approx(agreement)
        assert deploy["shipped_file"] == ONNX_FILE
        assert row["shipped_size_bytes"] == (folder / ONNX_FILE).stat().st_size
        assert deploy["kernel_policy"] == "exact"
        assert deploy["u8s8_saturates"] is u8s8_saturates()
        assert deploy["session_config"] == session_config("exact")
        if method != "fp32":
            assert deploy["int4_weights_integer"] is False
        if method != "fp32" and deploy["u8s8_saturates"]:
            # The accuracy cost of fast (saturating) kernels on this CPU is recorded beside.
            assert 0.0 <= deploy["fast_kernels_agreement"] <= 1.0
            assert deploy["fast_kernels_max_abs_logit_diff"] >= 0.0
        else:
            assert "fast_kernels_agreement" not in deploy


def test_results_table_shows_integer_coverage(deployed, cli):
    """`bench results` shows int_coverage beside int_kernels once a cell has it."""
    store, _ = deployed
    lines = cli("results", "--store", store.root).output.splitlines()
    header = next(line for line in lines if "int_coverage" in line).split("\u2503")
    column = next(i for i, name in enumerate(header) if name.strip() == "int_coverage")
    ptq4 = next(line.split("\u2502") for line in lines if " ptq " in line and " 4 " in line)
    assert ptq4[column].strip() == "1.0000"


def test_fp32_deployed_logits_match_torch(deployed):
    """ONNX Runtime sees the images normalised exactly as the harness does."""
    _, cells = deployed
    row, record = cells["fp32", 32]
    assert record.metrics["deploy"]["max_abs_logit_diff"] < 1e-3
    assert row["deployed_accuracy"] == pytest.approx(row["accuracy"])


def test_whole_test_split_is_evaluated(deployed):
    store, cells = deployed
    for _, record in cells.values():
        with np.load(store.artifact_dir(record.cell_id) / "predictions.npz") as predictions:
            assert record.metrics["deploy"]["n_test"] == len(predictions["labels"])


def test_artifacts_and_packed_size(deployed):
    store, cells = deployed
    for (method, _), (row, record) in cells.items():
        folder = store.artifact_dir(record.cell_id)
        assert row["size_bytes"] == (folder / ONNX_FILE).stat().st_size
        if method == "fp32":
            assert not (folder / PACKED_FILE).exists()
            assert row["packed_size_bytes"] == 4 * row["params"]
        else:
            assert row["packed_size_bytes"] == (folder / PACKED_FILE).stat().st_size
    w4, w8 = cells["ptq", 4][0], cells["ptq", 8][0]
    assert w4["packed_size_bytes"] < w4["size_bytes"]
    assert w4["packed_size_bytes"] < w8["packed_size_bytes"]
    assert w4["macs"] == w8["macs"] == cells["fp32", 32][0]["macs"] > 0


def test_sub_8_bit_latency_is_recorded_as_int8_container(deployed):
    _, cells = deployed
    w4, w8 = cells["ptq", 4][1].metrics["deploy"], cells["ptq", 8][1].metrics["deploy"]
    assert w4["latency_container"] == w8["latency_container"] == "int8"
    assert "no sub-8-bit kernels" in w4["latency_note"] and "latency_note" not in w8


def test_flags():
    assert deploy_flags(True, 0.0, 1.0, 0.99) == [NO_INTEGER_KERNELS]
    assert deploy_flags(True, None, 1.0, 0.99) == [NO_INTEGER_KERNELS]
    assert deploy_flags(True, 0.35, 1.0, 0.99) == [PARTIALLY_INTEGER]
    assert deploy_flags(False, 0.0, 0.98, 0.99) == [LOW_AGREEMENT]
    assert deploy_flags(True, 1.0, 0.99, 0.99) == []
    assert container_note(True, 0.0, 8, 8)["latency_container"].startswith("float32")


def test_partially_integer_latency_is_not_called_int8():
    note = container_note(True, 0.345, 4, 4)
    assert note["latency_container"] == "mixed int8/float32"
    assert "not an integer latency" in note["latency_note"]
    assert container_note(True, 1.0, 4, 4)["latency_container"] == "int8"


def test_bad_deploy_settings_are_a_usage_error(write_grid, cli, tmp_path):
    grid = write_grid(stages={"deploy": {"min_agreement": 2}})
    result = cli("run", "--grid", grid, "--store", tmp_path / "s")
    assert result.exit_code == 2 and "min_agreement" in result.output


def test_probability_columns_are_the_deployed_models_and_the_torch_ones_beside(deployed):
    """`ece`, `brier`, `auroc_macro` and `deployed_macro_f1` come from ONNX Runtime's stored
    logits, `torch_*` (and the record's `macro_f1`) from the torch model's."""
    from sklearn.metrics import f1_score

    from bench.metrics import probability_metrics

    store, cells = deployed
    for row, record in cells.values():
        folder = store.artifact_dir(record.cell_id)
        with np.load(folder / DEPLOYED_PREDICTIONS) as ort_out, \
                np.load(folder / "predictions.npz") as torch_out:
            deployed_metrics = probability_metrics(ort_out["labels"], ort_out["logits"])
            torch_metrics = probability_metrics(torch_out["labels"], torch_out["logits"])
            f1 = f1_score(ort_out["labels"], ort_out["predictions"], average="macro",
                          labels=range(3), zero_division=0)
        assert row["probability_source"] == "deployed"
        for name in ("ece", "brier", "auroc_macro"):
            assert row[name] == pytest.approx(deployed_metrics[name], abs=1e-12), name
            assert row[f"torch_{name}"] == pytest.approx(torch_metrics[name], abs=1e-12)
        assert row["deployed_macro_f1"] == pytest.approx(f1)
        assert 0 <= row["ece"] <= 1 and 0 <= row["brier"] <= 2 and 0 <= row["auroc_macro"] <= 1


def test_without_a_deploy_stage_the_probability_columns_are_the_torch_models(write_grid, cli,
                                                                             tmp_path):
    grid = write_grid(methods=[{"name": "fp32"}], seeds=1)
    assert cli("run", "--grid", str(grid), "--store", str(tmp_path / "s"), "--quiet"
               ).exit_code == 0
    [row] = json.loads(cli("results", "--store", str(tmp_path / "s"), "--format", "json"
                           ).output)
    assert row["probability_source"] == "torch" and row["deployed_macro_f1"] is None
    for name in ("ece", "brier", "auroc_macro"):
        assert row[name] is not None and row[name] == row[f"torch_{name}"]
