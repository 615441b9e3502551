"""ONNX Runtime and OpenVINO on the same deployed models (224x224, batch 1, one thread).

Skipped in the default run (and where `openvino` is not installed). Run with

    MEDQ_BENCH=1 python -m pytest tests/benchmarks/test_bench_runtimes.py -o addopts="" -s

ResNet-18 and MobileNetV2 (random weights with BatchNorm statistics from random images, no
download) at FP32 (`export_fp32`) and the grid's PTQ at W8A8 (`export_quantized`), each timed
under ONNX Runtime (exact kernels, `bench.deploy.runtime`, as `bench measure` runs it) and
under OpenVINO's CPU plugin (f32 inference precision, one stream, as the `host-openvino` profile
runs it) in one interleaved run (`test_bench_latency._interleaved`: every round times every
model once, warm, so a slow stretch of a shared machine cancels from the ratios). Prints the CPU
model, its SIMD flags and VNNI flags, each runtime's p50, its W8A8 speed-up over its own FP32,
OpenVINO over ONNX Runtime, OpenVINO's integer coverage (its runtime model's compute layers that
execute in u8/i8) and the top-1 agreement of OpenVINO's W8A8 logits with ONNX Runtime's on
random images. Target, on a CPU with VNNI (AVX-512 VNNI or AVX-VNNI): OpenVINO's W8A8 at least
2.5x faster than its FP32 on ResNet-18 (printed, not judged, without VNNI).
Environment: MEDQ_BENCH_ROUNDS (30) timed calls per latency figure.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from bench.deploy import export_fp32, export_quantized
from bench.deploy.runtime import session_config, session_options
from bench.measure._worker import openvino_coverage
from tests.backbones import backbone_with_data_statistics, quantised_backbone, random_images
from tests.benchmarks.test_bench_latency import (
    BACKBONES,
    NUM_CLASSES,
    ROUNDS,
    SIZE,
    _interleaved,
    cpu_info,
    paired_ratio,
)

ov = pytest.importorskip("openvino")
VARIANTS = ("fp32", "w8a8")
RUNTIMES = ("onnxruntime", "openvino")
TARGET_OV_W8A8_SPEEDUP = 2.5


def _ort(path: Path) -> tuple[Callable[[], object], Callable[[np.ndarray], np.ndarray]]:
    options = session_options(session_config("exact"))
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    feed = {name: random_images(1, SIZE, 0).numpy()}
    return (lambda: session.run(None, feed)), (lambda x: session.run(None, {name: x})[0])


def _openvino(path: Path) -> tuple[Callable[[], object], Callable[[np.ndarray], np.ndarray],
                                   dict]:
    compiled = ov.Core().compile_model(str(path), "CPU", {
        "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1, "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    x = random_images(1, SIZE, 0).numpy()

    def infer(batch: np.ndarray) -> np.ndarray:
        out = []
        for one in batch:
            request.infer({0: one[None]})
            out.append(request.get_output_tensor(0).data.copy())
        return np.concatenate(out)

    layers = [(op.get_rt_info()["layerType"].astype(str),
               op.get_rt_info()["runtimePrecision"].astype(str))
              for op in compiled.get_runtime_model().get_ops()]
    return (lambda: request.infer({0: x})), infer, openvino_coverage(layers)


@pytest.mark.parametrize("name", BACKBONES)
def test_openvino_beside_onnxruntime(name: str, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    example = random_images(1, SIZE, 0)
    paths = {"fp32": export_fp32(backbone_with_data_statistics(name, SIZE, NUM_CLASSES),
                                 example, tmp_path / "fp32.onnx"),
             "w8a8": export_quantized(quantised_backbone(name, SIZE, 8, 8), example,
                                      tmp_path / "w8a8.onnx")}
    calls, infers, coverage = {}, {}, {}
    for variant, path in paths.items():
        calls[("onnxruntime", variant)], infers[("onnxruntime", variant)] = _ort(path)
        calls[("openvino", variant)], infers[("openvino", variant)], coverage[variant] = \
            _openvino(path)
    samples = _interleaved(calls, ROUNDS)
    model, flags, vnni = cpu_info()
    images = random_images(16, SIZE, 30).numpy()
    agreement = float((infers[("openvino", "w8a8")](images).argmax(1)
                       == infers[("onnxruntime", "w8a8")](images).argmax(1)).mean())
    speedup = {rt: paired_ratio(samples[(rt, "fp32")], samples[(rt, "w8a8")])
               for rt in RUNTIMES}
    print(f"\n{name} 224x224 batch 1, 1 thread, {ROUNDS} rounds; CPU {model}; "
          f"flags {' '.join(flags)}; VNNI: {' '.join(vnni) or 'none'}")
    for (rt, variant), s in samples.items():
        print(f"  {rt:12s} {variant:5s} p50 {np.median(s) * 1e3:8.3f} ms")
    for rt in RUNTIMES:
        print(f"  {rt:12s} W8A8 speed-up over its FP32: {speedup[rt]:.2f}x")
    for variant in VARIANTS:
        ratio = paired_ratio(samples[("onnxruntime", variant)], samples[("openvino", variant)])
        print(f"  {variant}: OpenVINO {ratio:.2f}x ONNX Runtime's speed")
    print(f"  OpenVINO integer coverage: FP32 {coverage['fp32']['int_coverage']}, "
          f"W8A8 {coverage['w8a8']['int_coverage']} ({coverage['w8a8']['layers']})")
    print(f"  W8A8 top-1 agreement OpenVINO vs ONNX Runtime on {len(images)} random images: "
          f"{agreement:.3f}")
    assert coverage["w8a8"]["int_coverage"] == 1.0, coverage["w8a8"]
    assert coverage["fp32"]["int_coverage"] == 0.0
    if name == "resnet18":
        if vnni:
            assert speedup["openvino"] >= TARGET_OV_W8A8_SPEEDUP, speedup
        else:
            print(f"  target (OpenVINO W8A8 >= {TARGET_OV_W8A8_SPEEDUP}x its FP32) applies to "
                  f"VNNI CPUs only; measured {speedup['openvino']:.2f}x")
