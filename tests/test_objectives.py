"""Training objectives: cross-entropy and saliency-guided training (SGT) on a tiny CNN."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.objectives import (
    CrossEntropy,
    Objective,
    SaliencyGuided,
    input_gradient,
    input_saliency,
    kl_divergence,
    mask_lowest_saliency,
    masked_count,
    pixel_saliency,
)

N, C, H, W, CLASSES = 3, 3, 8, 8, 4


def tiny_cnn(batchnorm: bool = True) -> nn.Module:
    torch.manual_seed(0)
    norm: nn.Module = nn.BatchNorm2d(4) if batchnorm else nn.Identity()
    return nn.Sequential(nn.Conv2d(C, 4, 3, padding=1), norm, nn.ReLU(),
                         nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, CLASSES))


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, C, H, W, generator=g)
    return x, torch.tensor([0, 1, 3])


def seeded(seed: int = 7) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def grads_after(objective: Objective, model: nn.Module, x: torch.Tensor, y: torch.Tensor
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss, _ = objective.loss(model, x, y)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.3, 0.5, 1.0])
def test_feature_mask_has_exact_count(fraction: float) -> None:
    x = torch.randn(N, C, H, W)
    saliency = torch.rand(N, C, H, W)
    _, mask = mask_lowest_saliency(x, saliency, fraction, seeded())
    assert mask.shape == x.shape
    assert mask.reshape(N, -1).sum(1).tolist() == [masked_count(fraction, C * H * W)] * N


@pytest.mark.parametrize("fraction", [0.1, 0.45, 0.5])
def test_pixel_mask_has_exact_count_and_covers_all_channels(fraction: float) -> None:
    x = torch.randn(N, C, H, W)
    _, mask = mask_lowest_saliency(x, torch.rand(N, 1, H, W), fraction, seeded())
    assert mask.reshape(N, -1).sum(1).tolist() == [masked_count(fraction, H * W) * C] * N
    assert torch.equal(mask, mask[:, :1].expand_as(mask))


@pytest.mark.parametrize("shape", [(N, C, H, W), (N, 1, H, W)])
def test_masked_features_are_the_lowest_saliency_ones(shape: tuple[int, ...]) -> None:
    saliency = torch.rand(shape)
    _, mask = mask_lowest_saliency(torch.randn(N, C, H, W), saliency, 0.3, seeded())
    ranked = mask[:, : shape[1]].reshape(N, -1)
    flat = saliency.reshape(N, -1)
    for i in range(N):
        k = int(ranked[i].sum())
        assert set(ranked[i].nonzero().flatten().tolist()) == set(
            flat[i].argsort()[:k].tolist())
        assert flat[i][ranked[i]].max() < flat[i][~ranked[i]].min()


@pytest.mark.parametrize("mode", ["uniform", "uniform_per_channel"])
def test_replacements_lie_in_each_samples_range(mode: str) -> None:
    x = torch.randn(N, C, H, W)
    x[1] = x[1] * 0.01 + 10.0
    x[2, 0] += 5.0
    masked, mask = mask_lowest_saliency(x, torch.rand(N, C, H, W), 0.5, seeded(), mode)
    for i in range(N):
        values = masked[i][mask[i]]
        assert values.min() >= x[i].min() and values.max() <= x[i].max()
        assert not torch.isin(values, x[i]).all()
        if mode == "uniform_per_channel":
            for c in range(C):
                vc = masked[i, c][mask[i, c]]
                assert vc.min() >= x[i, c].min() and vc.max() <= x[i, c].max()
    assert torch.equal(masked[~mask], x[~mask])


def test_mask_rejects_bad_arguments() -> None:
    x = torch.randn(N, C, H, W)
    with pytest.raises(ValueError):
        mask_lowest_saliency(x, torch.rand(N, C, H, W), 1.5)
    with pytest.raises(ValueError):
        mask_lowest_saliency(x, torch.rand(N, 2, H, W), 0.1)
    with pytest.raises(ValueError):
        SaliencyGuided(mask_fraction=-0.1)
    with pytest.raises(ValueError):
        SaliencyGuided(mask_values="gaussian")  # type: ignore[arg-type]


def test_masked_count_is_the_reference_count() -> None:
    """Helper.get_SingleMask: k = max(1, int(H * H * percentage)); no masking at 0."""
    assert [masked_count(f, 64) for f in (0.0, 0.001, 0.1, 0.25, 0.29, 1.0)] == [
        0, 1, 6, 16, 18, 64]


def test_input_saliency_is_abs_target_logit_gradient_and_leaves_params_alone(batch) -> None:
    x, y = batch
    model = tiny_cnn().eval()
    saliency = input_saliency(model, x, y)
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(xr)[torch.arange(N), y].sum(), xr)
    assert torch.allclose(saliency, grad.abs())
    assert saliency.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_cross_entropy_equals_functional(batch) -> None:
    x, y = batch
    model = tiny_cnn().eval()
    loss, logits = CrossEntropy().loss(model, x, y)
    assert torch.allclose(loss, F.cross_entropy(model(x), y))
    assert torch.allclose(logits, model(x)) and not logits.requires_grad


def test_kl_term_is_nonzero_and_reaches_the_weights(batch) -> None:
    x, y = batch
    loss_kl, grads_kl = grads_after(SaliencyGuided(kl_weight=1.0, generator=seeded()),
                                    tiny_cnn(), x, y)
    loss_ce, grads_ce = grads_after(SaliencyGuided(kl_weight=0.0, generator=seeded()),
                                    tiny_cnn(), x, y)
    assert loss_kl > loss_ce
    assert any(not torch.allclose(a, b) for a, b in zip(grads_kl, grads_ce, strict=True))


def test_kl_divergence_direction() -> None:
    p, q = torch.randn(N, CLASSES), torch.randn(N, CLASSES)
    expected = (p.softmax(1) * (p.log_softmax(1) - q.log_softmax(1))).sum(1).mean()
    assert torch.allclose(kl_divergence(p, q), expected)
    assert not torch.allclose(kl_divergence(q, p), expected)


def test_sgt_is_deterministic_under_a_seed(batch) -> None:
    x, y = batch
    first = grads_after(SaliencyGuided(generator=seeded(3)), tiny_cnn(), x, y)
    again = grads_after(SaliencyGuided(generator=seeded(3)), tiny_cnn(), x, y)
    other = grads_after(SaliencyGuided(generator=seeded(4)), tiny_cnn(), x, y)
    assert torch.equal(first[0], again[0])
    assert all(torch.equal(a, b) for a, b in zip(first[1], again[1], strict=True))
    assert not torch.equal(first[0], other[0])


def test_shared_pass_equals_separate_saliency_pass(batch) -> None:
    """The shared forward gives the same loss and gradients as recomputing f(x) for the
    saliency in the same (train) mode."""
    x, y = batch
    objective = SaliencyGuided(mask_fraction=0.3, saliency_pass="shared", generator=seeded())
    loss, grads = grads_after(objective, tiny_cnn().train(), x, y)

    model = tiny_cnn().train()
    saliency = pixel_saliency(input_gradient(model, x, y))
    x_masked, _ = mask_lowest_saliency(x, saliency, 0.3, seeded())
    logits = model(x)
    expected = F.cross_entropy(logits, y) + kl_divergence(logits, model(x_masked))
    expected.backward()
    assert torch.allclose(loss, expected.detach())
    for got, p in zip(grads, model.parameters(), strict=True):
        assert torch.allclose(got, p.grad, atol=1e-6)


def test_eval_pass_equals_shared_pass_without_batchnorm(batch) -> None:
    x, y = batch
    shared = grads_after(SaliencyGuided(saliency_pass="shared", generator=seeded()),
                         tiny_cnn(False).train(), x, y)
    model = tiny_cnn(False).train()
    evaluated = grads_after(SaliencyGuided(generator=seeded()), model, x, y)
    assert model.training
    assert torch.allclose(shared[0], evaluated[0])
    assert all(torch.allclose(a, b) for a, b in zip(shared[1], evaluated[1], strict=True))


def with_running_statistics(model: nn.Module) -> nn.Module:
    """Batch norm whose running statistics differ from a batch's (as after some training)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.fill_(0.3)
            m.running_var.fill_(2.0)
    return model.train()


def reference_step(model: nn.Module, data: torch.Tensor, target: torch.Tensor,
                   uniform: torch.Tensor, fraction: float
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of the authors' `interpretable.train` (image branch, `--RandomMasking --abs`),
    line by line; NumPy's `uniform(min, max, size)` draws are min + (max - min) * u with u
    taken from `uniform` at the masked positions. Returns (loss, mask (N, C, H, W), masked
    inputs)."""
    from captum.attr import Saliency

    model.eval()
    temp = data.clone()
    grads = Saliency(model).attribute(data, target, abs=False).mean(1).detach().float().abs()
    masks = []
    for idx in range(temp.shape[0]):
        fattr = grads[idx]                                  # Helper.get_SingleMask
        k = max(1, int(len(fattr) * len(fattr) * fraction))
        _, i = torch.topk(fattr.flatten(), k, largest=False)
        single = torch.zeros_like(fattr.flatten(), dtype=torch.bool)
        single[i] = True
        single = single.reshape(fattr.shape)
        image = temp[idx]                                   # Helper.fill_SingleMask
        mask = single.repeat(image.shape[0], 1, 1)
        for c in range(image.shape[0]):
            lo, hi = torch.min(image[c]).item(), torch.max(image[c]).item()
            image[c, mask[c]] = lo + (hi - lo) * uniform[idx, c][mask[c]]
        temp[idx] = image
        masks.append(mask)
    masked_inputs = temp.view(data.shape).detach()
    model.train()
    output = model(data)
    loss = nn.CrossEntropyLoss()(output, target)
    masked_outputs = F.log_softmax(model(masked_inputs), dim=1)
    loss = loss + nn.KLDivLoss(reduction="batchmean")(masked_outputs, nn.Softmax(dim=1)(output))
    return loss, torch.stack(masks), masked_inputs


def test_one_step_equals_the_reference_training_step() -> None:
    """Defaults (eval-mode saliency pass, |channel mean|, reference count, per-channel fill):
    the same masked set and the same loss as the authors' step; the shared pass (the old
    default) masks other pixels when batch norm is in train mode."""
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(6, C, 10, 10, generator=g), torch.tensor([0, 1, 2, 3, 0, 1])
    fraction = 0.25
    uniform = torch.rand(x.shape, generator=torch.Generator().manual_seed(9))
    expected, expected_mask, expected_input = reference_step(
        with_running_statistics(tiny_cnn()), x.clone(), y, uniform, fraction)

    objective = SaliencyGuided(mask_fraction=fraction, generator=torch.Generator().manual_seed(9))
    model = with_running_statistics(tiny_cnn())
    _, x_masked, mask = objective.masked(model, x, y)
    assert torch.equal(mask, expected_mask)
    assert torch.allclose(x_masked, expected_input, rtol=0, atol=1e-6)
    assert mask.reshape(6, -1).sum(1).tolist() == [25 * C] * 6
    loss, _ = SaliencyGuided(mask_fraction=fraction, generator=torch.Generator().manual_seed(9)
                             ).loss(with_running_statistics(tiny_cnn()), x, y)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert model.training

    shared = SaliencyGuided(mask_fraction=fraction, saliency_pass="shared",
                            generator=torch.Generator().manual_seed(9))
    _, _, shared_mask = shared.masked(with_running_statistics(tiny_cnn()), x, y)
    assert not torch.equal(shared_mask, expected_mask)


def test_sgt_params_are_recorded_with_the_reference_defaults() -> None:
    from methods import get_method

    params = get_method("sgt").parse_params({}).model_dump()
    assert params["saliency_pass"] == "eval"
    assert params["mask_values"] == "uniform_per_channel"
    shared = get_method("pact_sgt").parse_params({"saliency_pass": "shared"})
    assert get_method("pact_sgt").objective(shared).saliency_pass == "shared"


def test_sgt_returns_detached_clean_logits(batch) -> None:
    x, y = batch
    model = tiny_cnn(False)
    _, logits = SaliencyGuided(generator=seeded()).loss(model, x, y)
    assert torch.allclose(logits, model(x)) and not logits.requires_grad
