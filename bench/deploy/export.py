"""Export a float model to plain ONNX and a Brevitas model to integer QCDQ ONNX.

Both exports use the TorchScript exporter (``dynamo=False``, opset 17) and give the input
and output a dynamic batch axis, so one file serves every batch size of a hardware profile.
A quantised export is rewritten (`bench.deploy.integer`) so that ONNX Runtime runs it on
integer kernels at every bit width, and its int32 biases are exported exactly.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import ClassVar

import onnx
import torch
from brevitas.export.onnx.standard.qcdq.handler import StdCDQCastONNXBiasQuantProxyHandler
from brevitas.export.onnx.standard.qcdq.manager import StdQCDQONNXManager
from torch import nn

from bench.deploy.integer import integer_friendly

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


INT32_RANGE = (-(2**31), 2**31 - 1)


def exact_int_bias(layer: nn.Module) -> torch.Tensor:
    """A layer's quantised bias as int32, recovered in float64.

    Brevitas' own ``quant_bias().int()`` divides in float32 and refuses ("QuantTensor not
    valid.") integers that come back more than 0.2 from a whole number: int32 biases above about
    2^21 do, once the bias scale (input scale x weight scale) is small, as in MobileNetV2 at
    W8A8 on 32x32 inputs. In float64 the integers of the fake-quant model are exact.
    """
    quant = layer.quant_bias()
    ints = torch.round(quant.value.double() / quant.scale.double() + quant.zero_point.double())
    return ints.clamp(*INT32_RANGE).to(torch.int32)


class _ExactBiasHandler(StdCDQCastONNXBiasQuantProxyHandler):
    """Brevitas' bias export with ``exact_int_bias`` for the integers."""

    def prepare_for_export(self, module: nn.Module) -> None:
        if not module.is_quant_enabled:
            self.symbolic_kwargs = None
            return
        self.validate(module)
        self.symbolic_kwargs = {
            "int_biases": {tm.bias.data_ptr(): exact_int_bias(tm)
                           for tm in module.tracked_module_list},
            "scale": module.scale(), "zero_point": module.zero_point(),
            "bit_width": module.bit_width()}


class _QCDQManager(StdQCDQONNXManager):
    handlers: ClassVar[list[type]] = [
        _ExactBiasHandler if h is StdCDQCastONNXBiasQuantProxyHandler else h
        for h in StdQCDQONNXManager.handlers]


def export_quantized(
    model: nn.Module, example_input: torch.Tensor, path: str | Path, dynamic_batch: bool = True
) -> Path:
    """Export a Brevitas-quantised model to QCDQ ONNX (int8 initialisers + Q/DQ nodes) that
    ONNX Runtime runs on integer kernels (``bench.deploy.integer``).

    Weights below 8 bits are still stored as int8 (the pinned ONNX Runtime runs INT4 weights
    in float, see ``kernels.int4_weights_run_integer``), so the file size does not shrink with
    the bit width: ``bench.deploy.packing`` writes the packed size.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            _QCDQManager.export(model, args=example_input, export_path=str(path),
                                keep_initializers_as_inputs=False,
                                **_export_kwargs(dynamic_batch))
    finally:
        model.train(training)
    onnx.save(integer_friendly(onnx.load(str(path))), str(path))
    return _check(path, dynamic_batch)
