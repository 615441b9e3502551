"""Tests for bench.quant: bit-width guarantees, PTQ/QAT/PACT mechanics, FP switch, export."""

from __future__ import annotations

import brevitas.nn as qnn
import numpy as np
import pytest
import torch
import torchvision
from brevitas.nn.quant_layer import QuantNonLinearActLayer
from brevitas.quant_tensor import QuantTensor
from torch import nn

from bench.integer_ops import IntegerSiLU
from bench.models import BACKBONES
from bench.quant import (
    PACT_INIT_ALPHA,
    QuantSpec,
    calibrate,
    clip_parameters,
    clip_penalty,
    clip_values,
    integer_weight_levels,
    lsq_steps,
    quantization_disabled,
    quantize,
)
from bench.quantizers import QuantHardswish
from tests.backbones import quantised_backbone

FIRST, LAST = "features.0", "head"
MIDDLE = ("features.3", "features.6")


class SmallCNN(nn.Module):
    """Conv-BN-ReLU x3, global average pool, linear head."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out in ((3, 8), (8, 16), (16, 32)):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.features(x)), 1))


def _model(seed: int = 0) -> SmallCNN:
    torch.manual_seed(seed)
    model = SmallCNN()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _images(n: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def _calibrated(spec: QuantSpec, model: nn.Module | None = None) -> nn.Module:
    model = model if model is not None else _model()
    qmodel = quantize(model, spec, _images(2))
    calibrate(qmodel, [_images(seed=s) for s in range(2, 5)])
    return qmodel.eval()


def _int_range(bits: int, signed: bool) -> tuple[int, int]:
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_weight_levels_per_channel_bounded_by_bit_width(bits: int) -> None:
    qmodel = _calibrated(QuantSpec(w_bits=bits, a_bits=bits, first_last_bits=None))
    levels = integer_weight_levels(qmodel)
    assert set(levels) == {FIRST, *MIDDLE, LAST}
    assert all(2 <= n <= 2**bits for n in levels.values())
    low, high = _int_range(bits, signed=True)
    for name in levels:
        ints = qmodel.get_submodule(name).quant_weight().int()
        assert low <= int(ints.min()) and int(ints.max()) <= high


def test_first_and_last_layers_use_first_last_bits() -> None:
    qmodel = _calibrated(QuantSpec(w_bits=2, a_bits=2, first_last_bits=8))
    levels = integer_weight_levels(qmodel)
    assert all(levels[name] <= 4 for name in MIDDLE)
    assert levels[FIRST] > 4 and levels[LAST] > 4
    for name in (FIRST, LAST):
        assert int(qmodel.get_submodule(name).quant_weight().bit_width) == 8
    assert all(int(qmodel.get_submodule(n).quant_weight().bit_width) == 2 for n in MIDDLE)

    same = integer_weight_levels(_calibrated(QuantSpec(w_bits=2, a_bits=2, first_last_bits=None)))
    assert same[FIRST] <= 4 and same[LAST] <= 4


def _module_outputs(
    qmodel: nn.Module, types: tuple[type, ...], batch: torch.Tensor
) -> dict[str, torch.Tensor | QuantTensor]:
    outputs: dict[str, torch.Tensor | QuantTensor] = {}
    handles = [
        module.register_forward_hook(
            lambda _m, _i, out, name=name: outputs.__setitem__(name, out)
        )
        for name, module in qmodel.named_modules()
        if isinstance(module, types)
    ]
    with torch.no_grad():
        qmodel(batch)
    for handle in handles:
        handle.remove()
    return outputs


@pytest.mark.parametrize("learned_clip", [False, True])
@pytest.mark.parametrize("a_bits", [2, 4])
def test_activations_take_at_most_2_pow_a_values(a_bits: int, learned_clip: bool) -> None:
    scheme = "pact" if learned_clip else "stats"
    qmodel = _calibrated(QuantSpec(w_bits=4, a_bits=a_bits, scheme=scheme))
    outputs = _module_outputs(qmodel, (qnn.QuantReLU,), _images(seed=9))
    assert len(outputs) == 3
    low, high = _int_range(a_bits, signed=False)
    for out in outputs.values():
        assert isinstance(out, QuantTensor)
        ints = out.int()
        assert 2 <= torch.unique(ints).numel() <= 2**a_bits
        assert low <= int(ints.min()) and int(ints.max()) <= high
        assert torch.allclose(ints * out.scale, out.value, atol=1e-6)


@pytest.mark.parametrize(("first_last_bits", "expected"), [(8, 8), (None, 2)])
def test_input_quantiser_bit_width(first_last_bits: int | None, expected: int) -> None:
    qmodel = _calibrated(QuantSpec(w_bits=2, a_bits=2, first_last_bits=first_last_bits))
    outputs = _module_outputs(qmodel, (qnn.QuantIdentity,), _images(seed=9))
    inp = outputs["x_quant"]
    assert int(inp.bit_width) == expected
    assert 2 ** (expected - 2) < torch.unique(inp.int()).numel() <= 2**expected


def test_first_layer_input_requantised_at_first_last_bits_behind_other_ops() -> None:
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.randn(4, 3, 2, 2)
    qmodel = quantize(mlp, QuantSpec(w_bits=2, a_bits=2, first_last_bits=8), x)
    calibrate(qmodel, [x])
    first = qmodel.get_submodule("1")
    assert int(first.quant_weight().bit_width) == 8
    inputs = _module_inputs(qmodel.eval(), first, x)
    assert isinstance(inputs, QuantTensor) and int(inputs.bit_width) == 8


def _module_inputs(qmodel: nn.Module, module: nn.Module, batch: torch.Tensor) -> object:
    seen: list[object] = []
    handle = module.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with torch.no_grad():
        qmodel(batch)
    handle.remove()
    return seen[0]


def test_learned_clip_without_a_clippable_activation_is_rejected() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(4, 2)).eval()
    with pytest.raises(ValueError, match="ReLU, ReLU6, SiLU or Hardswish"):
        quantize(model, QuantSpec(w_bits=4, a_bits=4, scheme="pact"), torch.randn(2, 3, 3, 3))


def _act_scales(qmodel: nn.Module) -> dict[str, float]:
    return {
        name: float(module.act_quant.scale().detach())
        for name, module in qmodel.named_modules()
        if isinstance(module, (qnn.QuantReLU, qnn.QuantIdentity))
    }


def test_ptq_calibration_changes_activation_scales() -> None:
    qmodel = quantize(_model(), QuantSpec(w_bits=4, a_bits=4), _images(2))
    before = _act_scales(qmodel)
    calibrate(qmodel, [_images(seed=s) for s in range(2, 4)])
    after = _act_scales(qmodel)
    assert set(before) == set(after) and len(after) >= 4
    assert all(abs(after[name] - before[name]) > 1e-4 * before[name] for name in before)


def test_bias_correction_changes_biases() -> None:
    qmodel = quantize(_model(), QuantSpec(w_bits=2, a_bits=4), _images(2))
    biases = {n: p.detach().clone() for n, p in qmodel.named_parameters() if n.endswith("bias")}
    calibrate(qmodel, iter([_images(seed=s) for s in range(2, 4)]), bias_correction=True)
    moved = [n for n, p in qmodel.named_parameters() if n in biases and not p.equal(biases[n])]
    assert moved


def _train(qmodel: nn.Module, steps: int, clip_weight: float = 0.0) -> None:
    qmodel.train()
    optimizer = torch.optim.SGD(qmodel.parameters(), lr=0.05)
    targets = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    for step in range(steps):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(qmodel(_images(seed=20 + step)), targets)
        (loss + clip_weight * clip_penalty(qmodel)).backward()
        optimizer.step()


def test_qat_gradients_reach_weights_through_fake_quant() -> None:
    qmodel = _calibrated(QuantSpec(w_bits=4, a_bits=4))
    weights = {n: p.detach().clone() for n, p in qmodel.named_parameters() if n.endswith("weight")}
    assert len(weights) == 4
    _train(qmodel, steps=1)
    for name, param in qmodel.named_parameters():
        if name in weights:
            assert param.grad is not None and float(param.grad.abs().sum()) > 0
    _train(qmodel, steps=2)
    params = dict(qmodel.named_parameters())
    assert all(not params[n].detach().equal(w) for n, w in weights.items())


def test_input_gradient_flows_through_input_quantiser() -> None:
    qmodel = _calibrated(QuantSpec(w_bits=4, a_bits=4, scheme="pact"))
    x = _images(seed=12).requires_grad_(True)
    qmodel(x).logsumexp(dim=1).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_pact_alphas_initialised_from_calibration_statistics() -> None:
    qmodel = quantize(_model(), QuantSpec(w_bits=4, a_bits=4, scheme="pact"), _images(2))
    batch = _images(seed=3) * 3.0
    calibrate(qmodel, [batch])
    alphas = clip_values(qmodel)
    assert set(alphas) == {"features.2", "features.5", "features.8"}
    qmodel.eval()
    with quantization_disabled(qmodel):
        fp_acts = _module_outputs(qmodel, (qnn.QuantReLU,), batch)
    for name, alpha in alphas.items():
        acts = fp_acts[name].flatten()
        assert alpha != pytest.approx(PACT_INIT_ALPHA)
        assert float(torch.quantile(acts, 0.99)) <= alpha <= float(acts.max()) + 1e-6
        scale = qmodel.get_submodule(name).act_quant.scale().detach().item()
        assert scale * (2**4 - 1) == pytest.approx(alpha, rel=1e-5)


def test_pact_alphas_get_gradients_and_move() -> None:
    qmodel = _calibrated(QuantSpec(w_bits=4, a_bits=2, scheme="pact"))
    start = clip_values(qmodel)
    _train(qmodel, steps=1, clip_weight=1e-3)
    for param in clip_parameters(qmodel).values():
        assert param.requires_grad
        assert param.grad is not None and float(param.grad.abs()) > 0
    _train(qmodel, steps=3, clip_weight=1e-3)
    end = clip_values(qmodel)
    assert all(end[name] != pytest.approx(start[name], rel=1e-6) for name in start)


def test_clip_penalty_is_sum_of_squared_alphas() -> None:
    qmodel = _calibrated(QuantSpec(w_bits=4, a_bits=4, scheme="pact"))
    expected = sum(v**2 for v in clip_values(qmodel).values())
    assert float(clip_penalty(qmodel)) == pytest.approx(expected, rel=1e-5)
    plain = _calibrated(QuantSpec(w_bits=4, a_bits=4))
    assert clip_parameters(plain) == {} and float(clip_penalty(plain)) == 0.0


def test_quantization_disabled_recovers_fp32_output() -> None:
    model = _model()
    qmodel = _calibrated(QuantSpec(w_bits=4, a_bits=4), model)
    x = _images(seed=7)
    with torch.no_grad():
        reference = model(x)
        quantised = qmodel(x)
        with quantization_disabled(qmodel):
            float_graph = qmodel(x)
        again = qmodel(x)
    assert torch.allclose(float_graph, reference, atol=1e-5)
    assert not torch.allclose(quantised, reference, atol=1e-3)
    assert torch.equal(again, quantised)


def test_quantize_leaves_fp32_model_untouched() -> None:
    model = _model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    qmodel = quantize(model, QuantSpec(w_bits=4, a_bits=4, scheme="pact"), _images(2))
    assert qmodel is not model
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert not any(isinstance(m, (qnn.QuantConv2d, qnn.QuantReLU)) for m in model.modules())


def test_state_dict_round_trip_rebuilds_the_same_model() -> None:
    spec = QuantSpec(w_bits=2, a_bits=4, scheme="pact")
    qmodel = _calibrated(spec)
    _train(qmodel, steps=1, clip_weight=1e-3)
    qmodel.eval()
    state = {k: v.clone() for k, v in qmodel.state_dict().items()}
    rebuilt = quantize(_model(seed=5), spec, _images(2))  # how bench.checkpoints rebuilds
    rebuilt.load_state_dict(state)
    rebuilt.eval()
    x = _images(seed=13)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), qmodel(x))
    assert clip_values(rebuilt) == clip_values(qmodel)


@pytest.mark.parametrize(("per_channel", "expected"), [(False, None), (True, "out")])
def test_weight_scale_granularity(per_channel: bool, expected: str | None) -> None:
    qmodel = _calibrated(QuantSpec(w_bits=4, a_bits=4, per_channel=per_channel))
    for name in (FIRST, *MIDDLE, LAST):
        layer = qmodel.get_submodule(name)
        n_scales = layer.quant_weight().scale.numel()
        assert n_scales == (1 if expected is None else layer.weight.shape[0])


@pytest.mark.parametrize("bad", [1, 9])
def test_spec_rejects_unsupported_bit_widths(bad: int) -> None:
    with pytest.raises(ValueError):
        QuantSpec(w_bits=bad, a_bits=4)
    with pytest.raises(ValueError):
        QuantSpec(w_bits=4, a_bits=4, first_last_bits=bad)


@pytest.mark.parametrize(
    ("factory", "n_layers"),
    [(torchvision.models.resnet18, 21), (torchvision.models.mobilenet_v2, 53)],
)
def test_torchvision_backbones_quantize(factory, n_layers: int) -> None:
    torch.manual_seed(0)
    model = factory(num_classes=3).eval()
    x = torch.randn(1, 3, 32, 32)
    qmodel = quantize(model, QuantSpec(w_bits=4, a_bits=4), x)
    with torch.no_grad():
        out = qmodel(x)
    assert isinstance(out, torch.Tensor) and not isinstance(out, QuantTensor)
    assert out.shape == (1, 3)
    levels = integer_weight_levels(qmodel)
    assert len(levels) == n_layers
    assert sum(n <= 15 for n in levels.values()) == n_layers - 2


def test_qcdq_export_matches_torch_and_quantises_input(tmp_path) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from brevitas.export import export_onnx_qcdq

    qmodel = _calibrated(QuantSpec(w_bits=4, a_bits=4, scheme="pact"))
    x = _images(2, seed=11)
    path = tmp_path / "small.onnx"
    export_onnx_qcdq(qmodel, args=x, export_path=str(path), opset_version=17, dynamo=False)
    graph = onnx.load(str(path)).graph
    input_users = [node.op_type for node in graph.node if graph.input[0].name in node.input]
    assert input_users == ["QuantizeLinear"]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options)
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch_out = qmodel(x).numpy()
    np.testing.assert_allclose(onnx_out, torch_out, atol=1e-5)


def _relu_consumers(graph_model: nn.Module, node: object) -> list[object]:
    """Nodes that read a ReLU's output, looking through max-pooling."""
    users = []
    for user in node.users:
        module = graph_model.get_submodule(user.target) if user.op == "call_module" else None
        users += _relu_consumers(graph_model, user) if isinstance(module, nn.MaxPool2d) \
            else [user]
    return users


@pytest.fixture(scope="module")
def resnet18_input() -> torch.Tensor:
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize(("scheme", "a_bits"), [("pact", 2), ("pact", 4), ("stats", 2)])
def test_resnet18_relu_outputs_are_unsigned_with_2_pow_a_levels(
        scheme: str, a_bits: int, resnet18_input: torch.Tensor) -> None:
    """Every ReLU output, skip connections included, reaches its consumers as the ReLU's own
    unsigned a-bit tensor (no signed requantiser in between); PACT's range is its alpha."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3).eval()
    qmodel = quantize(model, QuantSpec(w_bits=4, a_bits=a_bits, scheme=scheme),
                      resnet18_input[:2])
    calibrate(qmodel, [resnet18_input])
    qmodel.eval()
    relus = [n for n in qmodel.graph.nodes if n.op == "call_module"
             and isinstance(qmodel.get_submodule(n.target), qnn.QuantReLU)]
    assert len(relus) == 17
    for node in relus:
        for user in _relu_consumers(qmodel, node):
            consumer = qmodel.get_submodule(user.target) if user.op == "call_module" else None
            assert not isinstance(consumer, qnn.QuantIdentity), (node.target, user.target)
    outputs = _module_outputs(qmodel, (qnn.QuantReLU,), resnet18_input)
    alphas = clip_values(qmodel)
    top = 2**a_bits - 1
    counts = []
    for name, out in outputs.items():
        assert isinstance(out, QuantTensor) and not bool(out.signed)
        assert int(out.bit_width) == a_bits
        ints = out.int()
        assert int(ints.min()) >= 0 and int(ints.max()) <= top
        counts.append(torch.unique(ints).numel())
        if scheme == "pact":
            assert name in alphas, f"{name}'s quantiser is not PACT's learned clip"
            assert float(out.scale) * top == pytest.approx(alphas[name], rel=1e-5)
    assert max(counts) == 2**a_bits and min(counts) > 2 ** (a_bits - 1)


def test_pact_learns_a_signed_clip_after_silu_and_hardswish() -> None:
    """EfficientNet-B0 has no ReLU (SiLU) and MobileNetV3 uses Hardswish: PACT clips their
    outputs to [-alpha, alpha] (stated in the README), so the full grid's PACT cells on them
    train instead of failing (both backbones deploy: tests/benchmarks/test_bench_deploy_matrix)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.SiLU(), nn.Conv2d(8, 8, 3),
                          nn.Hardswish(), nn.Flatten(), nn.Linear(8 * 12 * 12, 2)).eval()
    x = _images(4)
    qmodel = quantize(model, QuantSpec(w_bits=4, a_bits=4, scheme="pact"), x[:2])
    calibrate(qmodel, [x])
    clipped = {name: qmodel.get_submodule(name) for name in clip_values(qmodel)}
    assert {type(m) for m in clipped.values()} == {IntegerSiLU, QuantHardswish}
    assert all(m.act_quant.is_signed for m in clipped.values())
    qmodel.train()
    qmodel(x * 4).logsumexp(1).sum().backward()
    grads = [p.grad for p in clip_parameters(qmodel).values()]
    assert all(g is not None for g in grads) and any(float(g.abs()) > 0 for g in grads)


@pytest.mark.parametrize("backbone", BACKBONES.names())
def test_calibration_initialises_every_lsq_step_from_data(backbone: str) -> None:
    """Every LSQ step, wherever its quantiser sits (layer outputs, the last layer's input, the
    Sigmoid inputs of squeeze-excitation, the graph input), leaves the placeholder 1.0 and
    equals LSQ's 2 mean|x| / sqrt(Q_P) of its FP input on the calibration batches."""
    qmodel = quantised_backbone(backbone, 32, 4, 4, scheme="lsq")
    steps = lsq_steps(qmodel)
    left = [name for name, step in steps.items() if bool((step.detach() == 1.0).any())]
    assert steps and not left, left
    inputs = {name.removesuffix(".fused_activation_quant_proxy.tensor_quant.scaling_impl")
              for name in steps if "input_quant" in name}
    assert inputs, "no input quantiser to check"


def test_lsq_input_quantiser_step_follows_lsq_rule() -> None:
    """The last layer's input quantiser (not under ``act_quant``) gets 2 mean|x| / sqrt(Q_P)
    of the FP values entering it, averaged over the calibration batches."""
    qmodel = quantize(_model(), QuantSpec(w_bits=4, a_bits=4, scheme="lsq"), _images(2))
    batches = [_images(seed=s) for s in range(2, 5)]
    calibrate(qmodel, batches)
    seen: list[float] = []
    head = qmodel.get_submodule(LAST)
    handle = head.register_forward_pre_hook(
        lambda _m, args: seen.append(float(args[0].abs().mean())))
    with torch.no_grad(), quantization_disabled(qmodel):
        for batch in batches:
            qmodel(batch)
    handle.remove()
    step = head.input_quant.fused_activation_quant_proxy.tensor_quant.scaling_impl
    q_p = 2 ** (8 - 1) - 1  # first_last_bits 8, signed
    assert float(step.step.detach()) == pytest.approx(2 * np.mean(seen) / np.sqrt(q_p), rel=1e-5)


def _relu6_model() -> nn.Module:
    """``_model`` with ReLU6 activations, whose activations on ``10 * _images()`` pass 6."""
    model = _model()
    for i, module in enumerate(model.features):
        if isinstance(module, nn.ReLU):
            model.features[i] = nn.ReLU6()
    return model


@pytest.mark.parametrize("scheme", ["stats", "pact", "lsq"])
def test_relu6_still_clips_at_6(scheme: str) -> None:
    """MobileNetV2's ReLU6 keeps its clip at 6 in the quantised graph (Brevitas' preprocessing
    made it a ReLU with an observed range, which passes 6), its quantiser's range (an LSQ step,
    a PACT alpha) is capped at 6, and with quantisation disabled the
    graph computes the parent's function (so the folded float control fp32_fold_ft does)."""
    model = _relu6_model()
    x = 10 * _images(seed=7)
    qmodel = quantize(model, QuantSpec(w_bits=8, a_bits=8, scheme=scheme), 10 * _images(2))
    calibrate(qmodel, [10 * _images(seed=s) for s in range(2, 5)])
    qmodel.eval()
    with torch.no_grad():
        pre = nn.Sequential(*list(model.features)[:2])(x)
        assert float(pre.max()) > 12  # the parent's ReLU6 clips here
        outputs = _module_outputs(qmodel, (QuantNonLinearActLayer,), x)
        relus = {name: out for name, out in outputs.items() if name.startswith("features.")}
        assert len(relus) == 3
        # each quantiser's range (255 levels at 8 bits) is capped at 6 too
        assert all(isinstance(out, QuantTensor) for out in relus.values())
        assert all(float(out.scale) * 255 <= 6.0 * (1 + 1e-6) for out in relus.values()), \
            {name: float(out.scale) * 255 for name, out in relus.items()}
        assert all(float(out.value.max()) <= 6.0 * (1 + 1e-6) for out in relus.values())
        with quantization_disabled(qmodel):
            assert torch.allclose(qmodel(x), model(x), atol=1e-4)


def test_smallcnn_lsq_steps_are_2_mean_abs_over_sqrt_q_p_of_their_inputs() -> None:
    """On smallcnn every activation LSQ step equals 2 mean|x| / sqrt(Q_P) of the FP values
    entering its quantiser, averaged over the calibration batches (recorded here by hooks of
    the test's own, after calibration, with quantisation disabled)."""
    from bench.quantizers import LSQStep
    from tests.backbones import backbone_with_data_statistics, random_images

    model = backbone_with_data_statistics("smallcnn", 32)
    qmodel = quantize(model, QuantSpec(4, 4, scheme="lsq"), random_images(2, 32, 1))
    batches = [random_images(4, 32, 2), random_images(4, 32, 3)]
    calibrate(qmodel, batches)
    proxies = {name: m for name, m in qmodel.named_modules()
               if isinstance(getattr(getattr(getattr(m, "fused_activation_quant_proxy", None),
                                             "tensor_quant", None), "scaling_impl", None),
                             LSQStep)}
    assert len(proxies) >= 3
    seen: dict[str, list[float]] = {name: [] for name in proxies}
    handles = [p.fused_activation_quant_proxy.activation_impl.register_forward_hook(
        lambda _m, _a, out, name=name: seen[name].append(float(out.abs().mean())))
        for name, p in proxies.items()]
    with torch.no_grad(), quantization_disabled(qmodel):
        for batch in batches:
            qmodel(batch)
    for handle in handles:
        handle.remove()
    for name, proxy in proxies.items():
        step = proxy.fused_activation_quant_proxy.tensor_quant.scaling_impl
        assert len(seen[name]) == len(batches), name
        want = min(2 * np.mean(seen[name]) / np.sqrt(step.q_p), step.max_step or np.inf)
        assert float(step.step.detach().flatten()[0]) == pytest.approx(want, rel=1e-5), name
