"""Count the kernels ONNX Runtime really runs, after its graph optimisations.

A QCDQ file only *describes* integer arithmetic; ONNX Runtime's QDQ fusion decides whether
it becomes integer kernels (QLinearConv, QGemm, ...) or float kernels wrapped in
Quantize/Dequantize. Counting the optimised graph tells which one happened.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import onnx
import onnxruntime as ort

INTEGER_KERNELS = frozenset(
    {
        "ConvInteger",
        "DynamicQuantizeLSTM",
        "DynamicQuantizeMatMul",
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "QAttention",
        "QGemm",
        "QLinearAdd",
        "QLinearAveragePool",
        "QLinearConcat",
        "QLinearConv",
        "QLinearConvTranspose",
        "QLinearGlobalAveragePool",
        "QLinearLeakyRelu",
        "QLinearMatMul",
        "QLinearMul",
        "QLinearReduceMean",
        "QLinearSigmoid",
        "QLinearSoftmax",
        "QLinearWhere",
    }
)

_LEVELS = {
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def optimized_graph(
    onnx_path: str | Path,
    level: str = "extended",
    providers: tuple[str, ...] = ("CPUExecutionProvider",),
) -> onnx.ModelProto:
    """Return the graph ONNX Runtime builds for ``onnx_path`` at the given optimisation level."""
    options = ort.SessionOptions()
    options.graph_optimization_level = _LEVELS[level]
    options.intra_op_num_threads = 1
    with tempfile.TemporaryDirectory() as tmp:
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(onnx_path), options, providers=list(providers))
        return onnx.load(options.optimized_model_filepath)


def count_kernels(onnx_path: str | Path, level: str = "extended") -> dict[str, int]:
    """Op-type counts of ONNX Runtime's optimised graph (CPU provider), sorted by name."""
    graph = optimized_graph(onnx_path, level).graph
    return dict(sorted(Counter(node.op_type for node in graph.node).items()))


def integer_kernel_count(counts: Mapping[str, int]) -> int:
    """Number of nodes in ``counts`` that compute in integer arithmetic."""
    return sum(n for op, n in counts.items() if op in INTEGER_KERNELS)
