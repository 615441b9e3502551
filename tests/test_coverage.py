"""Integer coverage counts every compute node of ONNX Runtime's optimised graph, by nodes and by
MACs, and a model is integer only at full coverage (bench.deploy.coverage)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from bench.deploy import export_fp32
from bench.deploy.kernels import graph_coverage
from bench.deploy.packing import count_params_and_macs
from bench.deploy.stage import container_note, deploy_flags
from tests.backbones import backbone_with_data_statistics

CHANNELS, SIZE = 4, 8
MAC_OPS = ("Conv", "FusedConv", "FusedGemm", "Gemm", "MatMul")


def _se_between_convs(quantise_se: bool) -> onnx.ModelProto:
    """Two QDQ 1x1 convolutions with a squeeze-excitation between them (GlobalAveragePool ->
    Sigmoid -> Mul by the feature map), in float or, with ``quantise_se``, with Q/DQ around
    each of its nodes so that ONNX Runtime fuses them into QLinear kernels."""
    rng = np.random.default_rng(0)
    inits = [helper.make_tensor("s", TensorProto.FLOAT, (), [0.05]),
             helper.make_tensor("z", TensorProto.UINT8, (), [128]),
             helper.make_tensor("ws", TensorProto.FLOAT, (), [0.02]),
             helper.make_tensor("wz", TensorProto.INT8, (), [0])]
    for name in ("w1", "w2"):
        inits.append(helper.make_tensor(name, TensorProto.INT8, (CHANNELS, CHANNELS, 1, 1),
                                        rng.integers(-100, 100, CHANNELS * CHANNELS).tolist()))

    def qdq(x: str, out: str) -> list[onnx.NodeProto]:
        return [helper.make_node("QuantizeLinear", [x, "s", "z"], [f"{out}_q"]),
                helper.make_node("DequantizeLinear", [f"{out}_q", "s", "z"], [out])]

    def maybe(x: str, out: str) -> list[onnx.NodeProto]:
        return qdq(x, out) if quantise_se else [helper.make_node("Identity", [x], [out])]

    nodes = [*qdq("x", "xd"),
             helper.make_node("DequantizeLinear", ["w1", "ws", "wz"], ["w1d"]),
             helper.make_node("DequantizeLinear", ["w2", "ws", "wz"], ["w2d"]),
             helper.make_node("Conv", ["xd", "w1d"], ["c1"]), *qdq("c1", "c1d"),
             helper.make_node("GlobalAveragePool", ["c1d"], ["pool"]), *maybe("pool", "poold"),
             helper.make_node("Sigmoid", ["poold"], ["gate"]), *maybe("gate", "gated"),
             helper.make_node("Mul", ["c1d", "gated"], ["scaled"]), *qdq("scaled", "scaledd"),
             helper.make_node("Conv", ["scaledd", "w2d"], ["c2"]), *qdq("c2", "out")]
    shape = (1, CHANNELS, SIZE, SIZE)
    graph = helper.make_graph(nodes, "se", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, shape)], [helper.make_tensor_value_info(
            "out", TensorProto.FLOAT, shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_float_squeeze_excitation_between_integer_convs_is_not_integer(tmp_path):
    """Both convolutions run QLinearConv, but the pool, Sigmoid and Mul run in float: the model
    is not integer, by nodes (2 of 5) or by MACs (the convolutions' 2 x 4 x 4 x 64 against one
    operation per element of the float nodes: 256 + 4 + 256)."""
    path = tmp_path / "se.onnx"
    onnx.save(_se_between_convs(quantise_se=False), str(path))
    coverage = graph_coverage(path)
    assert coverage.float_nodes == {"GlobalAveragePool": 1, "Mul": 1, "Sigmoid": 1}
    assert not coverage.integer
    assert coverage.by_nodes == pytest.approx(2 / 5)
    conv_macs = 2 * CHANNELS * CHANNELS * SIZE * SIZE
    float_work = CHANNELS * SIZE * SIZE + CHANNELS + CHANNELS * SIZE * SIZE
    assert coverage.by_macs == pytest.approx(conv_macs / (conv_macs + float_work))
    assert deploy_flags(True, coverage.by_nodes, 1.0, 0.99) == ["partially_integer"]
    note = container_note(True, coverage.by_nodes, 8, 8, coverage.by_macs)
    assert note["latency_container"] == "mixed int8/float32"
    assert "of the MACs" in note["latency_note"]


def test_quantised_squeeze_excitation_runs_qlinear_kernels(tmp_path):
    """The control: with Q/DQ around the pool, Sigmoid and Mul, ONNX Runtime fuses them into
    QLinearGlobalAveragePool, QLinearSigmoid and QLinearMul and the model is integer."""
    path = tmp_path / "se.onnx"
    onnx.save(_se_between_convs(quantise_se=True), str(path))
    coverage = graph_coverage(path)
    assert coverage.float_nodes == {} and coverage.integer
    assert coverage.by_nodes == coverage.by_macs == 1.0
    assert set(coverage.work_by_op) == {"QLinearConv", "QLinearGlobalAveragePool",
                                        "QLinearMul", "QLinearSigmoid"}


def test_data_movement_is_not_counted_and_a_uint8_max_pool_is_integer(tmp_path):
    """Flatten and the Q/DQ nodes are bookkeeping; a MaxPool that reads uint8 (its Q/DQ pair
    dropped by the QDQ fusion) computes in integer."""
    inits = [helper.make_tensor("s", TensorProto.FLOAT, (), [0.1]),
             helper.make_tensor("z", TensorProto.UINT8, (), [0])]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("MaxPool", ["xd"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("QuantizeLinear", ["p", "s", "z"], ["pq"]),
             helper.make_node("DequantizeLinear", ["pq", "s", "z"], ["pd"]),
             helper.make_node("Flatten", ["pd"], ["out"])]
    graph = helper.make_graph(nodes, "pool", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, (1, 2, 4, 4))], [helper.make_tensor_value_info(
            "out", TensorProto.FLOAT, (1, 8))], inits)
    path = tmp_path / "pool.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    coverage = graph_coverage(path)
    assert coverage.nodes == 1 and coverage.integer and coverage.work_by_op == {"MaxPool": 32}


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_b0"])
def test_macs_of_convolutions_and_matmuls_match_torchs_flop_counter(backbone, tmp_path):
    """The MACs the coverage weighs by, summed over an FP32 graph's convolutions and matrix
    products, are torch.utils.flop_counter's (an independent count, as `count_params_and_macs`
    reports it); every node of the FP32 graph runs in float."""
    model = backbone_with_data_statistics(backbone, 32)
    example = torch.zeros(1, 3, 32, 32)
    coverage = graph_coverage(export_fp32(model, example, tmp_path / "fp32.onnx"))
    _, macs = count_params_and_macs(model, example)
    assert sum(coverage.work_by_op.get(op, 0) for op in MAC_OPS) == macs
    assert coverage.integer_nodes == 0 and coverage.by_macs == 0.0 and not coverage.unsized
