"""Saliency maps, metrics (checked against scipy, scikit-image, Quantus) and the cell suite."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import spearmanr
from skimage.metrics import structural_similarity
from torch import nn

from bench.saliency import (
    METHODS,
    SaliencyConfig,
    compute_maps,
    deletion_auc,
    energy_pointing,
    insertion_auc,
    max_sensitivity,
    pointing_game,
    save_overlay_png,
    seed_consistency,
    spearman,
    ssim,
    stability_suite,
    summarize,
    topk_iou,
    topk_iou_mask,
)
from bench.saliency.maps import resolve_layer
from bench.saliency.metrics import normalise01

# Quantus and our implementations do the same float32 arithmetic on the same noise draws;
# differences come only from summation order.
QUANTUS_RTOL = 1e-5


class TinyCNN(nn.Module):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.r1 = nn.ReLU()
        self.c2 = nn.Conv2d(4, 6, 3, padding=1)
        self.r2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.r2(self.c2(self.r1(self.c1(x))))
        return self.fc(torch.flatten(self.pool(h), 1))


class RegionModel(nn.Module):
    """Class-1 logit = 0.5 * (sum of the top-left 4x4 region - 40); class-0 logit = 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = 0.5 * (x[:, :, :4, :4].sum(dim=(1, 2, 3)) - 40.0)
        return torch.stack([torch.zeros_like(s), s], dim=1)


class ConstantModel(nn.Module):
    """Output does not depend on the input (its gradient is exactly zero)."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([0.3, -0.2]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.0 * x.sum(dim=(1, 2, 3))[:, None] + self.bias


@pytest.fixture
def tiny() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return TinyCNN().eval(), torch.randn(4, 3, 10, 10), torch.tensor([0, 1, 2, 1])


def _rand_maps(seed: int, shape: tuple[int, ...] = (5, 12, 12)) -> np.ndarray:
    return np.random.default_rng(seed).random(shape)


def test_identical_maps_score_one() -> None:
    a = _rand_maps(0)
    np.testing.assert_allclose(spearman(a, a), 1.0)
    np.testing.assert_allclose(ssim(a, a), 1.0)
    np.testing.assert_allclose(topk_iou(a, a, 0.1), 1.0)


def test_different_maps_score_below_one() -> None:
    a, b = _rand_maps(0), _rand_maps(1)
    assert np.all(spearman(a, b) < 0.5)
    assert np.all(ssim(a, b) < 0.5)
    assert np.all(topk_iou(a, b, 0.1) < 0.5)
    np.testing.assert_allclose(spearman(a, -a), -1.0)


def test_spearman_matches_scipy_with_ties() -> None:
    a, b = np.round(_rand_maps(2) * 4), np.round(_rand_maps(3) * 4)
    expected = [spearmanr(x.ravel(), y.ravel()).statistic for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(spearman(a, b), expected, rtol=1e-10)
    assert np.isnan(spearman(np.ones((1, 4, 4)), a[:1, :4, :4]))[0]


def test_ssim_matches_skimage_and_ignores_scale() -> None:
    a, b = _rand_maps(4), _rand_maps(5)
    b[:, :6] += a[:, :6]
    expected = [structural_similarity(x, y, data_range=1.0)
                for x, y in zip(normalise01(a), normalise01(b), strict=True)]
    np.testing.assert_allclose(ssim(a, b), expected, rtol=1e-12)
    np.testing.assert_allclose(ssim(3.0 * a + 1.0, b), ssim(a, b), rtol=1e-9)


def test_topk_iou_counts_overlap() -> None:
    a = np.zeros((1, 10, 10))
    b = np.zeros((1, 10, 10))
    a.ravel()[:10] = np.arange(10, 0, -1)
    b.ravel()[5:15] = np.arange(10, 0, -1)
    np.testing.assert_allclose(topk_iou(a, b, 0.1), 5 / 15)


def test_pointing_game_inside_and_outside() -> None:
    masks = np.zeros((2, 8, 8), dtype=bool)
    masks[:, 2:5, 2:5] = True
    maps = np.zeros((2, 8, 8))
    maps[0, 3, 3] = 1.0
    maps[1, 7, 7] = 1.0
    np.testing.assert_array_equal(pointing_game(maps, masks), [1.0, 0.0])
    assert np.isnan(pointing_game(maps[:1], np.zeros((1, 8, 8), bool)))[0]


def test_energy_pointing_and_mask_iou() -> None:
    masks = np.zeros((2, 10, 10), dtype=bool)
    masks[:, :1] = True
    maps = np.zeros((2, 10, 10))
    maps[0, 0] = 1.0
    maps[1, 0, :5] = 1.0
    maps[1, 9, :5] = 1.0
    np.testing.assert_allclose(energy_pointing(maps, masks), [1.0, 0.5])
    np.testing.assert_allclose(topk_iou_mask(maps, masks[:, None], 0.1), [1.0, 5 / 15])


def test_max_sensitivity_zero_for_constant_explanations() -> None:
    x, t = torch.randn(3, 3, 6, 6), torch.tensor([0, 1, 0])
    const = ConstantModel()
    linear = nn.Sequential(nn.Flatten(), nn.Linear(108, 2))

    for model in (const, linear):
        def explain(xx: torch.Tensor, tt: torch.Tensor, m: nn.Module = model) -> np.ndarray:
            return compute_maps(m, xx, tt, "gradient")

        np.testing.assert_array_equal(max_sensitivity(explain, x, t, 0.1, 3), 0.0)

    tiny = TinyCNN(2).eval()

    def explain_tiny(xx: torch.Tensor, tt: torch.Tensor) -> np.ndarray:
        return compute_maps(tiny, xx, tt, "gradient")

    assert np.all(max_sensitivity(explain_tiny, x, t, 0.1, 3) > 0)


def test_max_sensitivity_matches_quantus(tiny: tuple) -> None:
    quantus = pytest.importorskip("quantus")
    model, x, t = tiny
    n_draws, std, seed = 5, 0.1, 7

    def explain(xx: object, tt: object) -> np.ndarray:
        return compute_maps(model, torch.as_tensor(xx), torch.as_tensor(tt), "gradient")

    ours = max_sensitivity(explain, x, t, std, n_draws, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    draws = iter([std * torch.randn(x.shape, generator=gen) for _ in range(n_draws)])

    def same_noise(arr: np.ndarray, **_: object) -> np.ndarray:
        return arr + next(draws).numpy().reshape(arr.shape)

    metric = quantus.MaxSensitivity(nr_samples=n_draws, perturb_func=same_noise,
                                    disable_warnings=True)
    theirs = metric(model=model, x_batch=x.numpy(), y_batch=t.numpy(),
                    a_batch=explain(x, t)[:, None],
                    explain_func=lambda inputs, targets, **_: explain(inputs, targets)[:, None],
                    device="cpu")
    assert np.all(ours > 0)
    np.testing.assert_allclose(ours, np.asarray(theirs), rtol=QUANTUS_RTOL)


def test_localisation_matches_quantus() -> None:
    quantus = pytest.importorskip("quantus")
    rng = np.random.default_rng(9)
    maps = np.round(rng.normal(size=(6, 8, 8)), 1)
    masks = np.zeros((6, 8, 8), dtype=bool)
    masks[:, :3] = True
    masks[5] = False
    masks[5, 0, 0] = True
    x, y = np.zeros((6, 3, 8, 8), np.float32), np.zeros(6, dtype=int)
    model = TinyCNN().eval()
    pg = quantus.PointingGame(disable_warnings=True)(
        model=model, x_batch=x, y_batch=y, a_batch=maps[:, None], s_batch=masks[:, None],
        device="cpu")
    np.testing.assert_array_equal(pointing_game(maps, masks), np.asarray(pg, dtype=float))
    loc = quantus.AttributionLocalisation(abs=False, positive_attributions=True, normalise=False,
                                          disable_warnings=True)(
        model=model, x_batch=x, y_batch=y, a_batch=maps[:, None], s_batch=masks[:, None],
        device="cpu")
    np.testing.assert_allclose(energy_pointing(maps, masks), loc, rtol=QUANTUS_RTOL)


def test_deletion_and_insertion_follow_the_region() -> None:
    model = RegionModel()
    x = torch.zeros(2, 3, 8, 8)
    x[:, :, :4, :4] = 1.0
    t = torch.tensor([1, 1])
    sal = np.zeros((2, 8, 8))
    sal[:, :4, :4] = 1.0
    sal += 0.01 * _rand_maps(3, (2, 8, 8))
    inv = sal.max() - sal
    d_sal, d_inv = deletion_auc(model, x, t, sal, 16), deletion_auc(model, x, t, inv, 16)
    i_sal, i_inv = insertion_auc(model, x, t, sal, 16), insertion_auc(model, x, t, inv, 16)
    assert np.all(d_sal + 0.3 < d_inv)
    assert np.all(i_sal > i_inv + 0.3)
    for auc in (d_sal, d_inv, i_sal, i_inv):
        assert np.all((auc >= 0) & (auc <= 1))


def test_deletion_and_insertion_do_not_depend_on_batch_size(tiny: tuple) -> None:
    model, x, t = tiny
    sal = _rand_maps(6, (4, 10, 10))
    for auc in (deletion_auc, insertion_auc):
        one, many = auc(model, x, t, sal, 5, batch_size=1), auc(model, x, t, sal, 5, batch_size=7)
        np.testing.assert_allclose(one, many, rtol=1e-5)
        assert not np.allclose(one, one[0])


def test_seed_consistency() -> None:
    a, b = _rand_maps(0), _rand_maps(1)
    np.testing.assert_allclose(seed_consistency([a, a, a]), 1.0)
    expected = (spearman(a, b) + spearman(a, a) + spearman(b, a)) / 3
    np.testing.assert_allclose(seed_consistency([a, b, a]), expected)
    with pytest.raises(ValueError):
        seed_consistency([a])


@pytest.mark.parametrize("method", sorted(METHODS))
def test_maps_shape_finite_and_batch_invariant(method: str, tiny: tuple) -> None:
    model, x, t = tiny
    full = compute_maps(model, x, t, method, n_samples=3, ig_steps=4, batch_size=len(x))
    single = compute_maps(model, x, t, method, n_samples=3, ig_steps=4, batch_size=1)
    assert full.shape == (4, 10, 10)
    assert np.isfinite(full).all() and (full >= 0).all() and full.max() > 0
    np.testing.assert_allclose(full, single, rtol=1e-4, atol=1e-6 * full.max())
    assert model.training is False


def test_channel_aggregation(tiny: tuple) -> None:
    model, x, t = tiny
    summed = compute_maps(model, x, t, "gradient")
    maxed = compute_maps(model, x, t, "gradient", aggregate="abs_max")
    assert np.all(maxed <= summed + 1e-9) and np.all(3 * maxed >= summed - 1e-9)
    assert not np.allclose(maxed, summed)


def test_gradcam_default_layer_is_last_conv(tiny: tuple) -> None:
    model, x, t = tiny
    assert resolve_layer(model, None) is model.c2
    by_name = compute_maps(model, x, t, "gradcam", layer="c1")
    default = compute_maps(model, x, t, "gradcam")
    assert not np.allclose(by_name, default)


def test_maps_on_brevitas_quantised_cnn(tiny: tuple) -> None:
    from brevitas.graph.quantize import preprocess_for_quantize, quantize
    from brevitas.nn import QuantConv2d

    model, x, t = tiny
    qmodel = quantize(preprocess_for_quantize(model))
    assert isinstance(resolve_layer(qmodel, None), QuantConv2d)
    for method in METHODS:
        maps = compute_maps(qmodel, x, t, method, n_samples=2, ig_steps=3)
        assert maps.shape == (4, 10, 10)
        assert np.isfinite(maps).all() and maps.max() > 0


def test_stability_suite_and_summary(tiny: tuple) -> None:
    model, x, t = tiny
    other = TinyCNN().eval()
    masks = np.zeros((4, 10, 10), dtype=bool)
    masks[:, 3:7, 3:7] = True
    cfg = SaliencyConfig(methods=["gradient", "gradcam"], n_samples=3, noise_samples=2,
                         deletion_steps=4)
    res = stability_suite(other, model, x, t, masks, cfg)
    assert set(res) == {"gradient", "gradcam"}
    expected = {"maps", "spearman_fp32", "ssim_fp32", "topk_iou_fp32", "max_sensitivity",
                "pointing_game", "energy_pointing", "topk_iou_mask", "deletion_auc",
                "insertion_auc"}
    assert set(res["gradient"]) == expected
    assert res["gradient"]["maps"].shape == (3, 10, 10)
    for name in expected - {"maps"}:
        assert res["gradcam"][name].shape == (3,)
    self_res = stability_suite(model, model, x, t, None, cfg)
    np.testing.assert_allclose(self_res["gradient"]["spearman_fp32"], 1.0)
    assert "pointing_game" not in self_res["gradient"]
    bare = stability_suite(model, None, x, t, None, cfg)
    assert "spearman_fp32" not in bare["gradient"]

    flat = summarize(res)
    mean = flat["saliency_spearman_fp32/gradient/mean"]
    np.testing.assert_allclose(mean, res["gradient"]["spearman_fp32"].mean())
    assert flat["saliency_deletion_auc/gradcam/n"] == 3.0
    assert "saliency_maps/gradient/mean" not in flat


def test_config_rejects_unknown_method() -> None:
    with pytest.raises(ValueError, match="unknown saliency methods"):
        SaliencyConfig(methods=["gradient", "lime"])


def test_save_overlay_png(tmp_path: object, tiny: tuple) -> None:
    _, x, _ = tiny
    path = save_overlay_png(x[0], _rand_maps(0, (10, 10)), _rand_maps(1, (10, 10)),
                            tmp_path / "g" / "o.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) < 100_000
    two = save_overlay_png(x[0], None, _rand_maps(1, (10, 10)), tmp_path / "two.png", panel=32)
    with Image.open(path) as three, Image.open(two) as pair:
        assert three.width == 3 * 96 and pair.width == 2 * 32
