"""The `deploy` post-training stage: export to ONNX, check it, evaluate it, size it.

FP32 cells export plain ONNX; quantised cells export Brevitas QCDQ ONNX (rewritten so that ONNX
Runtime fuses it into integer kernels) and a bit-packed weight file. ONNX Runtime runs the
exported model on the whole test split: its per-sample logits and predictions are stored
(``deployed_predictions.npz``, the keys of ``predictions.npz``) beside the uint8 test images
themselves (``test_inputs.npz``, for a device's accuracy mode), with its accuracy and macro-F1,
its calibration and discrimination (ECE, Brier score, macro AUROC: bench.metrics), its top-1
agreement with the torch (fake-quant) model and the largest logit difference, the kernels of
its optimised graph and their integer coverage (``bench.deploy.coverage``: every compute node,
by nodes and by MACs, with the op types left in float), the parameter count of the deployed model
(quantised models have their batch norms folded) and the MACs of one image through the
backbone's float architecture (quantisation does not change them).

The file a device ships and times is ``shipped_file``: the ONNX model. Sub-8-bit weights stay in
int8 containers there, because the pinned ONNX Runtime runs INT4 weights in float (probed by
``kernels.int4_weights_run_integer`` and recorded); the packed file is their storage size.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from bench.data import IMAGENET_MEAN, IMAGENET_STD, normalize
from bench.deploy.agreement import compare_logits
from bench.deploy.coverage import coverage_of
from bench.deploy.export import export_fp32, export_quantized
from bench.deploy.kernels import (
    int4_weights_run_integer,
    integer_kernel_count,
    op_counts,
    optimized_graph,
)
from bench.deploy.packing import count_params, count_params_and_macs, pack_quantized
from bench.deploy.runtime import (
    DEFAULT_KERNELS,
    session_config,
    session_options,
    u8s8_saturates,
)
from bench.deploy.settings import DeploySettings
from bench.metrics import DEFINITIONS, classification_metrics, probability_metrics
from bench.models import get_backbone
from bench.runner.stages import StageInput

ONNX_FILE = "model.onnx"
PACKED_FILE = "model.packed.npz"
DEPLOYED_PREDICTIONS = "deployed_predictions.npz"
"""ONNX Runtime's test-split predictions, with the keys of the cell's predictions.npz."""
TEST_INPUTS = "test_inputs.npz"
"""The test split's uint8 images as evaluated, for a device's accuracy mode
(``bench.measure.preprocess``)."""
FLOAT_BYTES = 4
NO_INTEGER_KERNELS = "no_integer_kernels"
PARTIALLY_INTEGER = "partially_integer"
LOW_AGREEMENT = "low_agreement"


def deployed_session(path: Any, config: dict[str, str] | None = None) -> ort.InferenceSession:
    """An ONNX Runtime CPU session with the deploy stage's settings (``bench.deploy.runtime``;
    default: exact kernels), as the stage evaluates a deployed model."""
    return ort.InferenceSession(str(path), session_options(config),
                                providers=["CPUExecutionProvider"])


def onnx_logits(path: Any, images: torch.Tensor, batch_size: int,
                config: dict[str, str] | None = None) -> np.ndarray:
    """ONNX Runtime logits for uint8 images, normalised as the harness does, in batches."""
    session = deployed_session(path, config)
    name = session.get_inputs()[0].name
    return np.concatenate([
        session.run(None, {name: normalize(images[i:i + batch_size]).numpy()})[0]
        for i in range(0, len(images), batch_size)])


def deploy_flags(quantized: bool, coverage: float | None, agreement: float,
                 min_agreement: float) -> list[str]:
    """Why a deployed model's figures need care: a quantised model that runs no integer kernel
    or runs some of its compute nodes in float (``coverage``, by nodes, below 1: it is not
    reported as integer), or outputs that disagree with the torch model."""
    flags = []
    if quantized and not coverage:
        flags.append(NO_INTEGER_KERNELS)
    elif quantized and coverage < 1.0:
        flags.append(PARTIALLY_INTEGER)
    if agreement < min_agreement:
        flags.append(LOW_AGREEMENT)
    return flags


def container_note(quantized: bool, coverage: float | None, w_bits: int, a_bits: int,
                   macs_coverage: float | None = None) -> dict[str, Any]:
    """What precision ONNX Runtime really computes in, which is what latency measures: int8
    only when every compute node runs integer (``coverage`` by nodes, ``macs_coverage`` by
    MACs, see ``bench.deploy.coverage``)."""
    if not quantized:
        return {"latency_container": "float32"}
    if not coverage:
        return {"latency_container": "float32 (quantise/dequantise around float kernels)"}
    if coverage < 1.0:
        macs = "" if macs_coverage is None else f" ({macs_coverage:.1%} of the MACs)"
        return {"latency_container": "mixed int8/float32",
                "latency_note": f"{coverage:.0%} of the compute nodes{macs} run integer "
                                "kernels, the rest float: not an integer latency"}
    note: dict[str, Any] = {"latency_container": "int8"}
    if min(w_bits, a_bits) < 8:
        note["latency_note"] = (f"W{w_bits}A{a_bits} runs on int8 kernels: ONNX Runtime has no "
                                "sub-8-bit kernels, so latency is that of an int8 container; "
                                "packed_size_bytes is the real sub-8-bit size")
    return note


def save_predictions(path: Any, index: np.ndarray, labels: np.ndarray, logits: np.ndarray
                     ) -> None:
    """Per-sample test logits and predictions with the keys of a cell's predictions.npz."""
    np.savez_compressed(path, index=index, labels=labels, logits=logits,
                        predictions=logits.argmax(1))


def save_test_inputs(path: Any, images: torch.Tensor, labels: np.ndarray, index: np.ndarray,
                     batch_size: int) -> None:
    """The uint8 test images (N, 3, H, W) the stage evaluated, their labels and indices, the
    normalisation the device applies itself (float32 mean and std) and the evaluation batch size:
    what `bench measure` needs to run the deployed model over the same inputs."""
    np.savez_compressed(path, images=images.numpy(), labels=labels, index=index,
                        mean=np.asarray(IMAGENET_MEAN, dtype=np.float32),
                        std=np.asarray(IMAGENET_STD, dtype=np.float32),
                        batch_size=np.int64(batch_size))


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
    optimized = optimized_graph(onnx_path, settings.optimization_level)
    kernels = op_counts(optimized)
    int_kernels = integer_kernel_count(kernels)
    coverage = coverage_of(optimized, onnx.load(str(onnx_path)))
    logits = onnx_logits(onnx_path, images.images[test], settings.eval_batch_size)
    labels = images.labels[test].numpy()
    check = compare_logits(logits, inp.test_logits.numpy(), labels)
    save_predictions(inp.folder / DEPLOYED_PREDICTIONS, np.asarray(test), labels, logits)
    deployed_f1 = classification_metrics(labels, logits.argmax(1), inp.data.num_classes)
    save_test_inputs(inp.folder / TEST_INPUTS, images.images[test], labels, np.asarray(test),
                     settings.eval_batch_size)

    details: dict[str, Any] = {
        "onnx_file": ONNX_FILE, "shipped_file": ONNX_FILE,
        "deployed_predictions": DEPLOYED_PREDICTIONS, "test_inputs_file": TEST_INPUTS,
        "input_shape": list(example.shape[1:]),
        "kernel_policy": DEFAULT_KERNELS, "session_config": session_config(DEFAULT_KERNELS),
        "u8s8_saturates": u8s8_saturates()}
    if inp.quantized and details["u8s8_saturates"]:
        fast = onnx_logits(onnx_path, images.images[test], settings.eval_batch_size,
                           session_config("fast"))
        fast_check = compare_logits(fast, inp.test_logits.numpy(), labels)
        details.update(fast_kernels_agreement=fast_check.top1_agreement,
                       fast_kernels_max_abs_logit_diff=fast_check.max_abs_logit_diff)
    if inp.quantized:
        packed = pack_quantized(model, None, inp.folder / PACKED_FILE)
        packed_size = packed.size_bytes
        details.update(packed_file=PACKED_FILE, packed_size_source="packed file",
                       packed_bits=packed.bits,
                       int4_weights_integer=int4_weights_run_integer(settings.optimization_level))
    else:
        packed_size = params * FLOAT_BYTES
        details.update(packed_size_source="float32 weights (4 bytes x params)")

    flags = deploy_flags(inp.quantized, coverage.by_nodes, check.top1_agreement,
                         settings.min_agreement)
    columns = {
        "size_bytes": onnx_path.stat().st_size,
        "shipped_size_bytes": (inp.folder / details["shipped_file"]).stat().st_size,
        "packed_size_bytes": packed_size,
        "int_kernels": int_kernels,
        "int_coverage": coverage.by_nodes,
        "int_coverage_macs": coverage.by_macs,
        "deployed_accuracy": check.accuracy,
        "agreement": check.top1_agreement,
        "params": params,
        "macs": macs,
        "deploy_flags": ",".join(flags),
        "deployed_macro_f1": deployed_f1["macro_f1"],
        **probability_metrics(labels, logits),
    }
    return {"columns": columns, **details, "probability_metrics": DEFINITIONS, "kernels": kernels,
            "max_abs_logit_diff": check.max_abs_logit_diff, "n_test": check.n,
            "float_nodes": coverage.float_nodes, "unsized_nodes": list(coverage.unsized),
            "integer_model": inp.quantized and coverage.integer,
            **container_note(inp.quantized, coverage.by_nodes, cfg.w_bits, cfg.a_bits,
                             coverage.by_macs)}
