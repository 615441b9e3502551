"""Hardware profiles, timing protocol, isolated workers and machine fingerprint."""

from __future__ import annotations

import os
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bench.deploy import export_fp32
from bench.measure import (
    IsolationUnavailable,
    MeasurementError,
    Profile,
    ProfileError,
    fingerprint_hash,
    list_profiles,
    load_profile,
    machine_fingerprint,
    measure_isolated,
    run_protocol,
    summarize,
)
from bench.measure.isolation import parse_worker_output, thread_env

SHIPPED = {"host", "host-openvino", "edge-1core-1g", "edge-4core-2g", "raspberry-pi-4",
           "raspberry-pi-5", "jetson-orin-nano"}
SHAPE = (3, 8, 8)
BIG_SHAPE = (3, 1024, 1024)  # a 1x1 conv to 64 channels makes a 256 MiB output


def _profile(**overrides) -> Profile:
    fields = {
        "name": "test",
        "description": "unit test",
        "warmup": 1,
        "min_repetitions": 5,
        "min_duration_s": 0.0,
        "threads": {"intra_op": 1, "inter_op": 1},
        "cpuset": [0],
    }
    return Profile.model_validate({**fields, **overrides})


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
    return export_fp32(model, torch.zeros(1, *SHAPE), tmp_path_factory.mktemp("m") / "s.onnx")


@pytest.fixture(scope="module")
def big_onnx(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("m") / "big.onnx"
    return export_fp32(nn.Conv2d(3, 64, 1), torch.zeros(1, *BIG_SHAPE), path)


# Profiles


def test_all_shipped_profiles_load():
    assert set(list_profiles()) == SHIPPED
    for name in SHIPPED:
        profile = load_profile(name)
        assert profile.name == name
        assert profile.runtime == ("openvino" if name == "host-openvino" else "onnxruntime")
        assert profile.execution_provider == "CPUExecutionProvider"


@pytest.mark.parametrize("name", ["edge-1core-1g", "edge-4core-2g"])
def test_edge_profiles_say_they_only_emulate_limits(name):
    profile = load_profile(name)
    assert "does NOT emulate an ARM instruction set" in " ".join(profile.description.split())
    assert profile.memory_limit_mb and profile.cpuset and profile.cpu_quota


def test_profile_loads_from_path(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('description = "x"\nbatch_sizes = [1, 4]\n[threads]\nintra_op = 2\n')
    profile = load_profile(path)
    assert (profile.name, profile.batch_sizes, profile.threads.intra_op) == ("mine", [1, 4], 2)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('description = "x"\ncolour = "red"\n', "colour"),
        ('description = "x"\n[threads]\nintra_op = -1\n', "threads.intra_op"),
        ('description = "x"\nbatch_sizes = [1, 0]\n', "batch_sizes"),
        ('description = "x"\nisolation = "vm"\n', "isolation"),
        ('description = "x"\nmemory_limit_mb = 0\n', "memory_limit_mb"),
        ("batch_sizes = [1]\n", "description"),
    ],
)
def test_bad_profile_names_file_and_field(tmp_path, text, field):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    assert str(path) in str(err.value)
    assert field in str(err.value)


def test_profile_that_is_not_toml(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("description = \n")
    with pytest.raises(ProfileError, match=r"broken\.toml: not valid TOML"):
        load_profile(path)


def test_unknown_profile_lists_shipped_ones():
    with pytest.raises(ProfileError, match=r"unknown hardware profile 'nope'.*edge-1core-1g"):
        load_profile("nope")
    with pytest.raises(ProfileError, match="not found"):
        load_profile("/nonexistent/p.toml")


# Protocol


class FakeWork:
    """A clock that only moves when the timed function runs, by ``step`` seconds per call."""

    def __init__(self, step: float = 1.0) -> None:
        self.now = 0.0
        self.calls = 0
        self.step = step

    def clock(self) -> float:
        return self.now

    def __call__(self) -> None:
        self.calls += 1
        self.now += self.step


@pytest.mark.parametrize(
    ("min_reps", "min_duration", "expected"), [(5, 0.0, 5), (1, 10.0, 10), (20, 10.0, 20)]
)
def test_protocol_stops_when_count_and_duration_are_both_met(min_reps, min_duration, expected):
    work = FakeWork()
    samples = run_protocol(work, 3, min_reps, min_duration, clock=work.clock)
    assert len(samples) == expected
    assert work.calls == 3 + expected
    assert samples == [1.0] * expected


def test_protocol_does_not_count_warmup_time():
    work = FakeWork(step=0.5)
    samples = run_protocol(work, 10, 1, 2.0, clock=work.clock)
    assert len(samples) == 4


def test_protocol_rejects_bad_arguments():
    with pytest.raises(ValueError):
        run_protocol(lambda: None, 0, 0, 1.0)


def test_summarize_matches_numpy_and_statistics():
    samples = [float(v) for v in np.random.default_rng(0).exponential(size=57)]
    summary = summarize(samples, [50, 90, 99, 99.9])
    assert summary["n"] == 57
    assert summary["mean"] == pytest.approx(statistics.fmean(samples))
    assert summary["std"] == pytest.approx(statistics.stdev(samples))
    assert summary["cv"] == pytest.approx(summary["std"] / summary["mean"])
    assert summary["min"] == min(samples) and summary["max"] == max(samples)
    for q in (50, 90, 99, 99.9):
        assert summary[f"p{q:g}"] == pytest.approx(np.percentile(samples, q))
    with pytest.raises(ValueError):
        summarize([])


# Isolation


def test_thread_env_caps_openmp_and_blas():
    assert thread_env(_profile())["OMP_NUM_THREADS"] == "1"
    assert thread_env(_profile(threads={"intra_op": 0, "inter_op": 1})) == {}


def test_process_isolation_end_to_end(small_onnx):
    m = measure_isolated(small_onnx, _profile(memory_limit_mb=1024), SHAPE, batch_size=3)
    assert m.batch_size == 3 and m.input_shape == SHAPE
    assert len(m.samples_s) >= 5 and m.summary["n"] == len(m.samples_s)
    assert m.affinity == [0]
    assert m.providers == ["CPUExecutionProvider"]
    assert m.peak_rss_mb > 10 and m.load_time_s > 0
    assert m.enforced["memory"] == "RLIMIT_AS"


def test_memory_limit_really_caps(big_onnx):
    profile = _profile(warmup=0, min_repetitions=1, memory_limit_mb=256)
    with pytest.raises(MeasurementError, match="exceeded the memory limit of 256 MB") as err:
        measure_isolated(big_onnx, profile, BIG_SHAPE)
    assert err.value.memory
    assert "while running" in str(err.value) or "while loading" in str(err.value)
    unlimited = measure_isolated(big_onnx, _profile(warmup=0, min_repetitions=1), BIG_SHAPE)
    assert unlimited.peak_rss_mb > 256


def test_unavailable_cpu_is_a_clear_error(small_onnx):
    with pytest.raises(IsolationUnavailable, match=r"pins CPUs \[4096\]"):
        measure_isolated(small_onnx, _profile(cpuset=[4096]), SHAPE)


def test_unavailable_provider_is_a_clear_error(small_onnx):
    profile = _profile(execution_provider="NoSuchExecutionProvider")
    with pytest.raises(MeasurementError, match="NoSuchExecutionProvider is not available"):
        measure_isolated(small_onnx, profile, SHAPE)


def test_worker_crash_is_classified():
    with pytest.raises(MeasurementError, match="exceeded the memory limit") as err:
        parse_worker_output(-6, "", "terminate called: std::bad_alloc", 100, False)
    assert err.value.memory
    with pytest.raises(MeasurementError, match="exited with code -11") as err:
        parse_worker_output(-11, "", "Segmentation fault", 100, False)
    assert not err.value.memory


def test_import_failure_with_allocation_error_on_stderr_reads_as_memory():
    stdout = ('{"ok": false, "stage": "import", "error": "ImportError: import numpy failed", '
              '"memory": false}')
    stderr = "ImportError: libopenblas.so: failed to map segment from shared object"
    with pytest.raises(MeasurementError, match="exceeded the memory limit of 64 MB") as err:
        parse_worker_output(1, stdout, stderr, 64, False)
    assert err.value.memory and "while importing the runtime" in str(err.value)


def test_limits_text():
    profile = _profile(cpu_quota=1.0, memory_limit_mb=512)
    assert profile.limits_text() == "cpus 0, quota 1 CPU, memory 512 MB"
    assert _profile(cpuset=None).limits_text() == "none"


def test_torch_runtime(tmp_path):
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 2))
    torch.save(model, tmp_path / "model.pt")
    m = measure_isolated(tmp_path / "model.pt", _profile(runtime="torch"), SHAPE)
    assert m.providers == ["torch-eager-cpu"] and len(m.samples_s) >= 5


def _docker_or_skip():
    from bench.measure.container import docker_client

    try:
        docker_client()
    except IsolationUnavailable as err:
        pytest.skip(str(err))


def test_docker_isolation_end_to_end(small_onnx):
    _docker_or_skip()
    profile = _profile(isolation="docker", cpu_quota=1.0, memory_limit_mb=512)
    m = measure_isolated(small_onnx, profile, SHAPE)
    assert m.isolation == "docker" and len(m.samples_s) >= 5
    assert m.affinity == [0]
    assert m.enforced["memory"] == "cgroup memory, no swap"


def test_docker_memory_limit_really_caps(big_onnx):
    _docker_or_skip()
    profile = _profile(isolation="docker", warmup=0, min_repetitions=1, memory_limit_mb=200)
    with pytest.raises(MeasurementError, match="exceeded the memory limit of 200 MB") as err:
        measure_isolated(big_onnx, profile, BIG_SHAPE)
    assert err.value.memory


# Fingerprint


def test_fingerprint_has_the_facts_and_a_stable_hash():
    first, second = machine_fingerprint(), machine_fingerprint()
    for key in ("cpu_model", "cpu_flags", "logical_cores", "ram_gb", "os", "packages"):
        assert key in first
    assert first["logical_cores"] == os.cpu_count()
    assert "CPUExecutionProvider" in first["onnxruntime_providers"]
    assert first["hash"] == second["hash"] and len(first["hash"]) == 12
    assert fingerprint_hash(first) == first["hash"]
    assert fingerprint_hash({**first, "ram_gb": first["ram_gb"] + 1}) != first["hash"]
