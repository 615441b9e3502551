"""Statistics over seeds for the report: paired tests, Holm, McNemar, Friedman, Nemenyi CD.

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
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

if TYPE_CHECKING:
    from matplotlib.axes import Axes

MIN_N_WILCOXON = 6
MIN_N_TTEST = 5
MIN_N_BOOTSTRAP = 10
MIN_BLOCKS = 5

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
