"""Saliency maps, metrics (checked against scipy, scikit-image, Quantus) and the cell suite."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import LayerAttribution
from captum.metrics import sensitivity_max
from captum.metrics._core.sensitivity import default_perturb_func as captum_perturb
from PIL import Image
from scipy.stats import kstest, spearmanr
from skimage.metrics import structural_similarity
from torch import nn

from bench.saliency import (
    SALIENCY_METHODS,
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
from bench.saliency.metrics import (
    baseline_images,
    curve_auc,
    deletion_curve,
    insertion_curve,
    linf_ball_noise,
    normalise01,
    perturbation_scores,
    random_ranks,
    saliency_ranks,
    sensitivity_noise_seed,
    target_probability,
)

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


class LessConfident(nn.Module):
    """Two-class model whose target probability is `k` times the wrapped model's class-1
    probability: the same explanation, a less confident model."""

    def __init__(self, model: nn.Module, k: float) -> None:
        super().__init__()
        self.model, self.k = model, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.k * torch.softmax(self.model(x), dim=1)[:, 1]
        return torch.stack([torch.log1p(-p), torch.log(p)], dim=1)


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


def test_rounding_noise_of_a_constant_map_decides_nothing() -> None:
    """A 1x1 Grad-CAM map upsampled to 16x16 is constant up to float32 rounding; its noise
    used to give arbitrary Spearman, SSIM and top-k sets between two such maps."""
    one = torch.tensor([[[[0.3896301]]]])
    a = LayerAttribution.interpolate(one, (16, 16), interpolate_mode="bilinear")[:, 0].numpy()
    b = a.copy()
    b[0, 3, 5] = np.nextafter(b[0, 3, 5], np.float32(1.0))
    b[0, 9, 1] = np.nextafter(b[0, 9, 1], np.float32(0.0))
    assert np.isnan(spearman(a, b)[0])
    np.testing.assert_allclose(ssim(a, b), 1.0)
    assert np.isnan(topk_iou(a, b, 0.1)[0])
    np.testing.assert_array_equal(saliency_ranks(b), saliency_ranks(np.ones_like(b)))


def test_topk_iou_ignores_pixel_order_in_ties() -> None:
    """Two sparse maps with disjoint supports: index-ordered tie breaking put the same zeros
    into both top-k sets (IoU 0.6 here); the tie at the cut is left out instead."""
    a, b = np.zeros((1, 10, 10)), np.zeros((1, 10, 10))
    a.ravel()[[90, 91]] = 1.0
    b.ravel()[[95, 96]] = 1.0
    np.testing.assert_allclose(topk_iou(a, b, 0.1), 0.0)
    np.testing.assert_allclose(topk_iou(a, a, 0.1), 1.0)
    assert np.isnan(topk_iou(np.ones((1, 4, 4)), np.ones((1, 4, 4)), 0.25)[0])
    c = a.copy()
    c.ravel()[[92, 93]] = 0.5
    assert topk_iou(a, c, 0.1)[0] == pytest.approx(0.5)


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
        def explain(xx: torch.Tensor, tt: torch.Tensor, ids: object, m: nn.Module = model
                    ) -> np.ndarray:
            return compute_maps(m, xx, tt, "gradient")

        np.testing.assert_array_equal(max_sensitivity(explain, x, t, 0.1, 3), 0.0)

    tiny = TinyCNN(2).eval()

    def explain_tiny(xx: torch.Tensor, tt: torch.Tensor, ids: object) -> np.ndarray:
        return compute_maps(tiny, xx, tt, "gradient")

    assert np.all(max_sensitivity(explain_tiny, x, t, 0.1, 3) > 0)


def test_sensitivity_noise_is_the_uniform_linf_ball() -> None:
    """Yeh et al. 2019, Quantus' batch_uniform_noise and Captum's default_perturb_func draw
    U(-r, r) per element; the old Gaussian draws fail the bound and the variance check."""
    r = 0.05
    draws = torch.stack([linf_ball_noise((3, 16, 16), r, sensitivity_noise_seed(0, s, i))
                         for s in range(10) for i in range(8)]).numpy().ravel()
    assert np.abs(draws).max() <= r
    assert kstest(draws, "uniform", args=(-r, 2 * r)).pvalue > 0.01
    np.testing.assert_allclose(draws.var(), r * r / 3, rtol=0.02)
    captum_draw = captum_perturb(torch.zeros(20000), r)[0].numpy()
    assert kstest(captum_draw, "uniform", args=(-r, 2 * r)).pvalue > 0.01
    assert SaliencyConfig().sensitivity_samples >= 10


def test_max_sensitivity_matches_quantus_and_captum(tiny: tuple) -> None:
    """Same draws (ours), their norm, normalisation and maximum: the three agree."""
    quantus = pytest.importorskip("quantus")
    model, x, t = tiny
    n_draws, radius, seed = 10, 0.1, 7
    n = len(x)

    def explain(xx: object, tt: object, ids: object = None) -> np.ndarray:
        return compute_maps(model, torch.as_tensor(xx), torch.as_tensor(tt), "gradient")

    ours = max_sensitivity(explain, x, t, radius, n_draws, seed=seed, batch_size=3)
    draws = [torch.stack([linf_ball_noise(tuple(x.shape[1:]), radius,
                                          sensitivity_noise_seed(seed, s, i)) for i in range(n)])
             for s in range(n_draws)]
    pending = iter(draws)

    def same_noise(arr: np.ndarray, **_: object) -> np.ndarray:
        return arr + next(pending).numpy().reshape(arr.shape)

    metric = quantus.MaxSensitivity(nr_samples=n_draws, perturb_func=same_noise,
                                    disable_warnings=True)
    theirs = metric(model=model, x_batch=x.numpy(), y_batch=t.numpy(),
                    a_batch=explain(x, t)[:, None],
                    explain_func=lambda inputs, targets, **_: explain(inputs, targets)[:, None],
                    device="cpu")
    # Captum expands the inputs image by image (repeat_interleave): row i * n_draws + s.
    interleaved = torch.stack([draws[s][i] for i in range(n) for s in range(n_draws)])
    def captum_explain(inputs: torch.Tensor | tuple[torch.Tensor, ...], target: torch.Tensor
                       ) -> tuple[torch.Tensor]:
        x_in = inputs[0] if isinstance(inputs, tuple) else inputs
        return (torch.as_tensor(explain(x_in, target)),)

    captum = sensitivity_max(captum_explain,
                             x, perturb_func=lambda inputs: inputs + interleaved,
                             n_perturb_samples=n_draws, target=t).numpy()
    assert np.all(ours > 0)
    np.testing.assert_allclose(ours, np.asarray(theirs), rtol=QUANTUS_RTOL)
    np.testing.assert_allclose(ours, captum, rtol=QUANTUS_RTOL)
    fewer = max_sensitivity(explain, x, t, radius, 4, seed=seed)
    assert np.all(fewer <= ours + 1e-12)


def test_max_sensitivity_reuses_smoothgrad_noise_and_ignores_batching(tiny: tuple) -> None:
    model, x, t = tiny

    def explain(xx: torch.Tensor, tt: torch.Tensor, ids: np.ndarray) -> np.ndarray:
        return compute_maps(model, xx, tt, "smoothgrad", n_samples=3, ids=ids)

    one = max_sensitivity(explain, x, t, 0.0, 2, batch_size=1)
    np.testing.assert_allclose(one, 0.0, atol=1e-6)
    a = max_sensitivity(explain, x, t, 0.1, 3, batch_size=1)
    b = max_sensitivity(explain, x, t, 0.1, 3, batch_size=5)
    np.testing.assert_allclose(a, b, rtol=1e-5)


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


def _region_case() -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Two images whose top-left quadrant is the evidence for class 1, and maps that rank that
    quadrant first (with a little noise to break ties)."""
    x = torch.zeros(2, 3, 8, 8)
    x[:, :, :4, :4] = 1.0
    sal = np.zeros((2, 8, 8))
    sal[:, :4, :4] = 1.0
    return x, torch.tensor([1, 1]), sal + 0.01 * _rand_maps(3, (2, 8, 8))


def test_deletion_and_insertion_follow_the_region() -> None:
    model = RegionModel()
    x, t, sal = _region_case()
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


def test_normalised_deletion_and_insertion_are_comparable_across_models() -> None:
    """A less confident copy of a model gets a raw deletion AUC k times lower (the report used
    to call that better); normalised by p(target | x), the two models score the same."""
    confident = RegionModel()
    x, t, sal = _region_case()
    shuffled = random_ranks(2, 64, 0)
    scores = {}
    for name, model in (("confident", confident), ("unsure", LessConfident(confident, 0.5))):
        p = target_probability(model, x, t)
        scores[name] = {kind: perturbation_scores(
            kind, curve(model, x, t, saliency_ranks(sal), 16),
            curve(model, x, t, shuffled, 16), p)
            for kind, curve in (("deletion", deletion_curve), ("insertion", insertion_curve))}
    sure, unsure = scores["confident"], scores["unsure"]
    np.testing.assert_allclose(unsure["deletion"]["deletion_auc"],
                               0.5 * sure["deletion"]["deletion_auc"], rtol=1e-5)
    for kind in ("deletion", "insertion"):
        for key in (f"{kind}_auc_norm", f"{kind}_auc_random", f"{kind}_gain"):
            np.testing.assert_allclose(unsure[kind][key], sure[kind][key], rtol=1e-4)
        assert np.all(sure[kind][f"{kind}_gain"] > 0.1)
    np.testing.assert_allclose(sure["deletion"]["deletion_auc_norm"],
                               curve_auc(deletion_curve(confident, x, t, saliency_ranks(sal), 16)
                                         / target_probability(confident, x, t)[:, None]))
    inverted = perturbation_scores(
        "deletion", deletion_curve(confident, x, t, saliency_ranks(sal.max() - sal), 16),
        deletion_curve(confident, x, t, shuffled, 16), target_probability(confident, x, t))
    assert np.all(inverted["deletion_gain"] < 0)


def test_random_order_is_the_same_for_every_cell() -> None:
    np.testing.assert_array_equal(random_ranks(3, 50, 4), random_ranks(3, 50, 4))
    np.testing.assert_array_equal(random_ranks(3, 50, 4)[:2], random_ranks(2, 50, 4))
    assert sorted(random_ranks(1, 50, 4)[0]) == list(range(50))


def test_deletion_curve_matches_quantus_pixel_flipping(tiny: tuple) -> None:
    quantus = pytest.importorskip("quantus")
    model, x, t = tiny
    x, steps = x[:, :, :8, :8], 16
    sal = _rand_maps(11, (4, 8, 8))
    ours = deletion_curve(model, x, t, saliency_ranks(sal), steps)
    # Quantus flips channel values (the map broadcast over the 3 channels) 4 at a time: every
    # third of its steps has flipped whole pixels, 4 more than our previous step.
    theirs = quantus.PixelFlipping(features_in_step=64 // steps, perturb_baseline=0.0,
                                   disable_warnings=True)(
        model=model, x_batch=x.numpy(), y_batch=t.numpy(), a_batch=sal[:, None].astype(
            np.float32), device="cpu")
    np.testing.assert_allclose(ours[:, 1:], np.asarray(theirs)[:, 2::3], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ours[:, 0], target_probability(model, x, t), rtol=1e-6)


def test_insertion_curve_matches_a_direct_loop(tiny: tuple) -> None:
    model, x, t = tiny
    sal = _rand_maps(12, (4, 10, 10))
    ours = insertion_curve(model, x, t, saliency_ranks(sal), 5, batch_size=3)
    blurred = baseline_images(x, "blur")
    for i in range(4):
        order = np.argsort(-sal[i].ravel(), kind="stable")
        img = blurred[i].clone()
        for s in range(6):
            keep = order[:round(s * 100 / 5)]
            img.view(3, -1)[:, keep] = x[i].reshape(3, -1)[:, keep]
            with torch.no_grad():
                p = torch.softmax(model(img[None]), 1)[0, t[i]]
            assert ours[i, s] == pytest.approx(float(p), rel=1e-5)


def test_seed_consistency() -> None:
    a, b = _rand_maps(0), _rand_maps(1)
    np.testing.assert_allclose(seed_consistency([a, a, a]), 1.0)
    expected = (spearman(a, b) + spearman(a, a) + spearman(b, a)) / 3
    np.testing.assert_allclose(seed_consistency([a, b, a]), expected)
    with pytest.raises(ValueError):
        seed_consistency([a])


@pytest.mark.parametrize("method", SALIENCY_METHODS.names())
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


def test_gradcam_reads_the_input_of_the_global_pooling(tiny: tuple) -> None:
    model, x, t = tiny
    target = resolve_layer(model, None)
    assert (target.module, target.at) == (model.pool, "input")
    by_name = compute_maps(model, x, t, "gradcam", layer="c1")
    default = compute_maps(model, x, t, "gradcam")
    assert not np.allclose(by_name, default)
    np.testing.assert_allclose(default, compute_maps(model, x, t, "gradcam", layer="r2"),
                               rtol=1e-5)


def test_maps_on_brevitas_quantised_cnn(tiny: tuple) -> None:
    from brevitas.graph.quantize import preprocess_for_quantize, quantize

    model, x, t = tiny
    qmodel = quantize(preprocess_for_quantize(model))
    target = resolve_layer(qmodel, None)
    assert isinstance(target.module, nn.AdaptiveAvgPool2d) and target.at == "input"
    for method in SALIENCY_METHODS:
        maps = compute_maps(qmodel, x, t, method, n_samples=2, ig_steps=3)
        assert maps.shape == (4, 10, 10)
        assert np.isfinite(maps).all() and maps.max() > 0


def test_stability_suite_and_summary(tiny: tuple) -> None:
    model, x, t = tiny
    other = TinyCNN().eval()
    masks = np.zeros((4, 10, 10), dtype=bool)
    masks[:, 3:7, 3:7] = True
    cfg = SaliencyConfig(methods=["gradient", "gradcam"], n_samples=3, sensitivity_samples=2,
                         deletion_steps=4)
    res = stability_suite(other, model, x, t, masks, cfg)
    assert set(res) == {"gradient", "gradcam"}
    expected = {"maps", "spearman_fp32", "ssim_fp32", "topk_iou_fp32", "max_sensitivity",
                "pointing_game", "energy_pointing", "topk_iou_mask", "deletion_auc",
                "deletion_auc_norm", "deletion_auc_random", "deletion_gain", "insertion_auc",
                "insertion_auc_norm", "insertion_auc_random", "insertion_gain"}
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


def test_config_rejects_unknown_method_and_renamed_settings() -> None:
    with pytest.raises(ValueError, match="unknown saliency methods"):
        SaliencyConfig(methods=["gradient", "lime"])
    with pytest.raises(ValueError, match="'noise_std' is now 'sensitivity_radius'"):
        SaliencyConfig.model_validate({"noise_std": 0.1})


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


def test_stage_cost_counts_the_images_through_the_model(tiny: tuple) -> None:
    """bench.saliency.cost (what a dry run shows) counts exactly the forward passes of the
    suite, counted with a hook."""
    from bench.saliency.cost import stage_cost

    model, x, t = tiny
    cfg = SaliencyConfig(n_samples=3, ig_steps=3, smoothgrad_samples=2, sensitivity_samples=2,
                         deletion_steps=4, batch_size=5)
    seen = []
    handle = model.register_forward_pre_hook(lambda _m, args: seen.append(len(args[0])))
    try:
        stability_suite(model, None, x, t, None, cfg)
    finally:
        handle.remove()
    cost = stage_cost(cfg, n_test=len(x), quantized=False, sanity=False)
    assert sum(seen) == cost.images
    assert cost.forward == 3 * (3 + 2 * 3 * 5)   # shared end points, 3 inner steps, 5 orders


def test_smoothgrad_matches_captums_noise_tunnel_in_batches_of_several_images(tiny: tuple
                                                                              ) -> None:
    """The batched SmoothGrad (noisy copies of several images through the model together) is
    Captum's NoiseTunnel(Saliency) of each image alone after torch.manual_seed(seed + id)."""
    from captum.attr import NoiseTunnel, Saliency

    model, x, t = tiny
    ids, seed = np.array([3, 0, 7, 1]), 11
    expected = []
    for i, image_id in enumerate(ids):
        torch.manual_seed(seed + int(image_id))
        attr = NoiseTunnel(Saliency(model)).attribute(
            x[i:i + 1].clone().requires_grad_(), nt_type="smoothgrad", nt_samples=3,
            stdevs=0.2, target=t[i:i + 1], abs=False)
        expected.append(attr.abs().sum(dim=1).detach().numpy())
    for batch_size in (1, 5, 32):
        ours = compute_maps(model, x, t, "smoothgrad", n_samples=3, noise_std=0.2, seed=seed,
                            ids=ids, batch_size=batch_size)
        np.testing.assert_allclose(ours, np.concatenate(expected), rtol=1e-5, atol=1e-7)


def test_max_sensitivity_of_a_subset_is_its_value_among_all_images(tiny: tuple) -> None:
    """Noise is seeded by the image's position in the evaluated set (`ids`), so max-sensitivity
    computed on a subset gives each of its images the value it gets among all of them."""
    model, x, t = tiny

    def explain(xx: torch.Tensor, tt: torch.Tensor, ids: np.ndarray) -> np.ndarray:
        return compute_maps(model, xx, tt, "smoothgrad", n_samples=2, ids=ids)

    every = max_sensitivity(explain, x, t, 0.1, 3, seed=4, batch_size=3)
    pos = np.array([1, 3])
    part = max_sensitivity(explain, x[pos], t[pos], 0.1, 3, seed=4, batch_size=2, ids=pos)
    np.testing.assert_allclose(part, every[pos], rtol=1e-5)
    assert not np.allclose(max_sensitivity(explain, x[pos], t[pos], 0.1, 3, seed=4), every[pos])


def test_shared_curve_end_points_give_the_full_curves(tiny: tuple) -> None:
    """PerturbationCurves evaluates p(x), p(zeros) and p(blur) once and only the inner steps of
    each order, and gets the curves deletion_curve and insertion_curve evaluate step by step."""
    from bench.saliency.metrics import PerturbationCurves

    model, x, t = tiny
    seen = []
    handle = model.register_forward_pre_hook(lambda _m, args: seen.append(len(args[0])))
    try:
        curves = PerturbationCurves(model, x, t, steps=5, batch_size=7)
        ranks = [saliency_ranks(_rand_maps(s, (4, 10, 10))) for s in range(3)]
        shared = [(curves.deletion(r), curves.insertion(r)) for r in ranks]
    finally:
        handle.remove()
    assert sum(seen) == 4 * (3 + 3 * 2 * 4)
    for r, (deletion, insertion) in zip(ranks, shared, strict=True):
        np.testing.assert_allclose(deletion, deletion_curve(model, x, t, r, 5), rtol=1e-5)
        np.testing.assert_allclose(insertion, insertion_curve(model, x, t, r, 5), rtol=1e-5)
