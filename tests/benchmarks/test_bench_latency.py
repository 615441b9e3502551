"""The grid's own deployed models (224x224, batch 1, one ONNX Runtime thread): latency and size.

Skipped in the default run. Run with

    MEDQ_BENCH=1 python -m pytest tests/benchmarks/test_bench_latency.py -o addopts="" -s

ResNet-18 and MobileNetV2 (random weights with BatchNorm statistics from random images, no
download) are deployed as the grid deploys them: FP32 through `bench.deploy.export_fp32`, and
the grid's PTQ (`bench.quant`: per-channel weights, first and last layer at 8 bits, observed
ranges calibrated on random images) at W8A8, W4A4 and W4A2 through the deploy stage's
`export_quantized`; the peer is ONNX Runtime's own `quantize_static` (QDQ, U8S8, per-channel)
of the FP32 file, also with ``reduce_range`` (7-bit weights; shown, not judged). The test prints
the CPU model, its SIMD flags, whether it has VNNI (AVX-512 VNNI or AVX-VNNI) and whether ONNX
Runtime's U8S8 kernels saturate on it. The W8A8 graph must have `quantize_static`'s integer
nodes one for one (the pool before the classifier included).

Each model is timed under both kernel policies of `bench.deploy.runtime` in the same
interleaved run: ``exact`` (the default of the deploy stage and of `bench measure`: on x86
without VNNI, layers with 8-bit weights run the exact but slower U8U8 kernels, so W8A8 and
`quantize_static`'s model pay for it and 4-bit weight layers do not; elsewhere plain U8S8) and
``fast`` (U8S8 everywhere). Beside them: how far fast kernels move the W8A8 and
`quantize_static` logits from exact ones, and W4A4 without its activation Clips (the uint8
Clips that emulate 4-bit activations in int8 containers; a diagnostic twin with the same
kernels, not a deployable model), which shows what those Clips cost, and ONNX Runtime's
per-node profile of W8A8, W4A4 and W4A2 under the same kernels (QLinearConv and Clip time).
Ratios are medians over rounds of the ratio within a round (each round times every model once,
warm, right after an untimed call of the same model, so a slow stretch of the shared machine
cancels and no model pays for another's cache evictions); the p50s are printed beside. Targets, for
each policy:
- W8A8 at least 3x faster than FP32 on a CPU with VNNI, at least 1.8x without; where
  `quantize_static` misses it too under that policy on this CPU, the test prints the target as
  unreachable with both figures instead of failing;
- W8A8 within 5% of `quantize_static`;
- W4A4 and W4A2 within 10% of W8A8 where they run the same kernels (``fast``, or any policy on a
  CPU whose U8S8 kernels are exact), no more than 10% slower where W8A8's 8-bit layers run U8U8;
- the harness's p50 within 5% of a bare `perf_counter` loop; the W8A8 ONNX file within 5% of
  `quantize_static`'s; for ResNet-18, 8-bit ONNX <= 26% and the W4A4 packed file <= 14% of the
  FP32 ONNX file (measured for MobileNetV2: 0.29 for both the W8A8 file and quantize_static's).
Environment: MEDQ_BENCH_ROUNDS (30) timed calls per latency figure.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from bench.deploy import count_kernels, export_fp32, export_quantized, pack_quantized
from bench.deploy.kernels import INTEGER_KERNELS, graph_coverage
from bench.deploy.runtime import KERNELS, session_config, session_options, u8s8_saturates
from bench.measure import run_protocol
from bench.measure.fingerprint import FLAGS_OF_INTEREST
from tests.backbones import backbone_with_data_statistics, quantised_backbone, random_images

NUM_CLASSES = 8
SIZE = 224
ROUNDS = int(os.environ.get("MEDQ_BENCH_ROUNDS", "30"))
BACKBONES = ("resnet18", "mobilenet_v2")
PTQ_BITS = {"w8a8": (8, 8), "w4a4": (4, 4), "w4a2": (4, 2)}
VARIANTS = ("fp32", *PTQ_BITS, "ort_static")
VNNI_FLAGS = ("avx512_vnni", "avx_vnni")


def cpu_info() -> tuple[str, list[str], list[str]]:
    """CPU model name, its SIMD flags of interest and its VNNI flags (from /proc/cpuinfo;
    empty elsewhere)."""
    model, flags = "unknown", set()
    path = Path("/proc/cpuinfo")
    for line in path.read_text().splitlines() if path.is_file() else []:
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            model = value.strip()
        elif key.strip() == "flags":
            flags |= set(value.split())
    return (model, sorted(flags & FLAGS_OF_INTEREST),
            [f for f in VNNI_FLAGS if f in flags])


def _calibration(n: int = 4) -> list[np.ndarray]:
    return [random_images(1, SIZE, 20 + i).numpy() for i in range(n)]


def _ort_static(fp32_path: Path, out: Path, reduce_range: bool = False) -> Path:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": x} for x in _calibration()])

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    prepared = out.with_name("fp32_prepared.onnx")
    if not prepared.is_file():
        quant_pre_process(str(fp32_path), str(prepared))
    quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    per_channel=True, reduce_range=reduce_range)
    return out


@pytest.fixture(scope="module", params=BACKBONES)
def artefacts(request, tmp_path_factory) -> dict[str, Path]:
    name = request.param
    root = tmp_path_factory.mktemp(name)
    torch.set_num_threads(1)
    example = random_images(1, SIZE, 0)
    paths = {"name": name}
    model = backbone_with_data_statistics(name, SIZE, NUM_CLASSES)
    paths["fp32"] = export_fp32(model, example, root / "fp32.onnx")
    for variant, (w, a) in PTQ_BITS.items():
        qmodel = quantised_backbone(name, SIZE, w, a)
        paths[variant] = export_quantized(qmodel, example, root / f"{variant}.onnx")
        if variant == "w4a4":
            paths["packed_w4a4"] = pack_quantized(qmodel, None, root / "w4a4.npz").path
    paths["w4a4_noclip"] = strip_activation_clips(paths["w4a4"], root / "w4a4_noclip.onnx")
    paths["ort_static"] = _ort_static(paths["fp32"], root / "ort_static.onnx")
    paths["ort_static_rr"] = _ort_static(paths["fp32"], root / "ort_static_rr.onnx", True)
    return paths


KERNEL_POLICIES = tuple(KERNELS)


def strip_activation_clips(path: Path, out: Path) -> Path:
    """A diagnostic twin of a sub-8-bit model without its activation Clips (the uint8 Clip after
    each activation QuantizeLinear that emulates 4-/2-bit activations in an int8 container):
    the same integer kernels, none of the emulation. Not a deployable model."""
    model = onnx.load(str(path))
    producers = {o: n for n in model.graph.node for o in n.output}
    clips = [n for n in model.graph.node if n.op_type == "Clip"
             and getattr(producers.get(n.input[0]), "op_type", "") == "QuantizeLinear"]
    rename = {c.output[0]: c.input[0] for c in clips}
    for node in model.graph.node:
        node.input[:] = [rename.get(i, i) for i in node.input]
    for clip in clips:
        model.graph.node.remove(clip)
    onnx.save(model, str(out))
    return out


def _call(path: Path, config: dict[str, str] | None = None) -> Callable[[], object]:
    options = session_options(config)
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"input": np.random.default_rng(0).standard_normal((1, 3, SIZE, SIZE), np.float32)}
    return lambda: session.run(None, feed)


def op_times_ms(paths: dict[str, Path], config: dict[str, str], runs: int
                ) -> dict[str, dict[str, float]]:
    """Per variant, ONNX Runtime's profiled kernel time per op type (ms): the sum over nodes of
    each node's median over ``runs`` interleaved calls, which load bursts hardly move."""
    sessions = {}
    for variant, path in paths.items():
        options = session_options(config)
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.enable_profiling = True
        options.profile_file_prefix = str(path.with_name(f"profile_{variant}"))
        sessions[variant] = ort.InferenceSession(str(path), options,
                                                 providers=["CPUExecutionProvider"])
    feed = {"input": random_images(1, SIZE, 31).numpy()}
    for _ in range(runs + 3):
        for session in sessions.values():
            session.run(None, feed)
    times = {}
    for variant, session in sessions.items():
        per_node: dict[tuple[str, str], list[float]] = {}
        for event in json.loads(Path(session.end_profiling()).read_text()):
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                per_node.setdefault((event["name"], event["args"]["op_name"]), []).append(
                    event["dur"] / 1e3)
        by_op: dict[str, float] = {}
        for (_, op), durations in per_node.items():
            by_op[op] = by_op.get(op, 0.0) + float(np.median(durations[3:]))
        times[variant] = by_op
    return times


def _logits(path: Path, config: dict[str, str]) -> np.ndarray:
    session = ort.InferenceSession(str(path), session_options(config),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"input": random_images(8, SIZE, 30).numpy()})[0]


def _interleaved(calls: dict[Any, Callable[[], object]], rounds: int) -> dict[Any, np.ndarray]:
    """Seconds per call of each variant, round by round: every round calls each variant, in
    reverse order every other round, so load bursts hit all of them. Each timed call follows an
    untimed call of the same model, as on a device that runs one model back to back. Timed cold,
    a model pays for what its predecessor in the round evicted from the caches, which differs
    by variant: so timed, MobileNetV2 W8A8 (after FP32 every other round) measured 1.077x
    quantize_static's time on an AVX-512 VNNI EPYC, while ONNX Runtime's profile put their
    kernel times within 1% (3.06 and 3.05 ms)."""
    samples: dict[Any, list[float]] = {v: [] for v in calls}
    for fn in calls.values():
        run_protocol(fn, 3, 1, 0.0)
    order = list(calls.items())
    for i in range(rounds):
        for variant, fn in order if i % 2 == 0 else order[::-1]:
            fn()
            start = time.perf_counter()
            fn()
            samples[variant].append(time.perf_counter() - start)
    return {v: np.asarray(s) for v, s in samples.items()}


def paired_ratio(a: np.ndarray, b: np.ndarray) -> float:
    """Median over rounds of a's time over b's in the same round: a slow stretch of a shared
    machine slows both members of a pair, so it cancels from their ratio."""
    return float(np.median(a / b))


def _ratios(s: dict[str, np.ndarray]) -> dict[str, float]:
    pairs = {"speedup": ("fp32", "w8a8"), "static_speedup": ("fp32", "ort_static"),
             "rr_speedup": ("fp32", "ort_static_rr"), "vs_static": ("w8a8", "ort_static"),
             "w4a4": ("w4a4", "w8a8"), "w4a2": ("w4a2", "w8a8"),
             "w4a4_noclip": ("w4a4_noclip", "w8a8")}
    return {name: paired_ratio(s[a], s[b]) for name, (a, b) in pairs.items()}


def check_targets(r: dict[str, float], target: float, same_kernels: bool) -> list[str]:
    """The issue's targets for one kernel policy's ratios; returns the unmet ones. The speed-up
    target counts as unreachable (not as unmet) where quantize_static, the peer, misses it too
    on this CPU; W4 must be within 10% of W8A8 both ways where both run the same kernels, and
    no more than 10% slower where W8A8's 8-bit layers run the exact U8U8 kernels instead."""
    unmet = []
    if r["speedup"] < target and r["static_speedup"] >= target:
        unmet.append(f"W8A8 {r['speedup']:.2f}x FP32 < {target}x (quantize_static reaches it)")
    if r["vs_static"] > 1.05:
        unmet.append(f"W8A8 / quantize_static {r['vs_static']:.3f} > 1.05")
    for v in ("w4a4", "w4a2"):
        if r[v] > 1.10 or (same_kernels and r[v] < 0.90):
            unmet.append(f"{v.upper()} / W8A8 {r[v]:.3f} outside 10%")
    return unmet


def test_latency_targets(artefacts):
    model, flags, vnni = cpu_info()
    saturates = u8s8_saturates()
    counts = {v: count_kernels(artefacts[v]) for v in VARIANTS}
    coverage = {v: graph_coverage(artefacts[v]).by_nodes for v in VARIANTS}
    integer_nodes = {v: {op: n for op, n in sorted(counts[v].items()) if op in INTEGER_KERNELS}
                     for v in ("w8a8", "ort_static")}
    timed = (*VARIANTS, "w4a4_noclip", "ort_static_rr")
    calls = {(v, k): _call(artefacts[v], session_config(k)) for v in timed
             for k in KERNEL_POLICIES}
    samples = _interleaved(calls, 2 * ROUNDS)
    target = 3.0 if vnni else 1.8
    print(f"\n{artefacts['name']} {SIZE}px b1 1 thread on {model} (flags {' '.join(flags)}); "
          f"VNNI: {', '.join(vnni) or 'no'}; ONNX Runtime's U8S8 kernels saturate here: "
          f"{'yes' if saturates else 'no'}")
    for v in ("w8a8", "ort_static"):
        exact, fast = (_logits(artefacts[v], session_config(k)) for k in KERNEL_POLICIES)
        print(f"  {v} fast vs exact kernels on 8 random images: top-1 agreement "
              f"{(exact.argmax(1) == fast.argmax(1)).mean():.3f}, max |logit diff| "
              f"{np.abs(exact - fast).max():.4f} (scale: max |logit| {np.abs(exact).max():.3f})")
    unmet, unreachable = {}, {}
    for k in KERNEL_POLICIES:
        t = {v: float(np.median(samples[v, k])) for v in timed}
        r = _ratios({v: samples[v, k] for v in timed})
        config = session_config(k)
        same_kernels = not saturates or k == "fast"
        unmet[k] = check_targets(r, target, same_kernels)
        row = ", ".join(f"{v} {t[v] * 1e3:.2f}" for v in timed)
        print(f"  kernels={k} {config}\n    p50 ms: {row}\n    paired ratios: "
              f"W8A8 {r['speedup']:.2f}x FP32 (target {target}x), quantize_static "
              f"{r['static_speedup']:.2f}x, reduce_range quantize_static "
              f"{r['rr_speedup']:.2f}x; W8A8 / quantize_static "
              f"{r['vs_static']:.3f}; W4A4 / W8A8 {r['w4a4']:.3f} (without its activation "
              f"Clips {r['w4a4_noclip']:.3f}); W4A2 / W8A8 {r['w4a2']:.3f}")
        if r["speedup"] < target and r["static_speedup"] < target:
            unreachable[k] = (f"{target}x unreachable on this CPU with kernels={k}: "
                              f"quantize_static reaches {r['static_speedup']:.2f}x, "
                              f"W8A8 {r['speedup']:.2f}x")
            print(f"    {unreachable[k]}")
        print(f"    unmet: {unmet[k] or 'none'}")
    same = "fast" if saturates else "exact"
    ops = op_times_ms({v: artefacts[v] for v in ("w8a8", "w4a4", "w4a2", "w4a4_noclip")},
                      session_config(same), ROUNDS)
    for v, by_op in ops.items():
        print(f"  kernels={same} profiled {v} (sums of per-node medians): total "
              f"{sum(by_op.values()):.2f} ms, QLinearConv {by_op.get('QLinearConv', 0.0):.2f}, "
              f"Clip {by_op.get('Clip', 0.0):.2f} ({count_kernels(artefacts[v]).get('Clip', 0)} "
              "Clip nodes)")
    print(f"  integer coverage {coverage}; integer nodes {integer_nodes}")
    assert all(coverage[v] == 1.0 for v in (*PTQ_BITS, "ort_static")), coverage
    assert integer_nodes["w8a8"] == integer_nodes["ort_static"], integer_nodes
    assert not any(unmet.values()), unmet


def test_harness_overhead(artefacts):
    fn = _call(artefacts["w8a8"])
    harness: list[float] = []
    bare: list[float] = []
    run_protocol(fn, 3, 1, 0.0)
    # One call per protocol run times it exactly as a long run does; alternating call by call
    # lets load bursts on a shared CPU hit both loops alike.
    for _ in range(3 * ROUNDS):
        harness += run_protocol(fn, 0, 1, 0.0)
        start = time.perf_counter()
        fn()
        bare.append(time.perf_counter() - start)
    ours, theirs = float(np.median(harness)), float(np.median(bare))
    overhead = ours / theirs - 1
    print(f"\nharness p50 {ours * 1e3:.3f} ms, bare loop p50 {theirs * 1e3:.3f} ms, "
          f"overhead {overhead:+.2%}")
    assert abs(overhead) <= 0.05


def test_size_ratios(artefacts):
    fp32 = artefacts["fp32"].stat().st_size
    ratios = {k: artefacts[k].stat().st_size / fp32
              for k in ("w8a8", "ort_static", "packed_w4a4")}
    rounded = {k: round(r, 4) for k, r in ratios.items()}
    print(f"\n{artefacts['name']}: fp32 ONNX {fp32 / 2**20:.2f} MiB; size ratios {rounded}")
    assert ratios["w8a8"] <= 1.05 * ratios["ort_static"]
    if artefacts["name"] == "resnet18":
        assert ratios["w8a8"] <= 0.26
        assert ratios["packed_w4a4"] <= 0.14
