"""The quantisers are the methods their names say: PACT's and LSQ's gradients in closed form,
QAT's observed ranges (no gradient, moving average), no quantiser scale under weight decay."""

from __future__ import annotations

import math

import brevitas.nn as qnn
import pytest
import torch
from brevitas.core.quant.int_base import IntQuant
from brevitas.quant import Int8WeightPerChannelFloat
from torch import nn

from bench.config import TrainConfig
from bench.objectives import CrossEntropy
from bench.quant import (
    QuantSpec,
    calibrate,
    clip_parameters,
    lsq_steps,
    observed_ranges,
    quantization_disabled,
    quantize,
)
from bench.quantizers import (
    PACTIntQuant,
    abs_percentile,
    lsq_act,
    lsq_weight,
    observed_range_act,
    pact_act,
)
from bench.train import fit, is_quantiser_parameter, param_groups


def _values(n: int = 64, seed: int = 0, low: float = -1.0, high: float = 3.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(2, n // 2, generator=gen) * (high - low) + low).requires_grad_(True)


def _weights(shape: torch.Size, seed: int = 1) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _pact_layer(signed: bool, bits: int = 3, alpha: float = 1.5,
                int_quant: type | None = PACTIntQuant) -> nn.Module:
    act = pact_act(bits, signed) if int_quant is PACTIntQuant else \
        pact_act(bits, signed).let(int_quant=int_quant)
    layer = (qnn.QuantIdentity if signed else qnn.QuantReLU)(act_quant=act,
                                                              return_quant_tensor=True)
    scaling = layer.act_quant.fused_activation_quant_proxy.tensor_quant.scaling_impl
    with torch.no_grad():
        scaling.alpha.fill_(alpha)
    return layer.train()


def _alpha(layer: nn.Module) -> torch.nn.Parameter:
    return layer.act_quant.fused_activation_quant_proxy.tensor_quant.scaling_impl.alpha


@pytest.mark.parametrize("signed", [False, True])
def test_pact_alpha_gets_pacts_gradient(signed: bool) -> None:
    """Choi et al. 2018, eq. 3: d y_q / d alpha = 1 where x >= alpha, 0 elsewhere (symmetric
    form: -1 where x <= -alpha); d y_q / d x = 1 inside the clip range (STE), 0 outside."""
    alpha = 1.5
    layer = _pact_layer(signed, alpha=alpha)
    x = _values(low=-3.0 if signed else -1.0)
    w = _weights(x.shape)
    (layer(x).value * w).sum().backward()
    inp = x.detach() if signed else x.detach().clamp_min(0)
    expected_alpha = w[inp >= alpha].sum() - (w[inp <= -alpha].sum() if signed else 0.0)
    assert float(_alpha(layer).grad) == pytest.approx(float(expected_alpha), rel=1e-5)
    lower = -alpha if signed else 0.0
    inside = (x.detach() > lower) & (x.detach() < alpha)
    torch.testing.assert_close(x.grad, w * inside)
    assert bool((inp >= alpha).any()) and bool(inside.any())


def test_brevitas_default_quantiser_gives_alpha_another_gradient() -> None:
    """Control: Brevitas' own integer quantiser on the same learned clip adds
    round(x/s) - x/s inside the range (an LSQ-like term), so the test above can fail."""
    layer = _pact_layer(signed=False, int_quant=IntQuant)
    x = _values()
    w = _weights(x.shape)
    (layer(x).value * w).sum().backward()
    pact = w[x.detach().clamp_min(0) >= 1.5].sum()
    assert abs(float(_alpha(layer).grad) - float(pact)) > 1e-3


def _lsq_expected(v: torch.Tensor, w: torch.Tensor, s: float, q_n: int, q_p: int,
                  n: int) -> float:
    """Esser et al. 2020, eq. 3, times the gradient scale g = 1 / sqrt(N Q_P)."""
    u = v / s
    inner = torch.round(u) - u
    grad = torch.where(u <= -q_n, torch.full_like(u, -q_n),
                       torch.where(u >= q_p, torch.full_like(u, q_p), inner))
    return float((w * grad).sum()) / math.sqrt(n * q_p)


@pytest.mark.parametrize(("bits", "signed"), [(4, False), (3, True)])
def test_lsq_activation_step_gets_lsqs_gradient(bits: int, signed: bool) -> None:
    layer = (qnn.QuantIdentity if signed else qnn.QuantReLU)(
        act_quant=lsq_act(bits, signed), return_quant_tensor=True).train()
    step = layer.act_quant.fused_activation_quant_proxy.tensor_quant.scaling_impl
    s = 0.21
    with torch.no_grad():
        step.step.fill_(s)
    x = _values(low=-3.0, high=4.0)
    w = _weights(x.shape)
    (layer(x).value * w).sum().backward()
    v = x.detach() if signed else x.detach().clamp_min(0)
    q_n, q_p = (2 ** (bits - 1), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    features = x[0].numel()  # N: activation features of one sample
    expected = _lsq_expected(v, w, s, q_n, q_p, features)
    assert float(step.step.grad) == pytest.approx(expected, rel=1e-5)
    u = v / s
    inside = (u > -q_n) & (u < q_p) & ((x.detach() > 0) | signed)
    torch.testing.assert_close(x.grad, w * inside)


def test_lsq_weight_step_is_per_channel_with_its_gradient_scale() -> None:
    bits = 4
    conv = qnn.QuantConv2d(3, 5, 3, bias=False, weight_quant=lsq_weight(
        Int8WeightPerChannelFloat.let(bit_width=bits)))
    step = conv.weight_quant.tensor_quant.scaling_impl
    with torch.no_grad():
        step.step.copy_(torch.linspace(0.05, 0.25, 5).reshape(5, 1, 1, 1))
    w_out = _weights(conv.weight.shape)
    (conv.quant_weight().value * w_out).sum().backward()
    q_n, q_p = 2 ** (bits - 1), 2 ** (bits - 1) - 1
    for c in range(5):
        expected = _lsq_expected(conv.weight.detach()[c], w_out[c], float(step.step[c]), q_n,
                                 q_p, conv.weight[c].numel())
        assert float(step.step.grad[c]) == pytest.approx(expected, rel=1e-4)
    ints = conv.quant_weight().int()
    assert int(ints.min()) >= -q_n and int(ints.max()) <= q_p  # the paper's full range


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8),
                                      nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


def _images(seed: int, n: int = 8) -> torch.Tensor:
    return torch.randn(n, 3, 12, 12, generator=torch.Generator().manual_seed(seed))


def _quantised(scheme: str, **spec: object) -> nn.Module:
    torch.manual_seed(0)
    qmodel = quantize(_Net().eval(), QuantSpec(4, 4, scheme=scheme, **spec), _images(0, 2))
    calibrate(qmodel, [_images(s) for s in (1, 2)])
    return qmodel


def test_lsq_steps_start_at_the_papers_init() -> None:
    qmodel = _quantised("lsq")
    steps = lsq_steps(qmodel)
    conv = qmodel.get_submodule("features.3")
    weight_step = steps["features.3.weight_quant.tensor_quant.scaling_impl"]
    expected = 2 * conv.weight.detach().abs().mean((1, 2, 3)) / math.sqrt(7)
    torch.testing.assert_close(weight_step.detach().flatten(), expected)
    relu = "features.4.act_quant.fused_activation_quant_proxy.tensor_quant.scaling_impl"
    seen = []
    hook = qmodel.get_submodule("features.4").register_forward_hook(
        lambda _m, _i, out: seen.append(out.abs().mean()))
    with torch.no_grad(), quantization_disabled(qmodel):
        for s in (1, 2):
            qmodel(_images(s))
    hook.remove()
    assert float(steps[relu]) == pytest.approx(2 * float(sum(seen) / 2) / math.sqrt(15),
                                               rel=1e-5)


def _relu_range(qmodel: nn.Module, name: str = "features.4") -> torch.Tensor:
    key = f"{name}.act_quant.fused_activation_quant_proxy.tensor_quant.scaling_impl"
    return observed_ranges(qmodel)[key].observed_range


def _relu_input(qmodel: nn.Module, x: torch.Tensor, name: str = "features.4") -> torch.Tensor:
    seen = []
    act = qmodel.get_submodule(name).act_quant.fused_activation_quant_proxy.activation_impl
    hook = act.register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
    with torch.no_grad():
        qmodel(x)
    hook.remove()
    return seen[0]


def test_qat_ranges_are_calibration_means_then_a_moving_average_without_gradient() -> None:
    qmodel = _quantised("stats", range_momentum=0.1)
    assert not [n for n, _ in qmodel.named_parameters() if is_quantiser_parameter(n)]
    qmodel.eval()
    with quantization_disabled(qmodel):
        stats = [abs_percentile(_relu_input(qmodel, _images(s))) for s in (1, 2)]
    calibrated = _relu_range(qmodel).clone()
    assert float(calibrated) == pytest.approx(float(sum(stats) / 2), rel=1e-5)

    x = _images(7)
    qmodel.train()
    observed = abs_percentile(_relu_input(qmodel, x.clone()))  # one training forward
    expected = 0.9 * calibrated + 0.1 * observed
    assert float(_relu_range(qmodel)) == pytest.approx(float(expected), rel=1e-5)
    loss = qmodel(_images(8)).logsumexp(1).sum()
    loss.backward()
    scale = qmodel.get_submodule("features.4").act_quant.scale()
    assert not scale.requires_grad
    frozen = _relu_range(qmodel).clone()
    qmodel.eval()
    with torch.no_grad():
        qmodel(_images(9))
    assert torch.equal(_relu_range(qmodel), frozen)


def test_zero_range_momentum_keeps_the_calibrated_ranges() -> None:
    qmodel = _quantised("stats", range_momentum=0.0)
    before = {k: v.observed_range.clone() for k, v in observed_ranges(qmodel).items()}
    qmodel.train()
    with torch.no_grad():
        qmodel(_images(5) * 3)
    assert all(torch.equal(v.observed_range, before[k])
               for k, v in observed_ranges(qmodel).items())


def test_brevitas_default_activation_scale_is_a_trained_parameter() -> None:
    """Control: what QAT used before, a learned scale (so the test above can fail)."""
    default = qnn.QuantReLU(return_quant_tensor=True)
    assert [n for n, _ in default.named_parameters() if is_quantiser_parameter(n)]
    ours = qnn.QuantReLU(act_quant=observed_range_act(4, False, 0.1), return_quant_tensor=True)
    assert not list(ours.parameters())


@pytest.mark.parametrize("scheme", ["pact", "lsq"])
def test_no_quantiser_parameter_is_in_a_weight_decay_group(scheme: str, monkeypatch) -> None:
    qmodel = _quantised(scheme)
    learned = list(clip_parameters(qmodel).values()) + list(lsq_steps(qmodel).values())
    assert learned
    groups = param_groups(qmodel, 0.01)
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert not decayed & {id(p) for p in learned}
    assert {id(p) for p in learned} <= {id(p) for g in groups if g["weight_decay"] == 0
                                        for p in g["params"]}

    seen = {}
    import bench.train as train

    original = train.make_optimizer

    def spy(params, cfg):
        optimizer = original(params, cfg)
        seen["groups"] = optimizer.param_groups
        return optimizer

    monkeypatch.setattr(train, "make_optimizer", spy)
    images = (torch.rand(8, 3, 12, 12) * 255).to(torch.uint8)
    fit(qmodel, images, torch.arange(8) % 3,
        TrainConfig(epochs=1, batch_size=8, optimizer="sgd", weight_decay=0.01),
        objective=CrossEntropy(), seed=0, torch_device=torch.device("cpu"))
    in_fit = {id(p) for g in seen["groups"] if g["weight_decay"] > 0 for p in g["params"]}
    assert not in_fit & {id(p) for p in learned}
