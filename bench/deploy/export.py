"""Export a float model to plain ONNX and a Brevitas model to integer QCDQ ONNX.

Both exports use the TorchScript exporter (``dynamo=False``, opset 17) and give the input
and output a dynamic batch axis, so one file serves every batch size of a hardware profile.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BATCH_AXIS = "batch"


class ExportError(RuntimeError):
    """An export did not produce a valid ONNX model with the expected interface."""


def _export_kwargs(dynamic_batch: bool) -> dict:
    kwargs: dict = {
        "opset_version": OPSET,
        "dynamo": False,
        "input_names": [INPUT_NAME],
        "output_names": [OUTPUT_NAME],
    }
    if dynamic_batch:
        kwargs["dynamic_axes"] = {INPUT_NAME: {0: BATCH_AXIS}, OUTPUT_NAME: {0: BATCH_AXIS}}
    return kwargs


def _check(path: Path, dynamic_batch: bool) -> Path:
    model = onnx.load(str(path), load_external_data=False)
    onnx.checker.check_model(model)
    inputs = [i for i in model.graph.input if i.name == INPUT_NAME]
    if not inputs:
        raise ExportError(f"{path}: exported graph has no input named {INPUT_NAME!r}")
    if dynamic_batch and inputs[0].type.tensor_type.shape.dim[0].dim_param != BATCH_AXIS:
        raise ExportError(f"{path}: batch axis of {INPUT_NAME!r} is not dynamic")
    return path


def export_fp32(
    model: nn.Module, example_input: torch.Tensor, path: str | Path, dynamic_batch: bool = True
) -> Path:
    """Export a float model to ONNX (opset 17); returns the written path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example_input,), str(path), **_export_kwargs(dynamic_batch))
    finally:
        model.train(training)
    return _check(path, dynamic_batch)


def export_quantized(
    model: nn.Module, example_input: torch.Tensor, path: str | Path, dynamic_batch: bool = True
) -> Path:
    """Export a Brevitas-quantised model to QCDQ ONNX (int8 initialisers + Q/DQ nodes).

    Weights below 8 bits are still stored as int8 (with a Clip), so the file size does not
    shrink with the bit width: use ``bench.deploy.packing`` for the packed size.
    """
    from brevitas.export import export_onnx_qcdq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    training = model.training
    model.eval()
    try:
        export_onnx_qcdq(
            model,
            args=example_input,
            export_path=str(path),
            keep_initializers_as_inputs=False,
            **_export_kwargs(dynamic_batch),
        )
    finally:
        model.train(training)
    return _check(path, dynamic_batch)
