"""Sub-8-bit and residual models deploy fully integer (integer coverage 1.0), exactly, at 32 px.

The default run covers a representative subset (the small CNN at W2A2, ResNet-18 at W4A2 with
PACT, MobileNetV2 at W8A8 with the int32 biases that broke its export); every shipped backbone
at every shipped bit-width, at 32 and 224 px, is `tests/benchmarks/test_bench_deploy_matrix.py`.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from brevitas.export import export_onnx_qcdq
from onnx import TensorProto
from torch import nn
from torchvision.ops import SqueezeExcitation

from bench.deploy import count_kernels, export_quantized
from bench.deploy.integer import integer_friendly
from bench.deploy.kernels import (
    graph_coverage,
    int4_weights_run_integer,
    optimized_graph,
    probe_conv,
)
from bench.deploy.runtime import session_options
from bench.quant import QuantSpec, calibrate, quantization_disabled, quantize
from tests.backbones import quantised_backbone

SIZE = 32


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _inputs(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _quantised(backbone: str, w: int, a: int, scheme: str = "stats") -> nn.Module:
    return quantised_backbone(backbone, SIZE, w, a, scheme)


def _run(path: object, x: torch.Tensor, level: ort.GraphOptimizationLevel,
         config: dict[str, str] | None = None) -> np.ndarray:
    options = session_options(config)
    options.graph_optimization_level = level
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def _deployed(qmodel: nn.Module, tmp_path) -> tuple[dict[str, int], float, np.ndarray, float]:
    path = export_quantized(qmodel, _inputs(1, 0), tmp_path / "model.onnx")
    x = _inputs(8, 4)
    with torch.no_grad():
        reference = qmodel(x).numpy()
    deployed = _run(path, x, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
    agreement = float((deployed.argmax(1) == reference.argmax(1)).mean())
    return count_kernels(path), agreement, np.abs(deployed - reference).max(), graph_coverage(path)


@pytest.mark.parametrize(("backbone", "w", "a", "scheme", "adds"),
                         [("smallcnn", 2, 2, "stats", 0), ("resnet18", 4, 2, "pact", 8)])
def test_sub_8_bit_backbones_run_fully_integer_at_32px(backbone, w, a, scheme, adds, tmp_path):
    counts, agreement, max_diff, coverage = _deployed(_quantised(backbone, w, a, scheme), tmp_path)
    assert coverage.integer and coverage.by_macs == 1.0, counts
    assert counts.get("QLinearAdd", 0) == adds
    assert agreement == 1.0 and max_diff < 1e-3


@pytest.mark.parametrize("scheme", ["lsq", "pact"])
def test_mobilenet_v2_relu6_with_learned_ranges_runs_fully_integer(scheme, tmp_path):
    """A learned LSQ step or PACT alpha above 6/Q_P on a ReLU6 kept the exported Clip(0, 6),
    which ONNX Runtime then fused into a float FusedConv (17 of 52 convolutions integer under
    LSQ W8A8); the ReLU6 quantisers' ranges are capped at 6, so every convolution is integer."""
    counts, agreement, _, coverage = _deployed(_quantised("mobilenet_v2", 8, 8, scheme), tmp_path)
    assert coverage.integer and coverage.by_macs == 1.0, counts
    assert "FusedConv" not in counts and "Clip" not in counts, counts
    assert counts.get("QLinearConv") == 52 and agreement >= 0.875


def test_mobilenet_v2_w8a8_deploys_at_32px_with_large_int32_biases(tmp_path):
    """At 32 px, deep MobileNetV2 activations are tiny, so a bias's int32 value
    bias / (input scale x weight scale) reaches millions (3,236,810 in a trained PTQ W8A8
    cell): Brevitas' float32 check then refused the export ("QuantTensor not valid.")."""
    qmodel = _quantised("mobilenet_v2", 8, 8)
    layer = qmodel.get_submodule("features.14.conv.2")
    scales = []
    hook = layer.register_forward_pre_hook(lambda _m, args: scales.append(args[0].scale))
    with torch.no_grad():
        qmodel(_inputs(1, 0))
        hook.remove()
        bias_scale = (scales[0] * layer.quant_weight().scale).flatten()
        layer.bias.copy_(3.2e6 * bias_scale * torch.linspace(0.9, 1.1, bias_scale.numel()))
    counts, agreement, _, coverage = _deployed(qmodel, tmp_path)
    assert coverage.integer, counts
    assert counts.get("QLinearAdd") == 10
    assert agreement == 1.0
    with pytest.raises(RuntimeError, match="QuantTensor not valid"):  # control: stock export
        export_onnx_qcdq(qmodel, args=_inputs(1, 0), export_path=str(tmp_path / "stock.onnx"),
                         opset_version=17, dynamo=False)


@pytest.mark.parametrize("scheme", ["stats", "pact"])
def test_layers_before_silu_sigmoid_and_hardswish_run_integer(scheme, tmp_path):
    """EfficientNet's SiLU and squeeze-excitation Sigmoid, MobileNetV3's Hardswish: the layer
    before each ends in a quantiser, so ONNX Runtime runs it on an integer kernel (without
    the activation's input quantiser it ran in float: EfficientNet-B0 under PACT had 16 of 81
    convolutions integer). SiLU runs as QLinearSigmoid and QLinearMul; Hardswish, for which
    ONNX Runtime has no integer kernel, stays float (HardSigmoid and Mul), so the model is not
    integer."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.SiLU(), nn.Conv2d(8, 8, 3),
                          nn.Sigmoid(), nn.Conv2d(8, 8, 3), nn.Hardswish(), nn.Flatten(),
                          nn.Linear(8 * 26 * 26, 3)).eval()
    qmodel = quantize(model, QuantSpec(4, 4, scheme=scheme), _inputs(2, 1))
    calibrate(qmodel, [_inputs(4, 2)])
    counts, agreement, max_diff, coverage = _deployed(qmodel.eval(), tmp_path)
    assert coverage.float_nodes == {"HardSigmoid": 1, "Mul": 1}, counts
    assert not coverage.integer and coverage.by_macs > 0.99
    assert counts["QLinearConv"] == 3 and counts["QLinearSigmoid"] == 2
    assert counts["QLinearMul"] == 1 and agreement == 1.0 and max_diff < 1e-3


class _SqueezeExcitation(nn.Module):
    """EfficientNet's block in small: conv-SiLU, a squeeze-excitation (pool, conv-SiLU,
    conv-Sigmoid, gate times the feature map), conv, pool, linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.SiLU())
        self.se = SqueezeExcitation(8, 4, activation=nn.SiLU)
        self.head = nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(), nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.se(self.stem(x)))


@pytest.mark.parametrize(("w", "a", "scheme"), [(8, 8, "stats"), (4, 4, "pact")])
def test_squeeze_excitation_and_silu_run_integer(w, a, scheme, tmp_path):
    """SiLU and the squeeze-excitation's pool, Sigmoid and product run as
    QLinearSigmoid/QLinearMul/QLinearGlobalAveragePool: every compute node is integer, by nodes
    and by MACs, and the deployed model computes the fake-quant one's logits. (Before, SiLU's
    Sigmoid and Mul, the squeeze pool and the gate's product ran in float: 7 of 13 nodes
    integer at W8A8.) With quantisation disabled the graph is the float model exactly."""
    torch.manual_seed(0)
    model = _SqueezeExcitation().eval()
    qmodel = quantize(model, QuantSpec(w, a, scheme=scheme), _inputs(2, 1))
    calibrate(qmodel, [_inputs(4, 2)])
    counts, agreement, max_diff, coverage = _deployed(qmodel.eval(), tmp_path)
    assert coverage.integer and coverage.by_nodes == coverage.by_macs == 1.0, counts
    assert counts["QLinearSigmoid"] == 3 and counts["QLinearMul"] == 3
    assert counts["QLinearGlobalAveragePool"] == 2
    assert agreement == 1.0 and max_diff < 1e-3
    x = _inputs(4, 3)
    with torch.no_grad(), quantization_disabled(qmodel):
        torch.testing.assert_close(qmodel(x), model(x))


class _Residual(nn.Module):
    """conv-ReLU, a residual block with a ReLU after the join, pooling, linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        return self.head(self.relu(self.conv(y) + y).mean((2, 3)))


@pytest.mark.parametrize(("w", "a"), [(4, 4), (4, 8), (8, 8)])
def test_integer_rewrite_is_exact_and_makes_the_graph_fully_integer(w, a, tmp_path):
    """The rewritten file computes exactly what Brevitas' own export computes (run as plain
    QDQ, no fusion); Brevitas' own export is not fully integer with sub-8-bit activations (the
    control; it also breaks ONNX Runtime's x64 precision mode, so it runs without it)."""
    torch.manual_seed(0)
    qmodel = quantize(_Residual().eval(), QuantSpec(w, a), _inputs(2, 1))
    calibrate(qmodel, [_inputs(4, 2)])
    qmodel.eval()
    stock = tmp_path / "stock.onnx"
    export_onnx_qcdq(qmodel, args=_inputs(1, 0), export_path=str(stock), opset_version=17,
                     dynamo=False, input_names=["input"], output_names=["logits"],
                     dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    rewritten = tmp_path / "rewritten.onnx"
    onnx.save(integer_friendly(onnx.load(str(stock))), str(rewritten))
    x = _inputs(8, 5)
    plain = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    np.testing.assert_array_equal(_run(rewritten, x, plain), _run(stock, x, plain, {}))
    assert graph_coverage(rewritten).integer
    if a < 8:
        assert graph_coverage(stock, config={}).by_nodes < 1.0


@pytest.mark.parametrize(("w", "a"), [(8, 8), (4, 4)])
def test_global_average_pool_runs_integer(w, a, tmp_path):
    """The pool before the classifier runs as QLinearGlobalAveragePool, as in
    `quantize_static`'s graphs; the requantisation that allows it is exact (plain QDQ run) and
    the fused model agrees with the fake-quant one. Control: without that rewrite the last
    feature map is dequantised and pooled in float."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 3)).eval()
    qmodel = quantize(model, QuantSpec(w, a), _inputs(2, 1))
    calibrate(qmodel, [_inputs(4, 2)])
    qmodel.eval()
    path = export_quantized(qmodel, _inputs(1, 0), tmp_path / "model.onnx")
    ops = {n.op_type for n in optimized_graph(path).graph.node}
    assert "QLinearGlobalAveragePool" in ops and "GlobalAveragePool" not in ops, ops
    x = _inputs(8, 5)
    with torch.no_grad():
        reference = qmodel(x).numpy()
    plain = _run(path, x, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    np.testing.assert_allclose(plain, reference, atol=1e-5)
    fused = _run(path, x, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
    assert (fused.argmax(1) == reference.argmax(1)).all()
    without = onnx.load(str(path))
    for node in [n for n in without.graph.node if n.name.endswith(("_requantize", "_dequantize"))]:
        without.graph.node.remove(node)
    pooled = next(n for n in without.graph.node if n.op_type == "GlobalAveragePool").output[0]
    for node in without.graph.node:
        node.input[:] = [pooled if i == f"{pooled}_dq" else i for i in node.input]
    onnx.save(without, str(tmp_path / "without.onnx"))
    ops = {n.op_type for n in optimized_graph(tmp_path / "without.onnx").graph.node}
    assert "GlobalAveragePool" in ops and "QLinearGlobalAveragePool" not in ops, ops


def test_pinned_onnxruntime_runs_int4_weights_in_float(tmp_path):
    """Why sub-8-bit weights ship in int8 containers: this ONNX Runtime dequantises INT4
    (opset 21) weights and runs a float Conv. If an upgrade flips this, ship INT4 weights."""
    assert not int4_weights_run_integer()
    path = tmp_path / "int8.onnx"  # the control: the same probe with INT8 weights fuses
    onnx.save(probe_conv(TensorProto.INT8), str(path))
    ops = {n.op_type for n in optimized_graph(path).graph.node}
    assert "QLinearConv" in ops and "Conv" not in ops
