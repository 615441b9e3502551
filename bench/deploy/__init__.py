"""Deployment: ONNX export, integer-kernel checks, output agreement and packed model size."""

from bench.deploy.agreement import Agreement, agreement, compare_logits
from bench.deploy.export import ExportError, export_fp32, export_quantized
from bench.deploy.kernels import INTEGER_KERNELS, count_kernels, integer_kernel_count
from bench.deploy.packing import (
    PackedInfo,
    PackedLayer,
    count_params,
    count_params_and_macs,
    expected_packed_bits,
    expected_packed_bytes,
    pack_quantized,
    unpack,
)

__all__ = [
    "INTEGER_KERNELS",
    "Agreement",
    "ExportError",
    "PackedInfo",
    "PackedLayer",
    "agreement",
    "compare_logits",
    "count_kernels",
    "count_params",
    "count_params_and_macs",
    "expected_packed_bits",
    "expected_packed_bytes",
    "export_fp32",
    "export_quantized",
    "integer_kernel_count",
    "pack_quantized",
    "unpack",
]
