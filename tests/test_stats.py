"""bench.stats against independent oracles: scipy, statsmodels, Demšar (2006) tables."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import matplotlib
import numpy as np
import pytest
from matplotlib.figure import Figure
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from bench.stats import (
    MIN_BLOCKS,
    MIN_N_BOOTSTRAP,
    MIN_N_TTEST,
    MIN_N_WILCOXON,
    clustered_mcnemar,
    compare_family,
    critical_difference,
    friedman,
    holm,
    image_power,
    mcnemar_exact,
    mean_ci,
    paired_test,
    plot_cd,
    seeds_needed,
    sign_flip_test,
    t_test_n,
)

matplotlib.use("Agg")

A8 = [0.912, 0.905, 0.921, 0.899, 0.917, 0.908, 0.925, 0.902]
B8 = [0.901, 0.907, 0.910, 0.880, 0.915, 0.889, 0.903, 0.897]
# accuracy in percent: ties among |d| and two zero differences
A10 = [90, 91, 92, 93, 94, 95, 96, 97, 98, 99]
B10 = [88, 91, 90, 94, 94, 93, 95, 99, 95, 96]


@pytest.mark.parametrize(("a", "b"), [(A8, B8), (A10, B10)])
def test_wilcoxon_matches_scipy(a: list[float], b: list[float]) -> None:
    r = paired_test(a, b, "wilcoxon")
    oracle = stats.wilcoxon(a, b)
    assert r.reason is None
    assert r.statistic == pytest.approx(oracle.statistic)
    assert r.p_value == pytest.approx(oracle.pvalue)
    nonzero = np.count_nonzero(np.subtract(a, b))
    r_plus = stats.wilcoxon(a, b, alternative="greater").statistic
    assert r.effect_size == pytest.approx(2 * r_plus / (nonzero * (nonzero + 1) / 2) - 1)
    assert r.diff_mean == pytest.approx(np.mean(np.subtract(a, b)))


def test_rank_biserial_extremes() -> None:
    up = paired_test([1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 0])
    down = paired_test([0, 0, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6])
    assert up.effect_size == 1.0 and down.effect_size == -1.0
    assert up.p_value == pytest.approx(2 / 2**6)


def test_ttest_matches_scipy() -> None:
    r = paired_test(A8, B8, "ttest")
    oracle = stats.ttest_rel(A8, B8)
    assert r.statistic == pytest.approx(oracle.statistic)
    assert r.p_value == pytest.approx(oracle.pvalue)
    assert r.effect_size == pytest.approx(oracle.statistic / math.sqrt(len(A8)))


def test_too_few_seeds_no_p_value() -> None:
    for test, n in [("wilcoxon", MIN_N_WILCOXON - 1), ("ttest", MIN_N_TTEST - 1), ("ttest", 2)]:
        r = paired_test(A8[:n], B8[:n], test)
        assert r.p_value is None and r.statistic is None and r.effect_size is None
        assert r.reason is not None and f"n={n} seeds" in r.reason
        assert r.diff_mean == pytest.approx(np.mean(np.subtract(A8[:n], B8[:n])))
    r = paired_test([1, 2, 3, 4, 5, 6, 7], [1, 2, 0, 0, 0, 0, 0])
    assert r.p_value is None and "5 of 7 differences nonzero" in (r.reason or "")
    shifted = paired_test([3, 4, 5, 6, 7], [1, 2, 3, 4, 5], "ttest")
    assert shifted.p_value is None and "zero variance" in (shifted.reason or "")


def test_wilcoxon_threshold_is_smallest_n_that_can_reach_005() -> None:
    assert stats.wilcoxon(np.arange(1, MIN_N_WILCOXON)).pvalue > 0.05
    assert stats.wilcoxon(np.arange(1, MIN_N_WILCOXON + 1)).pvalue < 0.05


def test_missing_seeds_dropped_pairwise() -> None:
    a, b = [*A8, np.nan, 0.5], [*B8, 0.5, np.inf]
    assert paired_test(a, b) == paired_test(A8, B8)
    with pytest.raises(ValueError):
        paired_test(A8, B8[:-1])


def test_bootstrap_ci_seeded_and_gated() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.9, 0.01, 12), rng.normal(0.89, 0.01, 12)
    r1 = paired_test(a, b, n_resamples=999, seed=3)
    assert r1 == paired_test(a, b, n_resamples=999, seed=3)
    assert r1.ci_low is not None and r1.ci_high is not None
    assert r1.ci_low < r1.diff_mean < r1.ci_high and r1.ci_reason is None
    small = paired_test(a[: MIN_N_BOOTSTRAP - 1], b[: MIN_N_BOOTSTRAP - 1])
    assert small.ci_low is None and small.ci_high is None and small.ci_reason is not None
    assert small.p_value is not None


def test_bootstrap_ci_coverage() -> None:
    rng = np.random.default_rng(2024)
    true_diff, sims, n = 0.01, 200, 20
    hits = 0
    for s in range(sims):
        b = rng.normal(0.85, 0.02, n)
        a = b + rng.normal(true_diff, 0.01, n)
        r = paired_test(a, b, "ttest", n_resamples=999, seed=s)
        hits += r.ci_low <= true_diff <= r.ci_high
    assert 0.88 <= hits / sims <= 0.99


def test_holm_matches_statsmodels_and_skips_none() -> None:
    p = [0.01, None, 0.04, 0.03, None]
    out = holm(p)
    assert out[1] is None and out[4] is None
    expected = multipletests([0.01, 0.04, 0.03], method="holm")[1]
    assert [out[0], out[2], out[3]] == pytest.approx(list(expected))
    assert [out[0], out[2], out[3]] == pytest.approx([0.03, 0.06, 0.06])
    assert holm([]) == [] and holm([None]) == [None]


def _family(seeds: int = 8) -> dict[str, list[float]]:
    rng = np.random.default_rng(7)
    base = rng.normal(0.9, 0.01, seeds)
    shifts = {"FP32": 0.0, "PTQ": -0.02, "QAT": -0.005, "PACT": -0.001}
    return {m: list(base + s + rng.normal(0, 0.004, seeds)) for m, s in shifts.items()}


def test_compare_family_vs_baseline() -> None:
    values = _family()
    values["SGT"] = values["FP32"][:4] + [np.nan] * 4
    res = compare_family(values, baseline="FP32", n_resamples=999)
    assert [(r.name_a, r.name_b) for r in res] == [(m, "FP32") for m in values if m != "FP32"]
    raw = [stats.wilcoxon(values[m], values["FP32"]).pvalue for m in ["PTQ", "QAT", "PACT"]]
    assert [r.p_value for r in res[:3]] == pytest.approx(raw)
    assert [r.p_adjusted for r in res[:3]] == pytest.approx(
        list(multipletests(raw, method="holm")[1])
    )
    assert res[3].p_value is None and res[3].p_adjusted is None and res[3].n == 4
    with pytest.raises(ValueError):
        compare_family(values, baseline="missing")


def test_compare_family_all_pairs() -> None:
    values = _family()
    res = compare_family(values, baseline=None, test="ttest", n_resamples=999)
    pairs = list(itertools.combinations(values, 2))
    assert [(r.name_a, r.name_b) for r in res] == pairs
    raw = [stats.ttest_rel(values[x], values[y]).pvalue for x, y in pairs]
    assert [r.p_adjusted for r in res] == pytest.approx(list(multipletests(raw, method="holm")[1]))


def test_mcnemar_matches_statsmodels_and_binomial() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 300)
    pa = np.where(rng.random(300) < 0.8, y, (y + 1) % 3)
    pb = np.where(rng.random(300) < 0.7, y, (y + 2) % 3)
    r = mcnemar_exact(pa, pb, y)
    ca, cb = pa == y, pb == y
    counts = Counter(zip(ca.tolist(), cb.tolist(), strict=True))
    assert (r.n01, r.n10) == (counts[(False, True)], counts[(True, False)])
    table = [[counts[(False, False)], r.n01], [r.n10, counts[(True, True)]]]
    assert r.p_value == pytest.approx(mcnemar(table, exact=True).pvalue)
    binom = stats.binomtest(min(r.n01, r.n10), r.n01 + r.n10, 0.5).pvalue
    assert r.p_value == pytest.approx(binom)
    assert r.p_value < 0.05 and r.reason is None


def test_mcnemar_identical_predictions() -> None:
    y = [0, 1, 1, 0, 2, 2, 1]
    pred = [0, 1, 0, 0, 2, 1, 1]
    r = mcnemar_exact(pred, list(pred), y)
    assert (r.n01, r.n10, r.p_value, r.reason) == (0, 0, 1.0, None)
    assert mcnemar_exact([], [], []).p_value is None
    with pytest.raises(ValueError):
        mcnemar_exact(pred, pred[:-1], y)


def test_friedman_matches_scipy() -> None:
    values = _family(6)
    values["PTQ"][0] = values["QAT"][0]  # a tie within one block
    r = friedman(values)
    oracle = stats.friedmanchisquare(*values.values())
    assert (r.n_blocks, r.k, r.reason) == (6, 4, None)
    assert r.statistic == pytest.approx(oracle.statistic)
    assert r.p_value == pytest.approx(oracle.pvalue)


def test_friedman_refuses() -> None:
    few = friedman({m: v[: MIN_BLOCKS - 1] for m, v in _family().items()})
    assert few.p_value is None and few.statistic is None and "seeds" in (few.reason or "")
    two = friedman({m: v for m, v in list(_family().items())[:2]})
    assert two.p_value is None and "k=2" in (two.reason or "")
    tied = friedman({m: [0.5] * 6 for m in "ABC"})
    assert tied.p_value is None and "tied" in (tied.reason or "")


def _exact_friedman_size(k: int, n: int, alpha: float = 0.05) -> float:
    """Real rejection rate of the chi-square Friedman test under H0, by enumeration."""
    perms = list(itertools.permutations(range(1, k + 1)))
    dist: Counter[tuple[int, ...]] = Counter({(0,) * k: 1})
    for _ in range(n):
        nxt: Counter[tuple[int, ...]] = Counter()
        for sums, c in dist.items():
            for p in perms:
                nxt[tuple(s + q for s, q in zip(sums, p, strict=True))] += c
        dist = nxt
    crit = stats.chi2.ppf(1 - alpha, k - 1)
    rejected = sum(
        c
        for sums, c in dist.items()
        if 12 / (n * k * (k + 1)) * sum(s * s for s in sums) - 3 * n * (k + 1) >= crit - 1e-9
    )
    return rejected / len(perms) ** n


def test_friedman_block_threshold_justified() -> None:
    assert _exact_friedman_size(3, MIN_BLOCKS - 1) > 0.06
    for n in range(MIN_BLOCKS, 9):
        assert 0.03 <= _exact_friedman_size(3, n) <= 0.06


DEMSAR_Q05 = {4: 2.569, 5: 2.728, 6: 2.850}


@pytest.mark.parametrize("k", sorted(DEMSAR_Q05))
def test_nemenyi_cd_matches_demsar_table(k: int) -> None:
    rng = np.random.default_rng(k)
    for n in range(10, 21):
        matrix = {f"m{i}": list(rng.random(n)) for i in range(k)}
        r = critical_difference(matrix)
        scale = math.sqrt(k * (k + 1) / (6 * n))
        assert r.cd is not None and round(r.cd / scale, 3) == DEMSAR_Q05[k]
        assert r.cd == pytest.approx(DEMSAR_Q05[k] * scale, abs=5e-4 * scale)


def test_demsar_worked_example_cd() -> None:
    matrix = {m: list(np.random.default_rng(0).random(14)) for m in "ABCD"}
    assert round(critical_difference(matrix).cd or 0, 2) == 1.25


def test_avg_ranks_and_cliques() -> None:
    values = {"A": [0.9, 0.8], "B": [0.8, 0.8], "C": [0.8, 0.7]}
    assert critical_difference(values).avg_ranks == {"A": 1.25, "B": 2.0, "C": 2.75}
    assert critical_difference(values, higher_is_better=False).avg_ranks == {
        "C": 1.25,
        "B": 2.0,
        "A": 2.75,
    }
    # strict order in every seed: ranks 1..4 one apart; CD(k=4, N=10) = 1.48
    ordered = {m: [1.0 - 0.1 * i] * 10 for i, m in enumerate("ABCD")}
    r = critical_difference(ordered)
    assert r.avg_ranks == {"A": 1.0, "B": 2.0, "C": 3.0, "D": 4.0}
    assert r.cliques == (("A", "B"), ("B", "C"), ("C", "D"))
    assert critical_difference(ordered, alpha=0.001).cliques == (("A", "B", "C"), ("B", "C", "D"))
    few = critical_difference({m: v[:3] for m, v in ordered.items()})
    assert few.cd is None and few.cliques == () and few.reason is not None


def test_plot_cd_draws_names_cd_and_cliques() -> None:
    ordered = {m: [1.0 - 0.1 * i] * 10 for i, m in enumerate(["FP32", "QAT", "PACT", "PTQ"])}
    r = critical_difference(ordered)
    ax = plot_cd(r, Figure().subplots())
    texts = " ".join(t.get_text() for t in ax.texts)
    assert all(m in texts for m in ordered) and "CD" in texts
    bars = sorted((tuple(line.get_xdata())) for line in ax.lines if line.get_linewidth() == 3)
    assert len(bars) == len(r.cliques) == 3
    assert bars[0] == pytest.approx((1 - 0.03, 2 + 0.03))
    cd_bar = [line for line in ax.lines if line.get_linewidth() == 1.5]
    assert list(cd_bar[0].get_xdata()) == pytest.approx([1, 1 + (r.cd or 0)])


def test_mean_ci_t_interval() -> None:
    x = [0.91, 0.93, 0.90, 0.94, 0.92]
    mean, low, high = mean_ci(x)
    half = stats.t.ppf(0.975, 4) * np.std(x, ddof=1) / math.sqrt(5)
    assert (mean, low, high) == pytest.approx((np.mean(x), np.mean(x) - half, np.mean(x) + half))
    assert mean_ci([0.9]) == (0.9, None, None)
    assert mean_ci([0.9, np.nan]) == (0.9, None, None)
    with pytest.raises(ValueError):
        mean_ci([])


# --- per-image tests with the image as the unit ---------------------------------------------


def three_seeds(effect: float = 0.1, n: int = 80, seed: int = 0
                ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per-seed correctness of two models on the same n test images; A is right more often."""
    rng = np.random.default_rng(seed)
    a, b = [], []
    for _ in range(3):
        easy = rng.random(n)
        a.append(easy < 0.75 + effect / 2)
        b.append(easy + rng.normal(0, 0.15, n) < 0.75 - effect / 2)
    return a, b


def test_clustered_mcnemar_with_one_seed_is_mcnemar() -> None:
    a, b = three_seeds()
    res = clustered_mcnemar(a[:1], b[:1])
    n10, n01 = int((a[0] & ~b[0]).sum()), int((~a[0] & b[0]).sum())
    assert (res.n10, res.n01, res.n_images, res.n_seeds) == (n10, n01, 80, 1)
    oracle = mcnemar([[0, n10], [n01, 0]], exact=False, correction=False)
    assert res.statistic == pytest.approx(oracle.statistic)
    assert res.p_value == pytest.approx(oracle.pvalue)
    assert res.p_exact == pytest.approx(mcnemar([[0, n10], [n01, 0]], exact=True).pvalue)


def test_clustered_mcnemar_is_durkalskis_statistic_by_hand() -> None:
    """Durkalski et al. (2003): X2 = (sum_i (b_i - c_i))^2 / sum_i (b_i - c_i)^2 over images.
    Images (rows) x seeds: d = 3, 2, -1, 1, 0 (one seed each way), 0 -> X2 = 25 / 15."""
    a = np.array([[1, 1, 1], [1, 1, 0], [0, 1, 1], [1, 1, 1], [1, 0, 1], [1, 1, 1]], bool)
    b = np.array([[0, 0, 0], [0, 0, 0], [1, 1, 1], [0, 1, 1], [0, 1, 1], [1, 1, 1]], bool)
    res = clustered_mcnemar(list(a.T), list(b.T))
    assert res.statistic == pytest.approx(25 / 15)
    assert res.p_value == pytest.approx(stats.chi2.sf(25 / 15, 1))
    assert (res.n10, res.n01) == (7, 2)
    # the pooled McNemar over (seed, image) pairs divides by n10 + n01 = 9 instead of 15
    assert res.statistic < (7 - 2) ** 2 / 9
    assert res.diff_mean == pytest.approx((a.mean(axis=0) - b.mean(axis=0)).mean())


def _scipy_cluster_p(a: list[np.ndarray], b: list[np.ndarray], n_resamples: float) -> float:
    """scipy's paired permutation test that swaps A and B of an image in every seed at once:
    the samples are the per-image sums over seeds, weighted as the statistic weights them."""
    sizes = [x.size for x in a]
    x = sum(u / (len(a) * k) for u, k in zip(a, sizes, strict=True))
    y = sum(v / (len(b) * k) for v, k in zip(b, sizes, strict=True))

    def statistic(u: np.ndarray, v: np.ndarray, axis: int) -> np.ndarray:
        return np.sum(u - v, axis=axis)

    return stats.permutation_test((x, y), statistic, permutation_type="samples",
                                  n_resamples=n_resamples, vectorized=True,
                                  rng=np.random.default_rng(1)).pvalue


def test_clustered_mcnemar_exact_p_matches_scipys_image_level_permutation() -> None:
    a, b = three_seeds(effect=0.2, n=12, seed=2)
    res = clustered_mcnemar(a, b)
    exact = _scipy_cluster_p([x.astype(float) for x in a], [y.astype(float) for y in b], np.inf)
    assert res.p_exact == pytest.approx(exact)
    big_a, big_b = three_seeds(effect=0.05, n=400, seed=3)
    big = clustered_mcnemar(big_a, big_b)
    oracle = _scipy_cluster_p([x.astype(float) for x in big_a],
                              [y.astype(float) for y in big_b], 4000)
    assert abs(big.p_exact - oracle) < 0.03 and abs(big.p_exact - big.p_value) < 0.05


def test_clustered_mcnemar_pairs_images_by_id_across_seeds() -> None:
    a, b = three_seeds(effect=0.05, n=60, seed=4)
    rng = np.random.default_rng(0)
    order = [rng.permutation(60) for _ in a]
    shuffled = clustered_mcnemar([x[o] for x, o in zip(a, order, strict=True)],
                                 [y[o] for y, o in zip(b, order, strict=True)], images=order)
    assert shuffled.statistic == pytest.approx(clustered_mcnemar(a, b).statistic)
    with pytest.raises(ValueError, match="images="):
        clustered_mcnemar([a[0], a[1][:50]], [b[0], b[1][:50]])


def test_clustered_mcnemar_p_value_does_not_underflow_to_zero() -> None:
    a, b = three_seeds(effect=0.9, n=120)
    res = clustered_mcnemar(a, b)
    assert res.statistic > 30
    assert 0.0 < res.p_value == pytest.approx(stats.chi2.sf(res.statistic, 1))
    assert res.p_exact > 0.0


def test_clustered_mcnemar_without_discordant_pairs_gives_the_reason() -> None:
    same = [np.array([True, False, True])] * 3
    res = clustered_mcnemar(same, same)
    assert res.p_value is None and "same images" in res.reason
    assert clustered_mcnemar([], []).reason == "no paired images: no test"
    cancel = clustered_mcnemar([np.array([True, False]), np.array([False, True])],
                               [np.array([False, True]), np.array([True, False])])
    assert cancel.p_value is None and "cancel" in cancel.reason and cancel.n10 == 2


def test_sign_flip_exact_flips_images_and_matches_scipy() -> None:
    rng = np.random.default_rng(3)
    a = [rng.normal(0.3, 1, 7), rng.normal(0.3, 1, 7)]
    b = [rng.normal(0, 1, 7), rng.normal(0, 1, 7)]
    res = sign_flip_test(a, b)
    assert (res.n, res.n_images, res.n_resamples) == (14, 7, None)
    assert res.p_value == pytest.approx(_scipy_cluster_p(a, b, np.inf))
    assert res.statistic == pytest.approx(np.mean([(x - y).mean() for x, y in zip(
        a, b, strict=True)]))
    # 7 images give 2**7 patterns: p is a multiple of 1/128, not of 1/2**14
    assert (res.p_value * 128) == pytest.approx(round(res.p_value * 128))


def test_sign_flip_on_three_seeds_yields_real_p_values_like_scipy() -> None:
    rng = np.random.default_rng(4)
    base = [rng.normal(0.8, 0.1, 64) for _ in range(3)]
    a = [x - 0.05 + rng.normal(0, 0.05, 64) for x in base]
    res = sign_flip_test(a, base, n_resamples=9999)
    assert res.n_resamples == 9999 and res.p_value < 0.05
    assert abs(res.p_value - _scipy_cluster_p(a, base, 9999)) < 0.01
    null = [x + rng.normal(0, 0.05, 64) for x in base]
    assert abs(sign_flip_test(null, base).p_value - _scipy_cluster_p(null, base, 9999)) < 0.03
    a[0][0] = np.nan
    assert sign_flip_test(a, base).n == 191 and sign_flip_test(a, base).n_images == 64


def _balanced(sd_image: float, sd_seed: float, n: int = 400, seeds: int = 3, mean: float = 0.0,
              seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return mean + rng.normal(0, sd_image, (n, 1)) + rng.normal(0, sd_seed, (n, seeds))


def test_power_line_uses_the_covariance_across_seeds() -> None:
    z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)
    d = _balanced(0.1, 0.1, mean=0.02)
    line = image_power(d, float(d.mean()))
    assert line.mde == pytest.approx(z * d.mean(axis=1).std(ddof=1) / math.sqrt(400))
    independent = z * math.sqrt(sum(d[:, j].var(ddof=1) / 400 for j in range(3))) / 3
    # with image effects the old formula (pairs independent) is too optimistic: deff ~ 2
    assert line.mde > 1.3 * independent
    assert line.design_effect == pytest.approx((line.mde / independent) ** 2)
    assert 1.6 < line.design_effect < 2.4
    # the one-way random-effects estimate of the between-image variance (0.1**2)
    s2_seed = float(d.var(axis=1, ddof=1).mean())
    s2_image = float(d.mean(axis=1).var(ddof=1)) - s2_seed / 3
    assert line.mde_limit == pytest.approx(z * math.sqrt(s2_image / 400))
    assert 0.007 < s2_image < 0.013
    # seeds needed: (s2_image + s2_seed / m) / n <= (observed / z)**2
    m = line.seeds_needed
    assert m is not None and m > 3
    for k, ok in ((m, True), (m - 1, False)):
        assert (s2_image + s2_seed / k) / 400 <= (d.mean() / z) ** 2 or not ok
        assert (s2_image + s2_seed / k) / 400 > (d.mean() / z) ** 2 or ok


def test_no_number_of_seeds_beats_the_between_image_variance() -> None:
    d = _balanced(0.3, 0.05, n=100, mean=0.02, seed=1)
    line = image_power(d, float(d.mean()))
    assert line.seeds_needed is None and "no number of seeds" in line.seeds_reason
    assert "more test images" in line.seeds_reason
    assert line.mde_limit > abs(d.mean()) and line.mde_limit < line.mde
    assert image_power(d[:, :1], 0.02).seeds_reason.startswith("one seed")
    res = sign_flip_test(list(d.T), list(np.zeros_like(d).T))
    assert res.seeds_needed is None and res.mde == pytest.approx(line.mde)
    assert res.mde_limit == pytest.approx(line.mde_limit)


def test_seed_level_seeds_needed_and_mde() -> None:
    means = [0.02, 0.05, 0.01]
    n, why = seeds_needed(means)
    n_t = TTestPower().solve_power(effect_size=np.mean(means) / np.std(means, ddof=1),
                                   alpha=0.05, power=0.8)
    assert why is None and n == max(6, math.ceil(n_t / (3 / math.pi)))
    assert seeds_needed([0.1, 0.1, 0.1]) == (None, "no seed-to-seed spread")
    assert seeds_needed([0.1])[0] is None
    assert seeds_needed([0.5, 0.52, 0.49])[0] == 6
    assert seeds_needed([-0.1068, -0.1105, -0.1185]) == (6, None)  # d = 18.6: scipy's nct NaN
    for effect in (0.05, 0.3, 1.0, 2.5):
        assert t_test_n(effect) == pytest.approx(
            TTestPower().solve_power(effect_size=effect, alpha=0.05, power=0.8), rel=1e-4)
    assert t_test_n(1e-6) is None
    d = np.array([0.01, 0.03, -0.01, 0.02, 0.04, 0.0, 0.02])
    effect = TTestPower().solve_power(nobs=7 * 3 / math.pi, alpha=0.05, power=0.8)
    assert paired_test(d, np.zeros(7)).mde == pytest.approx(effect * d.std(ddof=1), rel=1e-6)
    assert paired_test(d, np.zeros(7), "ttest").mde == pytest.approx(
        TTestPower().solve_power(nobs=7, alpha=0.05, power=0.8) * d.std(ddof=1), rel=1e-6)


def test_family_mde_is_at_alpha_over_m_and_larger_than_at_alpha():
    """In a Holm family of m > 1 tests the printed detectable difference is at α/m
    (Bonferroni), larger than at 0.05; one test keeps 0.05."""
    from bench import stats as B
    from bench.report.significance import _seed_family
    rng = np.random.default_rng(3)
    values = {"fp32": list(rng.normal(0.8, 0.01, 8))}
    for name in ("a", "b", "c"):
        values[name] = list(np.asarray(values["fp32"]) + rng.normal(-0.01, 0.01, 8))
    pairs = [(n, "fp32") for n in ("a", "b", "c")]
    fam = _seed_family("accuracy: each configuration vs FP32", "accuracy", values, pairs)
    for r, (a, b) in zip(fam.results, pairs, strict=True):
        single = B.paired_test(values[a], values[b], r.test)
        assert r.mde_alpha == pytest.approx(0.05 / 3)
        assert r.mde > single.mde and single.mde_alpha == 0.05
    listed = B.compare_family(values, "fp32")
    assert all(r.mde_alpha == pytest.approx(0.05 / 3) for r in listed)
    one = B.compare_family({k: values[k] for k in ("fp32", "a")}, "fp32")
    assert one[0].mde_alpha == 0.05
    right = rng.random((3, 40)) < 0.8
    other = rng.random((3, 40)) < 0.7
    single = B.clustered_mcnemar(right, other)
    adjusted = B.image_mde_at(single, right, other, None, B.family_alpha(4))
    assert adjusted.mde > single.mde and adjusted.mde_alpha == pytest.approx(0.0125)
