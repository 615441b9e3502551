"""Statistics for the report: paired tests over seeds, Holm, McNemar, Friedman, Nemenyi CD, and
per-image paired tests stratified by seed (Cochran-Mantel-Haenszel on correctness, sign-flip
permutation on per-image differences) with a power line.

The two kinds of test answer different questions. A seed-level test (Wilcoxon over seeds)
generalises over training runs: would the difference hold for a new training seed? A per-image
test stratified by seed generalises over test images given these trained models: every cell of
a data set is evaluated on the same test images, so with 3 seeds it has hundreds of paired
observations, but it says nothing about re-training. The split is fixed; seeds vary training
only.

Every result says in ``reason`` why no test was run; then ``p_value`` is None and the report
prints no p-value. Thresholds (pairs, blocks) are the module constants below:

- ``MIN_N_WILCOXON = 6`` nonzero differences: the smallest exact two-sided p is ``2 / 2**n``,
  0.0625 at n=5 and 0.031 at n=6, so below 6 no outcome can reach 0.05.
- ``MIN_N_TTEST = 5`` pairs: the t-test is exact only for normal differences; with fewer seeds
  that cannot be judged at all and one outlying seed decides the standard deviation.
- ``MIN_N_BOOTSTRAP = 10`` pairs: the bootstrap CI of a mean undercovers at small n (simulated
  normal differences, nominal 0.95: BCa covers about 0.82 at n=5, 0.85 at n=6, 0.89 at n=8,
  0.91 at n=10, 0.94 at n=20).
- ``MIN_BLOCKS = 5`` seeds for Friedman and the Nemenyi CD: enumerating the exact null
  distribution, the chi-square approximation rejects 6.9% at nominal 5% for k=3, N=4, and
  3.4-5.8% for N=5..12 (k=3..5).
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy import stats
from statsmodels.stats.contingency_tables import StratifiedTable, mcnemar
from statsmodels.stats.multitest import multipletests

if TYPE_CHECKING:
    from matplotlib.axes import Axes

MIN_N_WILCOXON = 6
MIN_N_TTEST = 5
MIN_N_BOOTSTRAP = 10
MIN_BLOCKS = 5
ALPHA = 0.05
POWER = 0.8
"""Significance level and power of the power line (smallest detectable difference, seeds)."""
MAX_EXACT_FLIPS = 16
"""Up to this many pairs the sign-flip test enumerates all 2**n sign patterns (exact)."""
WILCOXON_ARE = 3 / math.pi
"""Asymptotic relative efficiency of the Wilcoxon signed-rank test to the t-test for normal
differences: the seed-level Wilcoxon needs about n_t / 0.955 seeds."""

Test = Literal["wilcoxon", "ttest"]


@dataclass(frozen=True)
class PairedResult:
    """Paired comparison over seeds of ``a - b``; ``name_a``/``name_b``/``p_adjusted`` are
    filled by :func:`compare_family`."""

    n: int
    statistic: float | None
    p_value: float | None
    effect_size: float | None
    diff_mean: float | None
    ci_low: float | None
    ci_high: float | None
    test: Test
    reason: str | None
    ci_reason: str | None = None
    name_a: str | None = None
    name_b: str | None = None
    p_adjusted: float | None = None


@dataclass(frozen=True)
class McNemarResult:
    """Exact McNemar test; ``n01``: A wrong and B right, ``n10``: A right and B wrong."""

    n: int
    n01: int
    n10: int
    p_value: float | None
    reason: str | None


@dataclass(frozen=True)
class FriedmanResult:
    """Friedman chi-square test over ``n_blocks`` seeds (blocks) and ``k`` methods."""

    statistic: float | None
    p_value: float | None
    n_blocks: int
    k: int
    reason: str | None


@dataclass(frozen=True)
class CDResult:
    """Average ranks (1 = best, best first), Nemenyi critical difference and the maximal
    groups of two or more methods whose ranks differ by less than ``cd``."""

    avg_ranks: dict[str, float]
    cd: float | None
    cliques: tuple[tuple[str, ...], ...]
    n_blocks: int
    k: int
    alpha: float
    reason: str | None


def _finite_pairs(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    """Differences ``a - b`` of the pairs where both values are finite."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired samples need equal 1-D shapes, got {x.shape} and {y.shape}")
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep] - y[keep]


def _rank_biserial(d: np.ndarray) -> float:
    """Matched-pairs rank-biserial correlation (Kerby 2014), zero differences dropped."""
    d = d[d != 0]
    ranks = stats.rankdata(np.abs(d))
    return float((ranks[d > 0].sum() - ranks[d < 0].sum()) / ranks.sum())


def _bootstrap_ci(
    d: np.ndarray, confidence: float, n_resamples: int, seed: int
) -> tuple[float, float]:
    """BCa bootstrap CI of the mean difference; percentile if BCa degenerates."""
    if np.ptp(d) == 0:
        return float(d[0]), float(d[0])
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", stats.DegenerateDataWarning)
            ci = stats.bootstrap(
                (d,),
                np.mean,
                n_resamples=n_resamples,
                confidence_level=confidence,
                method=method,
                rng=np.random.default_rng(seed),
            ).confidence_interval
        if np.isfinite(ci.low) and np.isfinite(ci.high):
            break
    return float(ci.low), float(ci.high)


def paired_test(
    a: Sequence[float],
    b: Sequence[float],
    test: Test = "wilcoxon",
    *,
    confidence: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
) -> PairedResult:
    """Paired test of ``a`` vs ``b`` over seeds (index i of both is seed i).

    Pairs with a non-finite value are dropped. Wilcoxon signed-rank (scipy, exact or
    exhaustive permutation up to 13 pairs; zeros dropped) with the matched-pairs rank-biserial
    correlation, or paired t with Cohen's d_z. The CI is a seeded bootstrap of mean(a - b).
    """
    if test not in ("wilcoxon", "ttest"):
        raise ValueError(f"unknown test {test!r}")
    d = _finite_pairs(a, b)
    n = d.size
    diff_mean = float(d.mean()) if n else None
    ci_low = ci_high = None
    ci_reason = None
    if n >= MIN_N_BOOTSTRAP:
        ci_low, ci_high = _bootstrap_ci(d, confidence, n_resamples, seed)
    else:
        ci_reason = f"n={n} seeds: bootstrap CI needs >= {MIN_N_BOOTSTRAP}"
    base = PairedResult(n, None, None, None, diff_mean, ci_low, ci_high, test, None, ci_reason)

    if test == "wilcoxon":
        nonzero = int(np.count_nonzero(d))
        if nonzero < MIN_N_WILCOXON:
            why = f"n={n} seeds" if nonzero == n else f"{nonzero} of {n} differences nonzero"
            return replace(base, reason=f"{why}: Wilcoxon needs >= {MIN_N_WILCOXON}: no test")
        res = stats.wilcoxon(d)
        effect = _rank_biserial(d)
    else:
        if n < MIN_N_TTEST:
            return replace(base, reason=f"n={n} seeds: t-test needs >= {MIN_N_TTEST}: no test")
        sd = float(d.std(ddof=1))
        if sd == 0:
            return replace(base, reason="differences have zero variance: no t-test")
        res = stats.ttest_1samp(d, 0.0)
        effect = float(d.mean()) / sd
    return replace(
        base, statistic=float(res.statistic), p_value=float(res.pvalue), effect_size=effect
    )


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm-adjusted p-values; None entries (no test) stay None and do not count."""
    idx = [i for i, p in enumerate(p_values) if p is not None]
    out: list[float | None] = [None] * len(p_values)
    if idx:
        adjusted = multipletests([p_values[i] for i in idx], method="holm")[1]
        for i, p in zip(idx, adjusted, strict=True):
            out[i] = float(p)
    return out


def compare_family(
    values_by_method: Mapping[str, Sequence[float]],
    baseline: str | None = None,
    test: Test = "wilcoxon",
    *,
    confidence: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
) -> list[PairedResult]:
    """Each method vs ``baseline`` (``a`` = method, ``b`` = baseline), or all pairs in
    mapping order when ``baseline`` is None; Holm over the comparisons that were tested."""
    names = list(values_by_method)
    if baseline is None:
        pairs = list(itertools.combinations(names, 2))
    elif baseline not in values_by_method:
        raise ValueError(f"baseline {baseline!r} not among {names}")
    else:
        pairs = [(m, baseline) for m in names if m != baseline]
    results = [
        paired_test(
            values_by_method[x],
            values_by_method[y],
            test,
            confidence=confidence,
            n_resamples=n_resamples,
            seed=seed,
        )
        for x, y in pairs
    ]
    adjusted = holm([r.p_value for r in results])
    return [
        replace(r, name_a=x, name_b=y, p_adjusted=p)
        for r, (x, y), p in zip(results, pairs, adjusted, strict=True)
    ]


def mcnemar_exact(
    pred_a: Sequence[object], pred_b: Sequence[object], labels: Sequence[object]
) -> McNemarResult:
    """Exact McNemar test on per-sample correctness of two cells evaluated on the same split."""
    pa, pb, y = np.asarray(pred_a), np.asarray(pred_b), np.asarray(labels)
    if not (pa.shape == pb.shape == y.shape) or y.ndim != 1:
        raise ValueError(f"need equal 1-D shapes, got {pa.shape}, {pb.shape}, {y.shape}")
    if y.size == 0:
        return McNemarResult(0, 0, 0, None, "no samples: no test")
    ca, cb = pa == y, pb == y
    n01, n10 = int(np.sum(~ca & cb)), int(np.sum(ca & ~cb))
    table = [[int(np.sum(~ca & ~cb)), n01], [n10, int(np.sum(ca & cb))]]
    return McNemarResult(int(y.size), n01, n10, float(mcnemar(table, exact=True).pvalue), None)


def wilson_interval(correct: int, n: int, confidence: float = 0.95
                    ) -> tuple[float | None, float | None]:
    """Wilson score interval of a proportion ``correct / n`` (Wilson 1927, JASA 22:209; the
    interval Brown, Cai & DasGupta 2001 recommend for small n); (None, None) when n is 0."""
    if n <= 0:
        return None, None
    if not 0 <= correct <= n:
        raise ValueError(f"need 0 <= correct <= n, got {correct} of {n}")
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def _blocks(matrix: Mapping[str, Sequence[float]]) -> tuple[list[str], np.ndarray]:
    """Method names and an (n_blocks, k) array; blocks with a non-finite value are dropped."""
    names = list(matrix)
    if not names:
        raise ValueError("no methods")
    lengths = {len(v) for v in matrix.values()}
    if len(lengths) > 1:
        raise ValueError(f"methods have different numbers of seeds: {sorted(lengths)}")
    x = np.array([list(matrix[m]) for m in names], dtype=float).T.reshape(-1, len(names))
    return names, x[np.isfinite(x).all(axis=1)]


def _block_reason(n_blocks: int, k: int) -> str | None:
    if k < 3:
        return f"k={k} methods: Friedman needs >= 3: no test"
    if n_blocks < MIN_BLOCKS:
        return f"n={n_blocks} seeds: Friedman needs >= {MIN_BLOCKS}: no test"
    return None


def friedman(matrix: Mapping[str, Sequence[float]]) -> FriedmanResult:
    """Friedman test: ``matrix`` maps method -> values over seeds (the blocks)."""
    _, x = _blocks(matrix)
    n_blocks, k = x.shape
    reason = _block_reason(n_blocks, k)
    if reason is None and np.all(np.ptp(x, axis=1) == 0):
        reason = "all methods tied in every seed: no test"
    if reason is not None:
        return FriedmanResult(None, None, n_blocks, k, reason)
    res = stats.friedmanchisquare(*x.T)
    return FriedmanResult(float(res.statistic), float(res.pvalue), n_blocks, k, None)


def nemenyi_q(k: int, alpha: float = 0.05) -> float:
    """Demšar's q_alpha: studentized range quantile (infinite df) divided by sqrt(2)."""
    return float(stats.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2))


def _cliques(order: list[str], ranks: list[float], cd: float) -> tuple[tuple[str, ...], ...]:
    """Maximal runs (in rank order) of two or more methods spanning less than ``cd``."""
    out: list[tuple[str, ...]] = []
    last_end = -1
    for i in range(len(order)):
        j = i
        while j + 1 < len(order) and ranks[j + 1] - ranks[i] < cd:
            j += 1
        if j > i and j > last_end:
            out.append(tuple(order[i : j + 1]))
            last_end = j
    return tuple(out)


def critical_difference(
    matrix: Mapping[str, Sequence[float]], alpha: float = 0.05, higher_is_better: bool = True
) -> CDResult:
    """Average ranks per method and the Nemenyi critical difference (Demšar 2006).

    Ranks are within each seed, ties averaged. ``cd`` is None (``reason`` set) when the
    Friedman test could not be run; whether to read the CD only after a significant Friedman
    test is the caller's choice.
    """
    names, x = _blocks(matrix)
    n_blocks, k = x.shape
    ranks = stats.rankdata(-x if higher_is_better else x, axis=1)
    mean = ranks.mean(axis=0) if n_blocks else np.full(k, np.nan)
    order = sorted(range(k), key=lambda i: mean[i])
    avg = {names[i]: float(mean[i]) for i in order}
    reason = _block_reason(n_blocks, k)
    if reason is not None:
        return CDResult(avg, None, (), n_blocks, k, alpha, reason)
    cd = nemenyi_q(k, alpha) * math.sqrt(k * (k + 1) / (6 * n_blocks))
    cliques = _cliques(list(avg), list(avg.values()), cd)
    return CDResult(avg, cd, cliques, n_blocks, k, alpha, None)


def plot_cd(result: CDResult, ax: Axes) -> Axes:
    """Draw a critical-difference diagram: rank axis (1 = best, left), a CD bar and one
    thick bar per clique; the better half of the methods is labelled on the left."""
    names, ranks = list(result.avg_ranks), list(result.avg_ranks.values())
    k = max(result.k, 2)
    step, half = 0.35, (len(names) + 1) // 2
    ax.axis("off")
    ax.set_xlim(-0.8, k + 1.8)
    ax.set_ylim(-step * (half + 2), 1.0)
    ax.plot([1, k], [0, 0], color="black", lw=1)
    for r in range(1, k + 1):
        ax.plot([r, r], [0, 0.08], color="black", lw=1)
        ax.text(r, 0.12, str(r), ha="center", va="bottom", fontsize=9)
    if result.cd is not None:
        ax.plot([1, 1 + result.cd], [0.6, 0.6], color="black", lw=1.5)
        ax.text(1 + result.cd / 2, 0.65, "CD", ha="center", va="bottom", fontsize=9)
    else:
        ax.text((1 + k) / 2, 0.6, result.reason or "", ha="center", fontsize=8)
    for i, (name, r) in enumerate(zip(names, ranks, strict=True)):
        if not np.isfinite(r):
            continue
        left = i < half
        y = -step * ((i if left else len(names) - 1 - i) + 1)
        x_end = 0.5 if left else k + 0.5
        ax.plot([r, r, x_end], [0, y, y], color="black", lw=0.8)
        ax.text(
            x_end + (-0.05 if left else 0.05),
            y,
            f"{name} ({r:.2f})",
            ha="right" if left else "left",
            va="center",
            fontsize=9,
        )
    for j, clique in enumerate(result.cliques):
        lo, hi = result.avg_ranks[clique[0]], result.avg_ranks[clique[-1]]
        y = -0.12 - 0.1 * j
        ax.plot([lo - 0.03, hi + 0.03], [y, y], color="black", lw=3, solid_capstyle="butt")
    return ax


def mean_ci(
    values: Sequence[float], confidence: float = 0.95
) -> tuple[float, float | None, float | None]:
    """Mean and t-interval over seeds; non-finite values dropped, bounds None when n < 2."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        raise ValueError("mean_ci needs at least one finite value")
    mean = float(x.mean())
    if x.size < 2:
        return mean, None, None
    sem = float(stats.sem(x))
    if sem == 0:
        return mean, mean, mean
    low, high = stats.t.interval(confidence, x.size - 1, loc=mean, scale=sem)
    return mean, float(low), float(high)


@dataclass(frozen=True)
class ImageLevelResult:
    """Per-image paired comparison of ``a - b`` stratified by seed.

    ``test``: "cmh" (correctness, Cochran-Mantel-Haenszel) or "sign_flip" (per-image values,
    permutation). ``diff_mean``: mean over seeds of the per-seed mean difference (accuracy
    points for "cmh"); ``effect_size``: the Mantel-Haenszel common odds ratio of being right
    (A over B) for "cmh", mean / SD of the differences (d_z) for "sign_flip". ``n01``/``n10``
    (cmh): pairs with A wrong and B right / A right and B wrong, over all seeds; ``p_exact``
    (cmh): the exact conditional (binomial) test of the same hypothesis. ``mde``: smallest
    |difference| the test detects with ``POWER`` at ``ALPHA`` given the observed variance;
    ``seeds_needed``: seeds a seed-level Wilcoxon would need for the observed difference at the
    observed seed-to-seed spread (``seeds_reason`` when it cannot be said).
    """

    test: Literal["cmh", "sign_flip"]
    n: int
    n_seeds: int
    statistic: float | None
    p_value: float | None
    diff_mean: float | None
    effect_size: float | None
    mde: float | None
    seeds_needed: int | None
    reason: str | None
    seeds_reason: str | None = None
    n01: int | None = None
    n10: int | None = None
    p_exact: float | None = None
    n_resamples: int | None = None
    name_a: str | None = None
    name_b: str | None = None
    p_adjusted: float | None = None


def _strata(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> list[np.ndarray]:
    """Per seed, the differences a - b of the images where both values are finite."""
    if len(a) != len(b):
        raise ValueError(f"need the same seeds on both sides, got {len(a)} and {len(b)}")
    return [d for d in (_finite_pairs(x, y) for x, y in zip(a, b, strict=True)) if d.size]


def _seed_weights(strata: list[np.ndarray]) -> np.ndarray:
    """Each pair's weight in the mean over seeds of per-seed means: 1 / (seeds x its seed's n)."""
    return np.concatenate([np.full(d.size, 1.0 / (len(strata) * d.size)) for d in strata])


def _weighted_mean(strata: list[np.ndarray]) -> float:
    return float(np.mean([d.mean() for d in strata]))


def detectable_difference(strata: list[np.ndarray], alpha: float = ALPHA,
                          power: float = POWER) -> float | None:
    """(z_{1-alpha/2} + z_power) x the standard error of the mean over seeds of per-seed mean
    differences, from each seed's observed variance (normal approximation, two-sided)."""
    if any(d.size < 2 for d in strata) or not strata:
        return None
    se = math.sqrt(sum(d.var(ddof=1) / d.size for d in strata)) / len(strata)
    return float((stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)) * se)


def _t_power(effect: float, n: float, alpha: float) -> float:
    """Power of the two-sided one-sample t-test with n observations at standardised effect
    `effect` (noncentral t; where scipy's noncentral t returns NaN, far in the tail, the normal
    approximation, which is then exact to many digits)."""
    df, nc = n - 1, effect * math.sqrt(n)
    crit = stats.t.ppf(1 - alpha / 2, df)
    power = float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))
    return power if np.isfinite(power) else float(stats.norm.sf(crit - nc))


def t_test_n(effect: float, alpha: float = ALPHA, power: float = POWER,
             largest: float = 1e9) -> float | None:
    """Smallest (real) n >= 2 at which the two-sided paired t-test reaches `power` (what
    statsmodels' TTestPower.solve_power solves), by bisection; None beyond `largest`."""
    lo, hi = 2.0, 4.0
    if _t_power(effect, lo, alpha) >= power:
        return lo
    while _t_power(effect, hi, alpha) < power:
        lo, hi = hi, 2 * hi
        if hi > largest:
            return None
    while hi - lo > 1e-9 * hi:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if _t_power(effect, mid, alpha) >= power else (mid, hi)
    return hi


def seeds_needed(seed_means: Sequence[float], alpha: float = ALPHA, power: float = POWER
                 ) -> tuple[int | None, str | None]:
    """Seeds a seed-level Wilcoxon signed-rank test needs to detect the observed mean of
    ``seed_means`` (one difference per seed) at their observed SD: the paired t-test's n
    (`t_test_n`) over the Wilcoxon's efficiency, and never fewer than MIN_N_WILCOXON (below it
    no outcome reaches 0.05). (None, reason) when it cannot be said."""
    x = np.asarray(seed_means, dtype=float)
    x = x[np.isfinite(x)]
    if x.size < 2:
        return None, f"n={x.size} seeds: no seed-to-seed spread to extrapolate from"
    mean, sd = float(x.mean()), float(x.std(ddof=1))
    if sd <= 1e-12 * max(1.0, abs(mean)) or mean == 0:
        return None, ("the observed difference is 0" if mean == 0 else "no seed-to-seed spread")
    n_t = t_test_n(abs(mean) / sd, alpha, power)
    if n_t is None:
        return None, "the observed difference is too small for any number of seeds"
    return max(MIN_N_WILCOXON, math.ceil(n_t / WILCOXON_ARE)), None


def cmh_paired(correct_a: Sequence[Sequence[bool]], correct_b: Sequence[Sequence[bool]], *,
               power: bool = True) -> ImageLevelResult:
    """Cochran-Mantel-Haenszel test that two models are equally accurate on the same images,
    stratified by seed (``correct_a[s][i]``: model A of seed s right on image i).

    For paired data the strata are the (seed, image) pairs, each with the 2x2 table model (A,
    B) x outcome (right, wrong); with pairs as strata the CMH statistic is McNemar's
    (n10 - n01)^2 / (n10 + n01) over the discordant pairs of all seeds (concordant pairs have
    zero variance and are left out, which changes nothing), and the Mantel-Haenszel common
    odds ratio is n10 / n01. (A per-seed table of A's correctness against B's, McNemar's table,
    tests whether the two models err on the same images, not whether one errs more often; a
    per-seed table of model x outcome counts would treat the paired images as independent
    samples.) statsmodels ``StratifiedTable.test_null_odds`` without continuity correction,
    its p-value as chi2(1)'s survival function of the statistic (statsmodels' 1 - cdf is 0
    below ~1e-16); ``p_exact`` is the exact conditional test (binomial on the discordant pairs).
    ``power=False`` skips the power line (``mde``, ``seeds_needed``), for many small tests.
    """
    strata = [np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
              for a, b in zip(correct_a, correct_b, strict=True)]
    strata = [d for d in strata if d.size]
    n = int(sum(d.size for d in strata))
    seed_means = [float(d.mean()) for d in strata]
    needed, why = seeds_needed(seed_means) if power else (None, "power line not computed")
    base = ImageLevelResult("cmh", n, len(strata), None, None,
                            _weighted_mean(strata) if strata else None, None,
                            detectable_difference(strata) if power else None, needed, None, why)
    if not strata:
        return replace(base, reason="no paired images: no test")
    d = np.concatenate(strata)
    n10, n01 = int((d > 0).sum()), int((d < 0).sum())
    base = replace(base, n01=n01, n10=n10)
    if n10 + n01 == 0:
        return replace(base, reason="the models are right and wrong on the same images: no test")
    a_only, b_only = np.array([[1, 0], [0, 1]]), np.array([[0, 1], [1, 0]])
    tables = np.stack([a_only] * n10 + [b_only] * n01, axis=2)
    table = StratifiedTable(tables)
    res = table.test_null_odds(correction=False)
    odds = float(n10 / n01) if n01 else math.inf
    return replace(base, statistic=float(res.statistic),
                   p_value=float(stats.chi2.sf(res.statistic, 1)),
                   effect_size=odds, p_exact=float(stats.binomtest(n10, n10 + n01).pvalue))


def sign_flip_test(values_a: Sequence[Sequence[float]], values_b: Sequence[Sequence[float]], *,
                   n_resamples: int = 9999, seed: int = 0) -> ImageLevelResult:
    """Stratified sign-flip permutation test of per-image values of two cells per seed
    (``values_a[s][i]``: cell A of seed s on image i; pairs with a non-finite value dropped).

    Statistic: the mean over seeds of the per-seed mean difference A - B (seeds weighted
    equally). Under the null the two cells' values of an image are exchangeable, so each
    difference's sign is flipped independently (within its seed). Exact (all 2**n patterns) up
    to MAX_EXACT_FLIPS pairs, else ``n_resamples`` seeded random patterns with p = (1 + hits) /
    (1 + n_resamples); two-sided, hits where |T*| >= |T| (scipy's tolerance of 100 ulp).
    """
    strata = _strata(values_a, values_b)
    n = int(sum(d.size for d in strata))
    needed, why = seeds_needed([float(d.mean()) for d in strata])
    base = ImageLevelResult("sign_flip", n, len(strata), None, None,
                            _weighted_mean(strata) if strata else None, None,
                            detectable_difference(strata), needed, None, why)
    if n == 0:
        return replace(base, reason="no paired images: no test")
    d = np.concatenate(strata)
    w = _seed_weights(strata) * d
    observed = float(w.sum())
    sd = float(d.std(ddof=1)) if n > 1 else 0.0
    base = replace(base, statistic=observed, effect_size=observed / sd if sd > 0 else None)
    if not np.any(d):
        return replace(base, reason="every difference is 0: no test")
    tol = 100 * np.finfo(float).eps * abs(observed)
    if n <= MAX_EXACT_FLIPS:
        signs = 1 - 2 * ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1)
        null = signs @ w
        p = float(np.mean(np.abs(null) >= abs(observed) - tol))
        return replace(base, p_value=p)
    rng = np.random.default_rng(seed)
    hits, done = 0, 0
    while done < n_resamples:
        size = min(2048, n_resamples - done)
        signs = rng.integers(0, 2, size=(size, n), dtype=np.int8) * 2 - 1
        hits += int(np.sum(np.abs(signs @ w) >= abs(observed) - tol))
        done += size
    return replace(base, p_value=(1 + hits) / (1 + n_resamples), n_resamples=n_resamples)
