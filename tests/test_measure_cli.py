"""`bench measure`, `bench profiles` and the latency columns of `bench results` on a tiny store."""

from __future__ import annotations

import csv
import io
import json

import pytest

from bench.measure import machine_fingerprint
from bench.store import ResultsStore
from bench.store.measurements import measurements

QUICK = 'description = "quick"\nwarmup = 1\nmin_repetitions = 5\nmin_duration_s = 0.0\n'
TINY_MEMORY = QUICK + "memory_limit_mb = 64\n"


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """A one-cell deployed store measured under host, again under host, then two files."""
    import yaml
    from typer.testing import CliRunner

    from bench.cli import app
    from bench.store import ResultsStore
    from tests.conftest import tiny_grid_dict

    tmp = tmp_path_factory.mktemp("measure")
    (tmp / "grid.yaml").write_text(yaml.safe_dump(tiny_grid_dict(seeds=1,
                                                                 stages={"deploy": {}})))
    (tmp / "quick.toml").write_text(QUICK)
    (tmp / "tinymem.toml").write_text(TINY_MEMORY)
    (tmp / "fast.toml").write_text(QUICK + 'kernels = "fast"\n')
    runner = CliRunner()

    def bench(*args: object):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    store = tmp / "s"
    assert bench("run", "--grid", tmp / "grid.yaml", "--store", store, "--quiet").exit_code == 0
    steps = {
        "host": bench("measure", "--profile", "host", "--store", store),
        "again": bench("measure", "--profile", "host", "--store", store),
        "fast": bench("measure", "--profile", tmp / "fast.toml", "--store", store),
        "quick": bench("measure", "--profile", tmp / "quick.toml", "--store", store),
        "tinymem": bench("measure", "--profile", tmp / "tinymem.toml", "--store", store),
    }
    return tmp, ResultsStore(store), steps


def _rows(cli, store, *args):
    result = cli("results", "--store", store, "--format", "json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_measure_fills_the_results_columns(measured, cli):
    tmp, _, steps = measured
    assert steps["host"].exit_code == 0, steps["host"].output
    assert "1 measured, 0 already measured, 0 failed" in steps["host"].output
    (row,) = _rows(cli, tmp / "s", "--profile", "host")
    assert 0 < row["latency_ms_p50"] <= row["latency_ms_p90"] <= row["latency_ms_p99"]
    assert row["peak_rss_mb"] > 10 and row["profile"] == "host"
    assert row["machine"] == machine_fingerprint()["hash"]
    assert row["latency_batch_size"] == 1
    assert row["size_bytes"] > 0 and row["int_kernels"] == 0 and row["agreement"] == 1.0


def test_measurement_keeps_samples_summary_and_fingerprint(measured):
    _, store, _ = measured
    (m,) = [m for m in measurements(store.engine) if m.profile == "host"]
    assert m.status == "ok" and m.error is None and len(m.samples_s) >= 100
    assert m.latency_ms_min <= m.latency_ms_p50 and m.latency_ms_std >= 0 and m.latency_cv >= 0
    assert m.latency_ms_mean == pytest.approx(1000 * sum(m.samples_s) / len(m.samples_s))
    assert m.load_time_s > 0 and m.size_bytes > 0 and m.packed_size_bytes > 0
    assert m.fingerprint["hash"] == m.machine and m.fingerprint["cpu_model"]
    assert m.details["providers"] == ["CPUExecutionProvider"]


def test_each_measurement_records_its_kernel_policy_as_resolved_here(measured):
    """The profile's kernels (default exact) are resolved on the measuring machine and stored
    with the measurement: the policy, the session config it gave and whether U8S8 saturates."""
    from bench.deploy.runtime import session_config, u8s8_saturates

    _, store, steps = measured
    assert steps["fast"].exit_code == 0, steps["fast"].output
    by_profile = {m.profile: m for m in measurements(store.engine)}
    for profile, policy in (("host", "exact"), ("fast", "fast")):
        m = by_profile[profile]
        assert m.profile_config["kernels"] == m.details["kernel_policy"] == policy
        assert m.details["session_config"] == session_config(policy)
        assert m.details["u8s8_saturates"] is u8s8_saturates()
        assert m.details["exact_kernels"] is (policy == "exact" or not u8s8_saturates())


def test_second_measure_measures_nothing_new(measured):
    _, store, steps = measured
    assert steps["again"].exit_code == 0
    assert "0 measured, 1 already measured" in steps["again"].output
    assert [m.profile for m in measurements(store.engine)].count("host") == 1


def test_memory_limit_failure_is_stored_with_its_error(measured, cli):
    tmp, store, steps = measured
    assert steps["tinymem"].exit_code == 1
    assert "memory limit of 64 MB" in steps["tinymem"].output
    (m,) = [m for m in measurements(store.engine) if m.profile == "tinymem"]
    assert m.status == "failed" and "exceeded the memory limit of 64 MB" in m.error
    assert m.latency_ms_p50 is None and m.samples_s == []
    (row,) = _rows(cli, tmp / "s")
    assert row["profile"] == "quick" and row["latency_ms_p50"] > 0


def test_default_is_the_most_recent_success_and_profile_selects(measured, cli):
    tmp, _, steps = measured
    assert steps["quick"].exit_code == 0
    assert _rows(cli, tmp / "s")[0]["profile"] == "quick"
    assert _rows(cli, tmp / "s", "--profile", "host")[0]["profile"] == "host"
    result = cli("results", "--store", tmp / "s", "--profile", "tinymem")
    assert result.exit_code == 2 and "host" in result.output and "quick" in result.output


def test_csv_has_the_new_columns(measured, cli):
    tmp = measured[0]
    result = cli("results", "--store", tmp / "s", "--format", "csv")
    (row,) = list(csv.DictReader(io.StringIO(result.output)))
    for column in ("accuracy", "latency_ms_p50", "latency_ms_p90", "latency_ms_p99",
                   "peak_rss_mb", "size_bytes", "packed_size_bytes", "int_kernels",
                   "deployed_accuracy", "agreement", "profile", "machine"):
        assert row[column] != "", column


def test_unknown_profile_exits_2_and_lists_shipped(measured, cli):
    result = cli("measure", "--profile", "nope", "--store", measured[0] / "s")
    assert result.exit_code == 2 and "edge-1core-1g" in result.output


def test_bad_profile_file_names_the_field(measured, cli):
    bad = measured[0] / "bad.toml"
    bad.write_text(QUICK.replace("warmup = 1", "warmup = -1"))
    result = cli("measure", "--profile", bad, "--store", measured[0] / "s")
    assert result.exit_code == 2 and "warmup" in result.output


def test_unknown_filter_exits_2(measured, cli):
    result = cli("measure", "--profile", "host", "--store", measured[0] / "s",
                 "--method", "magic")
    assert result.exit_code == 2 and "fp32" in result.output


def test_results_without_measurements_have_empty_columns(write_grid, cli, tmp_path):
    assert cli("run", "--grid", write_grid(seeds=1, train={"epochs": 1}), "--store",
               tmp_path / "s", "--quiet").exit_code == 0
    (row,) = _rows(cli, tmp_path / "s")
    assert row["latency_ms_p50"] is None and row["int_kernels"] is None
    assert row["int_coverage"] is None and row["shipped_size_bytes"] is None
    result = cli("measure", "--profile", "host", "--store", tmp_path / "s")
    assert result.exit_code == 0 and "no deployed cell" in result.output


def test_profiles_lists_every_shipped_profile(cli):
    result = cli("profiles")
    assert result.exit_code == 0
    for name in ("host", "edge-1core-1g", "raspberry-pi-4", "process"):
        assert name in result.output


def _copy_store(measured, tmp_path):
    import shutil

    tmp, _, _ = measured
    return shutil.copytree(tmp / "s", tmp_path / "s")


def test_a_tampered_artifact_is_refused_before_any_timing(measured, cli, tmp_path):
    store = _copy_store(measured, tmp_path)
    (onnx,) = (store / "artifacts").glob("*/model*.onnx")
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0x01
    onnx.write_bytes(bytes(data))
    before = len(measurements(ResultsStore(store).engine))
    result = cli("measure", "--profile", "host", "--store", store, "--device-name", "other-box")
    assert result.exit_code == 2
    assert "SHA-256 differs" in result.output and onnx.name in result.output
    assert len(measurements(ResultsStore(store).engine)) == before


def test_each_device_keeps_its_own_measurement(measured, cli, tmp_path):
    store = _copy_store(measured, tmp_path)
    result = cli("measure", "--profile", measured[0] / "quick.toml", "--store", store,
                 "--device-name", "clinic-pi-01")
    assert result.exit_code == 0, result.output
    assert "device clinic-pi-01" in result.output and "1 measured" in result.output
    devices = {(m.device, m.profile) for m in measurements(ResultsStore(store).engine)}
    assert ("clinic-pi-01", "quick") in devices
    assert len({d for d, _ in devices}) == 2


def test_a_bad_device_name_exits_2(measured, cli, tmp_path):
    result = cli("measure", "--profile", "host", "--store", _copy_store(measured, tmp_path),
                 "--device-name", "../pi")
    assert result.exit_code == 2 and "device name" in result.output
