"""Integer coverage: which of the nodes ONNX Runtime really runs compute in integer arithmetic.

Every node of ONNX Runtime's optimised graph (``bench.deploy.kernels.graph_coverage``) that
computes counts, not only convolutions and matrix products: Mul, Sigmoid, pools, Add, Concat,
Softmax, an unfused Relu or Clip and so on. Not counted are the nodes that only move data or
keep quantisation's books (``NOT_COMPUTE``: Quantize/DequantizeLinear, reshapes, transposes,
slices, casts, NCHWc reorders) and shape arithmetic on int64 tensors. A counted node runs integer
when it is one of ONNX Runtime's integer kernels (``INTEGER_KERNELS``: QLinearConv,
QGemm, QLinearMul, QLinearSigmoid, QLinearGlobalAveragePool, ...) or when it reads an 8-bit (or
other non-int64 integer) tensor, as a MaxPool does once the QDQ fusion drops its Q/DQ pair.

Coverage is reported two ways (``Coverage``):

- ``by_nodes``: the share of counted nodes that run integer;
- ``by_macs``: the share of their work, where a Conv, Gemm or MatMul (in any of ONNX Runtime's
  fused or quantised forms) costs its multiply-accumulates (output elements x input channels per
  group x kernel size, or x the reduced dimension) and every other counted node one operation
  per element of the largest tensor it reads or writes (an element-wise Mul its output, a pool
  its input). Sizes are those of one image: the batch axis counts 1. They come from ONNX shape
  inference on the exported file, whose tensor names ONNX Runtime's fusions keep; where a size
  is still unknown ``by_macs`` is None and ``unsized`` names the nodes.

A model is integer only at full coverage (``Coverage.integer``).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import onnx
from onnx import TensorProto

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
"""ONNX Runtime's integer kernels (contrib ops included)."""
NOT_COMPUTE = frozenset({
    "Cast", "Constant", "ConstantOfShape", "DepthToSpace", "DequantizeLinear", "Dropout",
    "DynamicQuantizeLinear", "Expand", "Flatten", "Gather", "GatherElements", "Identity",
    "Pad", "QuantizeLinear", "ReorderInput", "ReorderOutput", "Reshape", "Shape", "Size",
    "Slice", "SpaceToDepth", "Split", "Squeeze", "Tile", "Transpose", "Unsqueeze"})
"""Data movement and quantisation bookkeeping: not counted."""
FLOAT_OUTPUT_KERNELS = frozenset({"DynamicQuantizeMatMul", "MatMulIntegerToFloat"})
"""Integer kernels whose output is float."""
INTEGER_TYPES = frozenset({TensorProto.INT4, TensorProto.INT8, TensorProto.INT16,
                           TensorProto.INT32, TensorProto.UINT4, TensorProto.UINT8,
                           TensorProto.UINT16, TensorProto.UINT32})
"""Element types an integer computation reads (int64 is shape arithmetic)."""
CONVS = {"Conv": 1, "ConvInteger": 1, "FusedConv": 1, "NchwcConv": 1, "QLinearConv": 3}
"""Convolutions by the input slot of their weight."""
MATMULS = frozenset({"DynamicQuantizeMatMul", "FusedGemm", "FusedMatMul", "Gemm", "MatMul",
                     "MatMulInteger", "MatMulIntegerToFloat", "QGemm", "QLinearMatMul"})
"""Matrix products: output elements x the reduced dimension of their first input."""


@dataclass(frozen=True)
class Coverage:
    """Counted nodes and their work in one optimised graph, integer and float."""

    nodes: int
    integer_nodes: int
    macs: int
    integer_macs: int
    float_nodes: dict[str, int] = field(default_factory=dict)
    """Counted nodes that run in float, by op type."""
    work_by_op: dict[str, int] = field(default_factory=dict)
    """Work (MACs, or elements for non-MAC nodes) of the counted nodes, by op type."""
    unsized: tuple[str, ...] = ()
    """Counted nodes whose work could not be sized (then ``by_macs`` is None)."""

    @property
    def by_nodes(self) -> float | None:
        """Share of counted nodes on integer kernels; None for a graph with none."""
        return self.integer_nodes / self.nodes if self.nodes else None

    @property
    def by_macs(self) -> float | None:
        """Share of the counted work done in integer arithmetic (module docstring)."""
        return self.integer_macs / self.macs if self.macs and not self.unsized else None

    @property
    def integer(self) -> bool:
        """Whether every counted node runs integer."""
        return self.nodes > 0 and self.integer_nodes == self.nodes


class _Tensors:
    """Element types and shapes (batch axis 1) of an optimised graph's tensors, from shape
    inference on the source model and, for tensors the optimiser made, from their producers."""

    def __init__(self, optimized: onnx.ModelProto, source: onnx.ModelProto) -> None:
        inferred = onnx.shape_inference.infer_shapes(source)
        self.types: dict[str, int] = {}
        self.shapes: dict[str, tuple[int, ...] | None] = {}
        for info in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output,
                     *optimized.graph.input, *optimized.graph.output]:
            tensor = info.type.tensor_type
            if tensor.elem_type:
                self.types[info.name] = tensor.elem_type
            if tensor.HasField("shape"):
                self.shapes[info.name] = tuple(d.dim_value if d.HasField("dim_value") else 1
                                               for d in tensor.shape.dim)
        self.inits = {i.name: i for i in [*source.graph.initializer,
                                          *optimized.graph.initializer]}
        for name, init in self.inits.items():
            self.types[name] = init.data_type
            self.shapes[name] = tuple(init.dims)
        self.producers = {out: node for node in optimized.graph.node for out in node.output}

    def elem_type(self, name: str, depth: int = 0) -> int | None:
        if name in self.types or depth > 64:
            return self.types.get(name)
        node = self.producers.get(name)
        if node is None:
            return None
        if node.op_type in INTEGER_KERNELS or node.op_type == "QuantizeLinear":
            return TensorProto.FLOAT if node.op_type in FLOAT_OUTPUT_KERNELS else TensorProto.UINT8
        if node.op_type == "DequantizeLinear":
            return TensorProto.FLOAT
        return self.elem_type(node.input[0], depth + 1) if node.input else None

    def shape(self, name: str, depth: int = 0) -> tuple[int, ...] | None:
        """A tensor's shape; a tensor the optimiser made takes its producer's first input's
        (the optimiser's new tensors are duplicated DQ outputs and fused element-wise ops)."""
        if name in self.shapes or depth > 64:
            return self.shapes.get(name)
        node = self.producers.get(name)
        return self.shape(node.input[0], depth + 1) if node is not None and node.input else None


def _size(shape: tuple[int, ...] | None) -> int | None:
    return None if shape is None else math.prod(shape)


def _work(node: onnx.NodeProto, tensors: _Tensors) -> int | None:
    """Multiply-accumulates of a Conv/Gemm/MatMul, else elements of its largest tensor."""
    out = _size(tensors.shape(node.output[0]))
    if node.op_type in CONVS:
        weight = tensors.shape(node.input[CONVS[node.op_type]])
        return None if out is None or weight is None else out * math.prod(weight[1:])
    if node.op_type in MATMULS:
        a = tensors.shape(node.input[0])
        if out is None or not a:
            return None
        trans_a = any(attr.name == "transA" and attr.i for attr in node.attribute)
        return out * (a[0] if trans_a else a[-1])
    sizes = [_size(tensors.shape(name)) for name in [*node.input, *node.output]
             if name and name not in tensors.inits]
    known = [s for s in sizes if s is not None]
    return max(known) if known else None


def _counted(node: onnx.NodeProto, tensors: _Tensors) -> bool:
    if node.op_type in NOT_COMPUTE:
        return False
    return not node.input or tensors.elem_type(node.input[0]) != TensorProto.INT64


def _runs_integer(node: onnx.NodeProto, tensors: _Tensors) -> bool:
    return node.op_type in INTEGER_KERNELS or (
        bool(node.input) and tensors.elem_type(node.input[0]) in INTEGER_TYPES)


def coverage_of(optimized: onnx.ModelProto, source: onnx.ModelProto) -> Coverage:
    """Integer coverage of ``optimized`` (ONNX Runtime's optimised graph of ``source``, the
    exported model), by nodes and by work; see the module docstring."""
    tensors = _Tensors(optimized, source)
    nodes = integer_nodes = macs = integer_macs = 0
    floats: Counter[str] = Counter()
    work_by_op: Counter[str] = Counter()
    unsized = []
    for node in optimized.graph.node:
        if not _counted(node, tensors):
            continue
        work = _work(node, tensors)
        if work is None:
            unsized.append(node.name or node.output[0])
            work = 0
        nodes += 1
        macs += work
        work_by_op[node.op_type] += work
        if _runs_integer(node, tensors):
            integer_nodes += 1
            integer_macs += work
        else:
            floats[node.op_type] += 1
    return Coverage(nodes, integer_nodes, macs, integer_macs, dict(sorted(floats.items())),
                    dict(sorted(work_by_op.items())), tuple(unsized))

