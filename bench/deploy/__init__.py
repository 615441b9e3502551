"""Deployment: ONNX export, integer-kernel checks, output agreement and packed model size.

The names below are imported from their modules on first use, so that importing the package
(as grid planning does for bench.deploy.settings) does not load torch, Brevitas or ONNX.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from bench.lazy import lazy_exports

_EXPORTS = {
    "Agreement": "agreement",
    "agreement": "agreement",
    "compare_logits": "agreement",
    "ExportError": "export",
    "export_fp32": "export",
    "export_quantized": "export",
    "Coverage": "coverage",
    "INTEGER_KERNELS": "kernels",
    "count_kernels": "kernels",
    "graph_coverage": "kernels",
    "integer_kernel_count": "kernels",
    "PackedInfo": "packing",
    "PackedLayer": "packing",
    "count_params": "packing",
    "count_params_and_macs": "packing",
    "expected_packed_bits": "packing",
    "expected_packed_bytes": "packing",
    "pack_quantized": "packing",
    "unpack": "packing",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)


class _Package(types.ModuleType):
    """The package, whose ``agreement`` stays the function: importing the submodule
    ``bench.deploy.agreement`` (as stage.py does) would otherwise bind the module over it."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == name:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
