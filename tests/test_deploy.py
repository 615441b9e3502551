"""Export, integer kernels, output agreement and packed size on tiny models."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from brevitas.graph.calibrate import calibration_mode
from brevitas.graph.quantize import preprocess_for_quantize, quantize
from brevitas.nn import QuantLinear
from torch import nn

from bench.deploy import (
    agreement,
    count_kernels,
    count_params_and_macs,
    expected_packed_bits,
    expected_packed_bytes,
    export_fp32,
    export_quantized,
    integer_kernel_count,
    pack_quantized,
    unpack,
)
from bench.deploy.packing import pack_bits, unpack_bits

SHAPE = (3, 16, 16)


class TinyNet(nn.Module):
    """Conv-BN-ReLU, a residual conv block, global pooling and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.relu2(self.bn2(self.conv2(y)) + y)
        return self.fc(torch.flatten(self.pool(y), 1))


@pytest.fixture(scope="module")
def float_model() -> nn.Module:
    torch.manual_seed(0)
    return TinyNet().eval()


@pytest.fixture(scope="module")
def quant_model(float_model: nn.Module) -> nn.Module:
    model = quantize(preprocess_for_quantize(float_model))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad(), calibration_mode(model):
        for _ in range(4):
            model(torch.randn(16, *SHAPE, generator=generator))
    return model.eval()


@pytest.fixture(scope="module")
def inputs() -> torch.Tensor:
    return torch.randn(64, *SHAPE, generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory, float_model):
    path = tmp_path_factory.mktemp("onnx") / "fp32.onnx"
    return export_fp32(float_model, torch.zeros(1, *SHAPE), path)


@pytest.fixture(scope="module")
def int8_onnx(tmp_path_factory, quant_model):
    path = tmp_path_factory.mktemp("onnx") / "int8.onnx"
    return export_quantized(quant_model, torch.zeros(1, *SHAPE), path)


def test_quantized_export_runs_integer_kernels(int8_onnx):
    counts = count_kernels(int8_onnx)
    assert integer_kernel_count(counts) >= 3
    assert counts.get("QLinearConv") == 2
    assert "Conv" not in counts and "FusedConv" not in counts


def test_fp32_export_runs_no_integer_kernels(fp32_onnx):
    counts = count_kernels(fp32_onnx)
    assert integer_kernel_count(counts) == 0
    assert counts.get("Conv", 0) + counts.get("FusedConv", 0) == 2


def test_integer_kernel_count_only_counts_integer_ops():
    counts = {"QLinearConv": 3, "QGemm": 1, "MatMulInteger": 2, "Conv": 5, "QuantizeLinear": 4}
    assert integer_kernel_count(counts) == 6
    assert integer_kernel_count({}) == 0


@pytest.mark.parametrize("which", ["fp32", "int8"])
def test_exports_have_dynamic_batch(which, fp32_onnx, int8_onnx):
    path = fp32_onnx if which == "fp32" else int8_onnx
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        x = np.zeros((batch, *SHAPE), dtype=np.float32)
        assert session.run(None, {"input": x})[0].shape == (batch, 4)


def test_quantized_export_agrees_with_brevitas(int8_onnx, quant_model, inputs):
    labels = torch.arange(len(inputs)) % 4
    result = agreement(int8_onnx, quant_model, inputs, labels=labels)
    assert result.n == len(inputs)
    assert result.top1_agreement >= 0.99
    with torch.no_grad():
        expected = (quant_model(inputs).argmax(1) == labels).float().mean().item()
    assert result.reference_accuracy == pytest.approx(expected)
    assert result.accuracy is not None


def test_agreement_reports_a_different_model(fp32_onnx, inputs):
    torch.manual_seed(123)
    other = TinyNet().eval()
    result = agreement(fp32_onnx, other, inputs)
    assert result.max_abs_logit_diff > 1e-3
    assert result.accuracy is None


def test_expected_packed_sizes_are_hand_computed():
    assert expected_packed_bits(70, 4) == 280
    assert expected_packed_bytes(70, 4) == 35
    assert expected_packed_bytes(70, 3) == 27
    assert expected_packed_bytes(3, 2) == 1
    with pytest.raises(ValueError, match="between 1 and 8"):
        expected_packed_bits(10, 16)


def test_pack_bits_layout_is_little_endian_twos_complement():
    assert pack_bits(np.array([1, -1]), 4, signed=True).tolist() == [0xF1]
    assert pack_bits(np.array([0, 1, -2, -1]), 2, signed=True).tolist() == [0xE4]
    assert pack_bits(np.array([200, 3]), 8, signed=False).tolist() == [200, 3]


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("signed", [True, False])
def test_pack_bits_round_trip(bits, signed):
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    values = np.random.default_rng(bits).integers(low, high + 1, size=101)
    packed = pack_bits(values, bits, signed)
    assert packed.size == expected_packed_bytes(values.size, bits)
    assert unpack_bits(packed, bits, values.size, signed).tolist() == values.tolist()


def test_pack_bits_rejects_values_out_of_range():
    with pytest.raises(ValueError, match="outside the 4-bit signed range"):
        pack_bits(np.array([8]), 4, signed=True)


def _quant_linear(bits: int) -> QuantLinear:
    torch.manual_seed(3)
    return QuantLinear(7, 10, bias=True, weight_bit_width=bits).eval()


@pytest.mark.parametrize(("layer_bits", "w_bits", "expected"), [(4, None, 35), (3, None, 27),
                                                                  (4, 8, 70)])
def test_packed_known_tensor_size(tmp_path, layer_bits, w_bits, expected):
    layer = _quant_linear(layer_bits)
    info = pack_quantized(layer, w_bits, tmp_path / "layer.npz")
    assert info.n_params == 70
    assert info.weight_bytes == expected
    assert info.size_bytes == (tmp_path / "layer.npz").stat().st_size
    with np.load(info.path) as data:
        assert data["/weight"].nbytes == expected
        assert data["/scale"].dtype == np.float32


def test_pack_quantized_round_trip(tmp_path):
    layer = _quant_linear(4)
    pack_quantized(layer, None, tmp_path / "layer.npz")
    unpacked = unpack(tmp_path / "layer.npz")[""]
    with torch.no_grad():
        qt = layer.quant_weight()
    assert unpacked.bits == 4 and unpacked.signed
    np.testing.assert_array_equal(unpacked.weight, qt.int().numpy())
    np.testing.assert_allclose(unpacked.dequantize(), qt.value.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(unpacked.bias, layer.bias.detach().numpy())


def test_pack_quantized_names_layer_that_does_not_fit(tmp_path):
    with pytest.raises(ValueError, match=r"layer ''.*2-bit"):
        pack_quantized(_quant_linear(4), 2, tmp_path / "layer.npz")


def test_pack_quantized_model(tmp_path, quant_model):
    info = pack_quantized(quant_model, None, tmp_path / "model.npz")
    assert info.bits == {"conv1": 8, "conv2": 8, "fc": 8}
    assert info.n_params == 8 * 27 + 8 * 72 + 8 * 4
    assert info.weight_bytes == info.n_params
    assert set(unpack(info.path)) == {"conv1", "conv2", "fc"}


def test_count_params_and_macs_hand_computed(float_model):
    n_params, macs = count_params_and_macs(float_model, torch.zeros(1, *SHAPE))
    assert n_params == (8 * 27 + 8) + 16 + (8 * 72 + 8) + 16 + (8 * 4 + 4)
    assert macs == 16 * 16 * 8 * 27 + 16 * 16 * 8 * 72 + 8 * 4
