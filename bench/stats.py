"""Statistics for the report: paired tests over seeds, Holm, McNemar, Friedman, Nemenyi CD, and
per-image paired tests with the test image as the unit (the clustered McNemar test on
correctness, an image-level sign-flip permutation test on per-image differences) with a power
line.

The two kinds of test answer different questions. A seed-level test (Wilcoxon over seeds)
generalises over training runs: would the difference hold for a new training seed? A per-image
test generalises over test images given these trained models: every cell of a data set is
evaluated on the same test images, so an image's results under different seeds are correlated
(an image that is hard for one seed's model is hard for the next); the image, not the (seed,
image) pair, is the independent unit, and the seeds only make each image's difference more
precise. It says nothing about re-training beyond the seeds. The split is fixed; seeds vary
training only.

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
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from scipy import stats
from scipy.special import gammaln
from statsmodels.stats.contingency_tables import mcnemar
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
"""Up to this many images with a nonzero difference the sign-flip test enumerates all 2**n
sign patterns of the images (exact)."""
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
    mde: float | None = None
    """Smallest |mean difference| the test detects with ``POWER`` at ``mde_alpha`` at the
    observed seed-to-seed SD (see `seed_level_mde`); None where no test was run."""
    mde_alpha: float = ALPHA
    """The level ``mde`` is computed at: ``ALPHA``, or ``ALPHA / m`` in a Holm family of m
    tests (see `family_alpha`)."""


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
        base = replace(base, mde=seed_level_mde(d, WILCOXON_ARE))
    else:
        if n < MIN_N_TTEST:
            return replace(base, reason=f"n={n} seeds: t-test needs >= {MIN_N_TTEST}: no test")
        sd = float(d.std(ddof=1))
        if sd == 0:
            return replace(base, reason="differences have zero variance: no t-test")
        res = stats.ttest_1samp(d, 0.0)
        effect = float(d.mean()) / sd
        base = replace(base, mde=seed_level_mde(d))
    return replace(
        base, statistic=float(res.statistic), p_value=float(res.pvalue), effect_size=effect
    )


def seed_level_mde(d: np.ndarray, efficiency: float = 1.0, alpha: float = ALPHA,
                   power: float = POWER) -> float | None:
    """Smallest |mean| of the differences ``d`` (one per seed) that the two-sided paired t-test
    detects with ``power`` at ``alpha`` on ``efficiency`` x n seeds at their observed SD (the
    Wilcoxon signed-rank test: ``efficiency = WILCOXON_ARE``), by bisection on the noncentral
    t's power; None for fewer than 2 seeds or no spread."""
    n = d.size * efficiency
    sd = float(d.std(ddof=1)) if d.size > 1 else 0.0
    if n <= 1 or sd == 0:
        return None
    lo, hi = 0.0, 1.0
    while _t_power(hi, n, alpha) < power:
        lo, hi = hi, 2 * hi
    while hi - lo > 1e-9 * hi:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if _t_power(mid, n, alpha) >= power else (mid, hi)
    return hi * sd


def family_alpha(m: int, alpha: float = ALPHA) -> float:
    """The level a power line beside a Holm-adjusted p of a family of ``m`` tests is computed
    at: ``alpha / m`` (Bonferroni), the level of Holm's first step and the conservative bound
    on every later one (Holm 1979, Scand J Statist 6:65); ``alpha`` for one test."""
    return alpha / m if m > 1 else alpha


def paired_mde_at(result: PairedResult, a: Sequence[float], b: Sequence[float],
                  alpha: float) -> PairedResult:
    """``result`` of `paired_test` on ``a``, ``b`` with its ``mde`` at level ``alpha``."""
    if result.mde is None or alpha == result.mde_alpha:
        return result
    efficiency = WILCOXON_ARE if result.test == "wilcoxon" else 1.0
    return replace(result, mde=seed_level_mde(_finite_pairs(a, b), efficiency, alpha),
                   mde_alpha=alpha)


def image_mde_at(result: ImageLevelResult, a: Sequence[Sequence[float]],
                 b: Sequence[Sequence[float]], images: Images, alpha: float
                 ) -> ImageLevelResult:
    """``result`` of `clustered_mcnemar` / `sign_flip_test` on ``a``, ``b`` with its power
    line (``mde``, ``mde_limit``, ``seeds_needed``) at level ``alpha``."""
    if result.mde is None or alpha == result.mde_alpha:
        return result
    line = image_power(image_matrix(a, b, images), result.diff_mean, alpha)
    return replace(result, mde=line.mde, mde_limit=line.mde_limit,
                   seeds_needed=line.seeds_needed, seeds_reason=line.seeds_reason,
                   mde_alpha=alpha)


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
    level = family_alpha(sum(r.p_value is not None for r in results))
    return [
        replace(paired_mde_at(r, values_by_method[x], values_by_method[y], level),
                name_a=x, name_b=y, p_adjusted=p)
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
    """Per-image paired comparison of ``a - b`` with the test image as the unit: every seed
    evaluates the same test images, so the seeds' differences on one image are correlated and
    an image, not a (seed, image) pair, is one independent observation.

    ``test``: "clustered_mcnemar" (per-image correctness, :func:`clustered_mcnemar`) or
    "sign_flip" (per-image values, :func:`sign_flip_test`). ``n``: (seed, image) pairs;
    ``n_images``: the images (the units). ``diff_mean``: mean over seeds of the per-seed mean
    difference (accuracy for "clustered_mcnemar"). ``effect_size``: n10 / n01 over all pairs
    (clustered McNemar), or mean / SD over images of the per-image mean difference (d_z with
    images as units, sign_flip). ``n01``/``n10``: pairs with A wrong and B right / A right and
    B wrong over all seeds; ``p_exact`` (clustered McNemar): the exact image-level sign-flip
    test of the same statistic. The power line (:func:`image_power`): ``mde``, ``mde_limit``,
    ``design_effect``, ``seeds_needed`` (seeds this per-image test would need for the observed
    difference; None with ``seeds_reason`` when it cannot be said or no number of seeds
    reaches it) and ``seed_level_seeds_needed`` (seeds a seed-level Wilcoxon would need for
    the observed difference at the observed seed-to-seed spread, :func:`seeds_needed`).
    """

    test: Literal["clustered_mcnemar", "sign_flip"]
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
    n_images: int | None = None
    mde_limit: float | None = None
    design_effect: float | None = None
    seed_level_seeds_needed: int | None = None
    seed_level_seeds_reason: str | None = None
    mde_alpha: float = ALPHA
    """The level of the power line (``mde``, ``mde_limit``, ``seeds_needed``): ``ALPHA``, or
    ``ALPHA / m`` in a Holm family of m tests (see `family_alpha`)."""


Images = Sequence[Sequence[object]] | None
"""Per seed, the image id of each value; None: value i of every seed is image i."""


def image_matrix(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]],
                 images: Images = None) -> np.ndarray:
    """The differences ``a - b`` as an (images, seeds) array, NaN where an image has no finite
    pair in a seed; seeds without any finite pair are left out, images without any too."""
    if len(a) != len(b):
        raise ValueError(f"need the same seeds on both sides, got {len(a)} and {len(b)}")
    if images is not None and len(images) != len(a):
        raise ValueError(f"need image ids for each of the {len(a)} seeds, got {len(images)}")
    x = [np.asarray(v, dtype=float) for v in a]
    y = [np.asarray(v, dtype=float) for v in b]
    for s, (u, v) in enumerate(zip(x, y, strict=True)):
        if u.shape != v.shape or u.ndim != 1:
            raise ValueError(f"paired samples need equal 1-D shapes, got {u.shape} and {v.shape}")
        if images is not None and np.shape(images[s]) != u.shape:
            raise ValueError(f"seed {s}: {np.size(images[s])} image ids for {u.size} values")
    if not x:
        return np.empty((0, 0))
    if images is None:
        if len({u.size for u in x}) > 1:
            raise ValueError(f"seeds have different numbers of images {sorted({u.size for u in x})}"
                             ": pass images= to say which image each value belongs to")
        out = np.stack(x, axis=1) - np.stack(y, axis=1)
    else:
        ids = [np.asarray(i) for i in images]
        if any(np.unique(i).size != i.size for i in ids):
            raise ValueError("an image id occurs twice in one seed")
        every = np.unique(np.concatenate(ids))
        out = np.full((every.size, len(x)), np.nan)
        for j, (i, u, v) in enumerate(zip(ids, x, y, strict=True)):
            out[np.searchsorted(every, i), j] = u - v
    out[~np.isfinite(out)] = np.nan
    finite = np.isfinite(out)
    return out[finite.any(axis=1)][:, finite.any(axis=0)]


def _contributions(diffs: np.ndarray) -> np.ndarray:
    """Each image's share of the mean over seeds of per-seed mean differences (seeds weighted
    equally): sum over its seeds of d / (seeds x that seed's pairs). They sum to the statistic."""
    finite = np.isfinite(diffs)
    weights = finite / (diffs.shape[1] * finite.sum(axis=0))
    return np.where(finite, diffs * weights, 0.0).sum(axis=1)


@dataclass(frozen=True)
class ImagePower:
    """The power line of a per-image test with the image as the unit (see `image_power`)."""

    mde: float | None
    mde_limit: float | None
    design_effect: float | None
    seeds_needed: int | None
    seeds_reason: str | None


def image_power(diffs: np.ndarray, observed: float | None = None, alpha: float = ALPHA,
                power: float = POWER) -> ImagePower:
    """Power line of a per-image test of the mean over seeds of per-seed mean differences,
    with the image as the unit; ``diffs``: (images, seeds) from `image_matrix`.

    ``mde``: (z_{1-alpha/2} + z_power) x the standard error of the statistic over images (the
    variance of each image's contribution across images: it includes the covariance of an
    image's differences across seeds; normal approximation, two-sided). ``design_effect``:
    that variance over the one that treats every (seed, image) pair as independent (what the
    pooled tests assumed). Projection to other numbers of seeds m by the one-way
    random-effects decomposition with images as groups (the design effect of Donner & Klar
    2000, Design and Analysis of Cluster Randomization Trials): the variance of an image's
    mean over m seeds is ``s2_image + s2_seed / m``, where ``s2_seed`` is the pooled
    within-image variance over seeds and ``s2_image`` (the mean covariance across seeds) the
    variance of the per-image means less ``s2_seed`` x mean(1 / seeds of an image). More
    seeds shrink only ``s2_seed / m``: ``mde_limit`` is the detectable difference with
    infinitely many seeds, and when it exceeds the observed difference no number of seeds
    reaches it (``seeds_needed`` None and the reason: more test images are needed).
    """
    z = float(stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power))
    n = diffs.shape[0]
    if n < 2:
        return ImagePower(None, None, None, None, f"{n} images: no spread over images")
    c = _contributions(diffs)
    var = n / (n - 1) * float(np.sum((c - c.mean()) ** 2))
    finite = np.isfinite(diffs)
    per_seed = [diffs[finite[:, j], j] for j in range(diffs.shape[1])]
    independent = sum(float(d.var(ddof=1)) / d.size for d in per_seed if d.size > 1
                      ) / diffs.shape[1] ** 2
    deff = var / independent if independent > 0 else None
    mde = z * math.sqrt(var)
    k = finite.sum(axis=1)
    many = k >= 2
    if not many.any():
        return ImagePower(mde, None, deff, None,
                          "one seed per image: the spread over seeds is unknown")
    means = np.nanmean(diffs, axis=1)
    s2_seed = float(np.sum(np.nanvar(diffs[many], axis=1, ddof=1) * (k[many] - 1))
                    / np.sum(k[many] - 1))
    s2_image = max(0.0, float(np.var(means, ddof=1)) - s2_seed * float(np.mean(1.0 / k)))
    limit = z * math.sqrt(s2_image / n)
    if observed is None or observed == 0 or not math.isfinite(observed):
        return ImagePower(mde, limit, deff, None, "the observed difference is 0"
                          if observed == 0 else "no observed difference")
    room = n * (observed / z) ** 2 - s2_image
    if room <= 0:
        return ImagePower(mde, limit, deff, None,
                          f"no number of seeds: with infinitely many the detectable difference "
                          f"is {limit:.3g} (the between-image variance alone) > |observed| "
                          f"{abs(observed):.3g}; more test images are needed")
    return ImagePower(mde, limit, deff, max(1, math.ceil(s2_seed / room)), None)


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




def _result(test: Literal["clustered_mcnemar", "sign_flip"], n: int, diffs: np.ndarray,
            observed: float | None, power: bool, **fields: Any) -> ImageLevelResult:
    """An `ImageLevelResult` with its power line (``power=False``: none, with the reason)."""
    if not power:
        why = "power line not computed"
        line = ImagePower(None, None, None, None, why)
        needed: int | None = None
    else:
        line = image_power(diffs, observed)
        needed, why = seeds_needed([float(np.nanmean(diffs[:, j]))
                                    for j in range(diffs.shape[1])])
    return ImageLevelResult(test, n, diffs.shape[1], fields.pop("statistic", None), None,
                            fields.pop("diff_mean", None), fields.pop("effect_size", None),
                            line.mde, line.seeds_needed, fields.pop("reason", None),
                            line.seeds_reason, n_images=diffs.shape[0], mde_limit=line.mde_limit,
                            design_effect=line.design_effect, seed_level_seeds_needed=needed,
                            seed_level_seeds_reason=why, **fields)


def _integer_flip_p(d: np.ndarray) -> float:
    """Exact two-sided p of ``sum(d)`` for integer per-image ``d`` under independent sign flips
    of each image: P(|sum e_i d_i| >= |sum d_i|), by convolving, per magnitude k with m images,
    the distribution of k (2 Binomial(m, 1/2) - m)."""
    mags = np.abs(d[d != 0]).astype(np.int64)
    dist = np.ones(1)
    for k, m in zip(*np.unique(mags, return_counts=True), strict=True):
        step = np.zeros(2 * k * m + 1)
        j = np.arange(m + 1)
        step[:: 2 * k] = np.exp(gammaln(m + 1) - gammaln(j + 1) - gammaln(m - j + 1)
                                - m * math.log(2))
        dist = np.convolve(dist, step)
    total = int(mags.sum())
    values = np.abs(np.arange(-total, total + 1))
    return float(min(1.0, dist[values >= abs(int(d.sum()))].sum()))


def _flip_p(c: np.ndarray, observed: float, n_resamples: int, seed: int
            ) -> tuple[float, int | None]:
    """Two-sided sign-flip p of ``observed == sum(c)`` flipping each image's ``c`` as a whole:
    exact over all 2**k patterns up to MAX_EXACT_FLIPS nonzero images, else ``n_resamples``
    seeded patterns with p = (1 + hits) / (1 + n_resamples); hits where |T*| >= |T| (scipy's
    tolerance of 100 ulp). Returns (p, resamples or None when exact)."""
    c = c[c != 0]
    tol = 100 * np.finfo(float).eps * abs(observed)
    if c.size <= MAX_EXACT_FLIPS:
        signs = 1 - 2 * ((np.arange(2 ** c.size)[:, None] >> np.arange(c.size)) & 1)
        return float(np.mean(np.abs(signs @ c) >= abs(observed) - tol)), None
    rng = np.random.default_rng(seed)
    hits, done = 0, 0
    while done < n_resamples:
        size = min(2048, n_resamples - done)
        signs = rng.integers(0, 2, size=(size, c.size), dtype=np.int8) * 2 - 1
        hits += int(np.sum(np.abs(signs @ c) >= abs(observed) - tol))
        done += size
    return (1 + hits) / (1 + n_resamples), n_resamples


def clustered_mcnemar(correct_a: Sequence[Sequence[bool]], correct_b: Sequence[Sequence[bool]],
                      *, images: Images = None, power: bool = True) -> ImageLevelResult:
    """Clustered McNemar test (Durkalski, Palesch, Lipsitz & Rust 2003, Stat Med 22:2417) that
    two models are equally accurate on the same test images over seeds, with the image as the
    cluster (``correct_a[s][i]``: model A of seed s right on image i; ``images`` as in
    `image_matrix`).

    Per image i, ``b_i`` / ``c_i``: seeds where A is right and B wrong / the reverse. The
    statistic ``X2 = (sum_i (b_i - c_i))**2 / sum_i (b_i - c_i)**2`` is chi-square(1) under the
    null for many images, whatever the correlation of an image's outcomes across seeds
    (Durkalski's statistic; Obuchowski 1998, Stat Med 17:1495, with the variance under the
    null). With one seed it is McNemar's (n10 - n01)**2 / (n10 + n01). The pooled
    Cochran-Mantel-Haenszel / McNemar statistic over all (seed, image) pairs, which this
    replaces, divides by n10 + n01 = sum_i (b_i + c_i) instead, too small when an image's
    discordance repeats across seeds. ``p_exact``: the exact permutation test of the same
    sum, flipping each image's b_i - c_i as a whole (the binomial test of McNemar with one
    seed). ``power=False`` skips the power line, for many small tests.
    """
    diffs = image_matrix(correct_a, correct_b, images)
    n = int(np.isfinite(diffs).sum())
    observed = float(np.nanmean(diffs, axis=0).mean()) if n else None
    base = _result("clustered_mcnemar", n, diffs, observed, power and n > 0,
                   diff_mean=observed)
    if not n:
        return replace(base, reason="no paired images: no test")
    n10, n01 = int(np.sum(diffs > 0)), int(np.sum(diffs < 0))
    base = replace(base, n01=n01, n10=n10)
    if n10 + n01 == 0:
        return replace(base, reason="the models are right and wrong on the same images: no test")
    d = np.rint(np.nansum(diffs, axis=1))
    if not np.any(d):
        return replace(base, reason="on every image the seeds where A alone is right and where "
                                    "B alone is right cancel: no test")
    statistic = float(d.sum() ** 2 / np.sum(d ** 2))
    return replace(base, statistic=statistic, p_value=float(stats.chi2.sf(statistic, 1)),
                   effect_size=float(n10 / n01) if n01 else math.inf,
                   p_exact=_integer_flip_p(d))


def sign_flip_test(values_a: Sequence[Sequence[float]], values_b: Sequence[Sequence[float]], *,
                   images: Images = None, n_resamples: int = 9999, seed: int = 0,
                   power: bool = True) -> ImageLevelResult:
    """Sign-flip permutation test of per-image values of two cells over seeds with the image
    as the unit (``values_a[s][i]``: cell A of seed s on image i; ``images`` as in
    `image_matrix`; pairs with a non-finite value dropped).

    Statistic: the mean over seeds of the per-seed mean difference A - B (seeds weighted
    equally), a sum of per-image contributions. Under the null that A and B are exchangeable
    on each image jointly over seeds, all seeds of an image flip sign together: the unit of
    randomisation is the unit of independence, the image (as for cluster-randomised designs,
    Donner & Klar 2000, Design and Analysis of Cluster Randomization Trials). Flipping each
    (seed, image) pair on its own, as this test did before, treats an image's correlated
    differences as independent and rejects too often under image-level effects. Exact up to
    MAX_EXACT_FLIPS images with a nonzero contribution, else ``n_resamples`` seeded patterns
    (see `_flip_p`). ``power=False`` skips the power line.
    """
    diffs = image_matrix(values_a, values_b, images)
    n = int(np.isfinite(diffs).sum())
    if not n:
        return _result("sign_flip", 0, diffs, None, False, reason="no paired images: no test")
    c = _contributions(diffs)
    observed = float(c.sum())
    means = np.nanmean(diffs, axis=1)
    sd = float(means.std(ddof=1)) if means.size > 1 else 0.0
    base = _result("sign_flip", n, diffs, observed, power, statistic=observed,
                   diff_mean=observed, effect_size=float(means.mean()) / sd if sd > 0 else None)
    if not np.any(c):
        return replace(base, reason="every difference is 0: no test")
    p, resamples = _flip_p(c, observed, n_resamples, seed)
    return replace(base, p_value=p, n_resamples=resamples)
