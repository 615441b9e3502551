"""The `deploy` post-training stage: export to ONNX, check it, evaluate it, size it.

FP32 cells export plain ONNX; quantised cells export Brevitas QCDQ ONNX and a bit-packed
weight file. ONNX Runtime runs the exported model on the whole test split: its accuracy, its
top-1 agreement with the torch (fake-quant) model's logits and the largest logit difference are
stored, with the integer kernels of its optimised graph, the parameter count of the deployed
model (quantised models have their batch norms folded) and the MACs of one image through the
backbone's float architecture (quantisation does not change them).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from bench.data import normalize
from bench.deploy.agreement import compare_logits
from bench.deploy.export import export_fp32, export_quantized
from bench.deploy.kernels import count_kernels, integer_kernel_count
from bench.deploy.packing import count_params, count_params_and_macs, pack_quantized
from bench.deploy.settings import DeploySettings
from bench.models import get_backbone
from bench.runner.stages import StageInput

ONNX_FILE = "model.onnx"
PACKED_FILE = "model.packed.npz"
FLOAT_BYTES = 4
NO_INTEGER_KERNELS = "no_integer_kernels"
LOW_AGREEMENT = "low_agreement"


def onnx_logits(path: Any, images: torch.Tensor, batch_size: int) -> np.ndarray:
    """ONNX Runtime logits for uint8 images, normalised as the harness does, in batches."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([
        session.run(None, {name: normalize(images[i:i + batch_size]).numpy()})[0]
        for i in range(0, len(images), batch_size)])


def deploy_flags(quantized: bool, int_kernels: int, agreement: float, min_agreement: float
                 ) -> list[str]:
    """Why a deployed model's figures need care: an int model that runs no integer kernel
    (it is not reported as int) or outputs that disagree with the torch model."""
    flags = []
    if quantized and int_kernels == 0:
        flags.append(NO_INTEGER_KERNELS)
    if agreement < min_agreement:
        flags.append(LOW_AGREEMENT)
    return flags


def container_note(quantized: bool, int_kernels: int, w_bits: int, a_bits: int
                   ) -> dict[str, Any]:
    """What precision ONNX Runtime really computes in, which is what latency measures."""
    if not quantized:
        return {"latency_container": "float32"}
    if int_kernels == 0:
        return {"latency_container": "float32 (quantise/dequantise around float kernels)"}
    note: dict[str, Any] = {"latency_container": "int8"}
    if min(w_bits, a_bits) < 8:
        note["latency_note"] = (f"W{w_bits}A{a_bits} runs on int8 kernels: ONNX Runtime has no "
                                "sub-8-bit kernels, so latency is that of an int8 container; "
                                "packed_size_bytes is the real sub-8-bit size")
    return note


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Export and packing run many tiny ops: one thread is several times faster than a pool."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _cpu_model(model: nn.Module) -> nn.Module:
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    return model if on_cpu else copy.deepcopy(model).cpu()


def deploy(inp: StageInput) -> dict[str, Any]:
    """Export, check and size the cell's model; see the module docstring."""
    with _one_torch_thread():
        return _deploy(inp)


def _deploy(inp: StageInput) -> dict[str, Any]:
    settings: DeploySettings = inp.settings  # type: ignore[assignment]
    cfg, images = inp.cell.config, inp.data.images
    test = inp.data.split.test
    model = _cpu_model(inp.model)
    example = normalize(images.images[test[:1]])
    onnx_path = inp.folder / ONNX_FILE
    if inp.quantized:
        export_quantized(model, example, onnx_path)
    else:
        export_fp32(model, example, onnx_path)
    params = count_params(model)
    _, macs = count_params_and_macs(get_backbone(cfg.backbone.name).build(inp.data.num_classes),
                                    example)
    kernels = count_kernels(onnx_path, settings.optimization_level)
    int_kernels = integer_kernel_count(kernels)
    logits = onnx_logits(onnx_path, images.images[test], settings.eval_batch_size)
    check = compare_logits(logits, inp.test_logits.numpy(), images.labels[test].numpy())

    details: dict[str, Any] = {"onnx_file": ONNX_FILE, "input_shape": list(example.shape[1:])}
    if inp.quantized:
        packed = pack_quantized(model, None, inp.folder / PACKED_FILE)
        packed_size = packed.size_bytes
        details.update(packed_file=PACKED_FILE, packed_size_source="packed file",
                       packed_bits=packed.bits)
    else:
        packed_size = params * FLOAT_BYTES
        details.update(packed_size_source="float32 weights (4 bytes x params)")

    flags = deploy_flags(inp.quantized, int_kernels, check.top1_agreement,
                         settings.min_agreement)
    columns = {
        "size_bytes": onnx_path.stat().st_size,
        "packed_size_bytes": packed_size,
        "int_kernels": int_kernels,
        "deployed_accuracy": check.accuracy,
        "agreement": check.top1_agreement,
        "params": params,
        "macs": macs,
        "deploy_flags": ",".join(flags),
    }
    return {"columns": columns, **details, "kernels": kernels,
            "max_abs_logit_diff": check.max_abs_logit_diff, "n_test": check.n,
            "integer_model": inp.quantized and int_kernels > 0,
            **container_note(inp.quantized, int_kernels, cfg.w_bits, cfg.a_bits)}
