"""Controls of the saliency statistics: Grad-CAM reads the same tensor in the FP32 model and its
Brevitas graph, the null control gives ~1.0, and the model-randomisation sanity check (against
Quantus' MPRT)."""

from __future__ import annotations

import copy
from functools import cache

import numpy as np
import pytest
import torch
from brevitas.graph.quantize import preprocess_for_quantize
from torch import nn

from bench.config import BackboneConfig
from bench.models import BACKBONES, build_model
from bench.quant import quantization_disabled
from bench.saliency.maps import compute_maps, resolve_layer
from bench.saliency.metrics import spearman
from bench.saliency.null import null_control, null_graph
from bench.saliency.sanity import checkpoint_steps, randomisable_layers, randomisation_check
from bench.saliency.suite import SaliencyConfig, maps_for
from methods import get_method

SIZE = 64
"""Smallest size at which every backbone's last feature map is at least 2x2 (Grad-CAM of a 1x1
map is constant)."""
CFG = SaliencyConfig(n_samples=3, ig_steps=4, smoothgrad_samples=3, sensitivity_samples=1)


def with_trained_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Batch norm with non-trivial statistics and affine parameters, as after training (at
    initialisation it is the identity in eval mode and folding it changes nothing)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(0.2 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
                m.weight.copy_(0.5 + torch.rand(n, generator=gen))
                m.bias.copy_(0.2 * torch.randn(n, generator=gen))
    return model.eval()


FOLDED_ONLY = {"mobilenet_v3_small", "efficientnet_b0"}
"""Backbones checked on Brevitas' traced graph with batch norm folded (`preprocess_for_quantize`,
the step that moved the old hook) instead of the full quantised graph, which takes 4-30 s to
build here (the other three are built for the null control anyway); the pooling input is found
by the same rule in both."""


@cache
def fp32_and_graph(backbone: str) -> tuple[nn.Module, nn.Module]:
    """An FP32 backbone with trained-like batch norm and QAT's W4A4 graph of it."""
    torch.manual_seed(0)
    model = with_trained_batchnorm(build_model(BackboneConfig(name=backbone), 3))
    if backbone in FOLDED_ONLY:
        return model, preprocess_for_quantize(copy.deepcopy(model)).eval()
    qat = get_method("qat")
    graph = null_graph(qat, model, 4, 4, qat.parse_params({}), images()[:2])
    return model, graph


def images() -> torch.Tensor:
    return torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


TARGETS = torch.tensor([0, 1, 2])


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_gradcam_with_quantisation_disabled_agrees_with_fp32(backbone: str) -> None:
    """Grad-CAM reads the input of the final global pooling in both models; the last Conv2d it
    used to read precedes batch norm in FP32 and follows it (folded) in the Brevitas graph."""
    model, graph = fp32_and_graph(backbone)
    fp32, target = resolve_layer(model, None), resolve_layer(graph, None)
    assert fp32.name == target.name or (fp32.at, target.at) == ("output", "input")
    with quantization_disabled(graph):
        quant = compute_maps(graph, images(), TARGETS, "gradcam")
    reference = compute_maps(model, images(), TARGETS, "gradcam")
    rho = spearman(quant, reference)
    constant = np.ptp(reference.reshape(3, -1), axis=1) == 0
    assert np.all(rho[~constant] >= 0.999), rho
    np.testing.assert_allclose(quant[constant], reference[constant], atol=1e-6)
    if backbone == "smallcnn":
        last_conv = [m for m in model.modules() if isinstance(m, nn.Conv2d)][-1]
        last_qconv = [m for m in graph.modules() if isinstance(m, nn.Conv2d)][-1]
        with quantization_disabled(graph):
            old = compute_maps(graph, images(), TARGETS, "gradcam", layer=last_qconv)
        old_rho = spearman(old, compute_maps(model, images(), TARGETS, "gradcam",
                                             layer=last_conv))
        assert np.nanmean(old_rho) < 0.99


@pytest.mark.parametrize("backbone", ["smallcnn", "resnet18", "mobilenet_v2"])
def test_null_control_is_one_for_every_saliency_method(backbone: str) -> None:
    model, graph = fp32_and_graph(backbone)
    x = images()
    reference = {m: maps_for(model, m, CFG)(x, TARGETS, np.arange(3)) for m in CFG.methods}
    null = null_control(graph, x, TARGETS, reference, CFG, built_from="parent")
    assert set(null.values) == set(CFG.methods)
    for method, stats in null.values.items():
        rho = stats["spearman_fp32"]
        constant = np.ptp(reference[method].reshape(3, -1), axis=1) == 0
        assert np.all(rho[~constant] >= 0.999) and np.isnan(rho[constant]).all(), (method, rho)
        assert np.all(stats["ssim_fp32"] >= 0.999), (method, stats)
    described = null.describe()["stats"]["gradcam"]["spearman_fp32"]
    assert described["mean"] >= 0.999
    assert graph.training is False


class TinyBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.b1 = nn.BatchNorm2d(4)
        self.r1 = nn.ReLU()
        self.c2 = nn.Conv2d(4, 6, 3, padding=1)
        self.r2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.r2(self.c2(self.r1(self.b1(self.c1(x)))))
        return self.fc(torch.flatten(self.pool(h), 1))


def _explain(model: nn.Module, method: str, x: torch.Tensor, t: torch.Tensor) -> np.ndarray:
    return compute_maps(model, x, t, method, n_samples=3, ig_steps=4)


def test_sanity_check_matches_quantus_mprt() -> None:
    quantus = pytest.importorskip("quantus")
    torch.manual_seed(3)
    model = with_trained_batchnorm(TinyBN())
    x = torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0, 1, 2, 1])
    trained = {"gradient": _explain(model, "gradient", x, t)}
    n_layers = len(randomisable_layers(model))
    ours = randomisation_check(model, ["gradient"], x, t, trained, _explain,
                               checkpoints=n_layers, seed=5)
    assert ours.steps == list(range(1, n_layers + 1))
    theirs = quantus.MPRT(layer_order="top_down", seed=5, disable_warnings=True)(
        model=model, x_batch=x.numpy(), y_batch=t.numpy(), a_batch=trained["gradient"][:, None],
        explain_func=lambda model, inputs, targets, **_: _explain(
            model, "gradient", torch.as_tensor(inputs), torch.as_tensor(targets))[:, None],
        device="cpu")
    layers = [k for k in theirs if k != "original"]
    assert layers == ours.layers == ["fc", "c2", "b1", "c1"]
    for i, layer in enumerate(layers):
        assert ours.spearman["gradient"][i] == pytest.approx(np.mean(theirs[layer]), abs=1e-6)
    np.testing.assert_allclose(ours.final["gradient"], theirs[layers[-1]], atol=1e-6)
    assert torch.equal(model.fc.weight, with_trained_batchnorm(TinyBN().eval()).fc.weight) is False


def test_sanity_verdict_uses_the_fully_randomised_model() -> None:
    torch.manual_seed(4)
    model = with_trained_batchnorm(TinyBN())
    x = torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0, 1, 2, 1])
    trained = {m: _explain(model, m, x, t) for m in ("gradient", "integrated_gradients")}
    before = [p.detach().clone() for p in model.parameters()]
    result = randomisation_check(model, list(trained), x, t, trained, _explain, checkpoints=2,
                                 threshold=0.5)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert result.steps == [1, 4] and result.layers == ["fc", "c1"]
    for method in trained:
        final = result.spearman[method][-1]
        passed, reason = result.verdict(method)
        assert passed is (final < 0.5)
        assert (reason is None) is passed
    strict = randomisation_check(model, ["gradient"], x, t, trained, _explain, checkpoints=1,
                                 threshold=-1.0)
    assert strict.verdict("gradient")[0] is False
    assert "survive model-parameter randomisation" in strict.verdict("gradient")[1]
    described = strict.describe([5, 6, 7, 8])
    assert described["images"] == [5, 6, 7, 8] and described["threshold"] == -1.0
    assert described["methods"]["gradient"]["passed"] is False


def test_checkpoint_steps() -> None:
    assert checkpoint_steps(62, 4) == [1, 21, 42, 62]
    assert checkpoint_steps(3, 10) == [1, 2, 3]
    assert checkpoint_steps(5, 1) == [1, 5]
    with pytest.raises(ValueError):
        checkpoint_steps(0, 4)
