"""Count the kernels ONNX Runtime really runs, after its graph optimisations.

A QCDQ file only *describes* integer arithmetic; ONNX Runtime's QDQ fusion decides whether
it becomes integer kernels (QLinearConv, QGemm, ...) or float kernels wrapped in
Quantize/Dequantize. Counting the optimised graph tells which one happened, and
``bench.deploy.coverage`` which share of its compute nodes (and of their MACs) runs integer.
"""

from __future__ import annotations

import functools
import tempfile
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from bench.deploy.coverage import INTEGER_KERNELS, Coverage, coverage_of
from bench.deploy.runtime import session_options

_LEVELS = {
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def optimized_graph(
    onnx_path: str | Path,
    level: str = "extended",
    providers: tuple[str, ...] = ("CPUExecutionProvider",),
    config: Mapping[str, str] | None = None,
) -> onnx.ModelProto:
    """Return the graph ONNX Runtime builds for ``onnx_path`` at the given optimisation level
    (session config entries ``config``, default: ``bench.deploy.runtime``'s exact kernels)."""
    options = session_options(config)
    options.graph_optimization_level = _LEVELS[level]
    options.intra_op_num_threads = 1
    with tempfile.TemporaryDirectory() as tmp:
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(onnx_path), options, providers=list(providers))
        return onnx.load(options.optimized_model_filepath)


def count_kernels(onnx_path: str | Path, level: str = "extended",
                  config: Mapping[str, str] | None = None) -> dict[str, int]:
    """Op-type counts of ONNX Runtime's optimised graph (CPU provider), sorted by name."""
    return op_counts(optimized_graph(onnx_path, level, config=config))


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Op-type counts of a graph, sorted by name."""
    return dict(sorted(Counter(node.op_type for node in model.graph.node).items()))


def integer_kernel_count(counts: Mapping[str, int]) -> int:
    """Number of nodes in ``counts`` that compute in integer arithmetic."""
    return sum(n for op, n in counts.items() if op in INTEGER_KERNELS)


def graph_coverage(onnx_path: str | Path, level: str = "extended",
                   config: Mapping[str, str] | None = None) -> Coverage:
    """Integer coverage (``bench.deploy.coverage``) of ONNX Runtime's optimised graph of the
    model at ``onnx_path``, by nodes and by MACs."""
    return coverage_of(optimized_graph(onnx_path, level, config=config),
                    onnx.load(str(onnx_path)))


def qdq_conv(weights: list[int], shape: tuple[int, int], *, weight_type: int = TensorProto.INT8,
             w_scale: float = 1.0, x_scale: float = 1.0, y_scale: float = 1.0, size: int = 4,
             opset: int = 21) -> onnx.ModelProto:
    """A 1x1 QDQ convolution, ``shape`` = (out, in) channels, with ``weights`` of
    ``weight_type`` (INT4 or INT8, zero point 0) on a ``size`` x ``size`` uint8 input: the
    smallest graph that ONNX Runtime's QDQ fusion can turn into one integer convolution."""
    out_channels, in_channels = shape
    inits = [helper.make_tensor("w", weight_type, (out_channels, in_channels, 1, 1), weights),
             helper.make_tensor("w_scale", TensorProto.FLOAT, (), [w_scale]),
             helper.make_tensor("w_zp", weight_type, (), [0]),
             helper.make_tensor("x_scale", TensorProto.FLOAT, (), [x_scale]),
             helper.make_tensor("x_zp", TensorProto.UINT8, (), [0]),
             helper.make_tensor("y_scale", TensorProto.FLOAT, (), [y_scale]),
             helper.make_tensor("y_zp", TensorProto.UINT8, (), [0])]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zp"], ["wd"]),
             helper.make_node("Conv", ["xd", "wd"], ["y"]),
             helper.make_node("QuantizeLinear", ["y", "y_scale", "y_zp"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "y_scale", "y_zp"], ["out"])]
    graph = helper.make_graph(
        nodes, "qdq_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, (1, in_channels, size, size))],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, (1, out_channels, size, size))],
        inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def probe_conv(weight_type: int = TensorProto.INT4) -> onnx.ModelProto:
    """A 2-channel 1x1 QDQ convolution (opset 21) with weights of ``weight_type`` (INT4 or
    INT8) and uint8 activations."""
    return qdq_conv([1, -2, 3, -4], (2, 2), weight_type=weight_type, w_scale=0.1, x_scale=0.05,
                    y_scale=0.05)


@functools.cache
def int4_weights_run_integer(level: str = "extended") -> bool:
    """Whether this ONNX Runtime runs a convolution with INT4 (opset 21) weights on an integer
    kernel. (onnxruntime 1.32 does not: it dequantises them and runs a float Conv, so the
    deploy stage keeps sub-8-bit weights in int8 containers and ships that file.)"""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "int4.onnx"
        onnx.save(probe_conv(TensorProto.INT4), str(path))
        try:
            result = graph_coverage(path, level)
        except (ort.capi.onnxruntime_pybind11_state.Fail, RuntimeError):
            return False
    return result.integer
