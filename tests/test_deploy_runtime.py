"""Kernel policies of ONNX Runtime sessions (bench.deploy.runtime): resolved per CPU, recorded by
the deploy stage and by each measurement; and the latency benchmark's judge of its targets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto

from bench.deploy import runtime
from bench.deploy.kernels import optimized_graph, qdq_conv
from bench.deploy.runtime import (
    X64_PRECISION_KEY,
    session_config,
    session_options,
    u8s8_saturates,
)
from bench.measure.profiles import ProfileError, parse_profile
from bench.measure.runner import Target, measured_session_config
from tests.benchmarks.test_bench_latency import check_targets

CHANNELS = 8
SATURATED = CHANNELS // 2 * 32767  # four int16-saturated pair sums


def test_u8s8_saturates_on_x86_without_vnni_only():
    assert u8s8_saturates("x86_64", frozenset({"avx2", "fma"}))
    assert u8s8_saturates("AMD64", frozenset({"avx512f", "avx512bw"}))
    for exact in ("avx512_vnni", "avx_vnni", "amx_int8"):
        assert not u8s8_saturates("x86_64", frozenset({"avx2", exact}))
    assert not u8s8_saturates("aarch64", frozenset({"asimd"}))


def test_an_x86_cpu_whose_flags_cannot_be_read_counts_as_saturating(monkeypatch, tmp_path):
    monkeypatch.setattr(runtime, "CPUINFO", tmp_path / "missing")
    assert u8s8_saturates("x86_64")


def test_exact_kernels_turn_on_x64_precision_only_where_u8s8_saturates():
    assert session_config("exact", saturates=True) == {X64_PRECISION_KEY: "1"}
    assert session_config("exact", saturates=False) == {X64_PRECISION_KEY: "0"}
    assert session_config("fast", saturates=True) == {X64_PRECISION_KEY: "0"}
    assert session_config() == session_config("exact", u8s8_saturates())
    with pytest.raises(ValueError, match="bogus"):
        session_config("bogus")


def _conv(weight: int) -> onnx.ModelProto:
    """A QDQ 1x1 convolution of 8 uint8 channels with every int8 weight ``weight``."""
    return qdq_conv([weight] * CHANNELS, (1, CHANNELS), y_scale=1024.0, size=2, opset=13)


def _run(path: Path, kernels: str) -> float:
    session = ort.InferenceSession(str(path), session_options(session_config(kernels)),
                                   providers=["CPUExecutionProvider"])
    x = np.full((1, CHANNELS, 2, 2), 255, np.float32)
    return float(session.run(None, {"x": x})[0].ravel()[0])


def _weight_type(path: Path, kernels: str) -> int:
    graph = optimized_graph(path, config=session_config(kernels)).graph
    (weight,) = [i for i in graph.initializer if list(i.dims) == [1, CHANNELS, 1, 1]]
    return weight.data_type


@pytest.mark.skipif(not u8s8_saturates(), reason="U8S8 kernels are exact on this CPU")
def test_exact_kernels_are_exact_where_fast_ones_saturate(tmp_path):
    """255 x 127 products: fast U8S8 kernels clamp each pair sum at 32767 on this CPU; exact
    kernels move the 8-bit weights to uint8 (U8U8) and give the true sum (to the output scale);
    7-bit weights keep their int8 U8S8 kernel, which cannot saturate on them."""
    full, seven = tmp_path / "w127.onnx", tmp_path / "w64.onnx"
    onnx.save(_conv(127), full)
    onnx.save(_conv(64), seven)
    true_sum = CHANNELS * 255 * 127
    assert _run(full, "fast") == pytest.approx(SATURATED, abs=1024)
    assert _run(full, "exact") == pytest.approx(true_sum, abs=512)
    assert _weight_type(full, "exact") == TensorProto.UINT8
    assert _weight_type(seven, "exact") == TensorProto.INT8
    assert _run(seven, "exact") == pytest.approx(CHANNELS * 255 * 64, abs=512)


def test_a_profile_names_its_kernels_and_rejects_unknown_ones():
    base = 'description = "x"\n'
    assert parse_profile(base, "p.toml", "p").kernels == "exact"
    assert parse_profile(base + 'kernels = "fast"\n', "p.toml", "p").kernels == "fast"
    with pytest.raises(ProfileError, match="kernels"):
        parse_profile(base + 'kernels = "bogus"\n', "p.toml", "p")


def test_a_measurement_resolves_the_profiles_kernels_over_the_deployed_config(tmp_path):
    target = Target(cell=None, onnx_path=tmp_path / "m.onnx", packed_size_bytes=None,  # type: ignore[arg-type]
                    input_shape=(3, 8, 8),
                    session_config={X64_PRECISION_KEY: "1", "session.other": "kept"})
    fast = parse_profile('description = "x"\nkernels = "fast"\n', "p.toml", "p")
    exact = parse_profile('description = "x"\n', "p.toml", "p")
    assert measured_session_config(target, fast) == {X64_PRECISION_KEY: "0",
                                                     "session.other": "kept"}
    assert measured_session_config(target, exact)[X64_PRECISION_KEY] == session_config()[
        X64_PRECISION_KEY]


def test_the_latency_benchmark_judges_each_target():
    ok = {"speedup": 2.0, "static_speedup": 2.0, "vs_static": 1.0, "w4a4": 1.0, "w4a2": 1.0}
    assert check_targets(ok, 1.8, True) == []
    assert check_targets({**ok, "speedup": 1.7}, 1.8, True)
    assert check_targets({**ok, "speedup": 1.7, "static_speedup": 1.6}, 1.8, True) == []
    assert check_targets({**ok, "vs_static": 1.06}, 1.8, True)
    assert check_targets({**ok, "w4a4": 1.11}, 1.8, False)
    assert check_targets({**ok, "w4a2": 0.85}, 1.8, True)
    assert check_targets({**ok, "w4a2": 0.85}, 1.8, False) == []
