"""Corruption error (Hendrycks & Dietterich 2019, ICLR, section 3) against a reference model,
with bootstrap intervals over the test images and the per-corruption paired test.

For model f, corruption c and severity s with top-1 error E^f_{s,c} (clean error E^f_clean):
CE^f_c = sum_s E^f_{s,c} / sum_s E^ref_{s,c} and relative CE^f_c = sum_s (E^f_{s,c} -
E^f_clean) / sum_s (E^ref_{s,c} - E^ref_clean); mCE and relative mCE are their means over the
corruptions, in percent. The reference is the FP32 parent of the same backbone and seed (the
paper normalises by AlexNet), so the parent itself scores 100. A corruption whose reference
denominator is 0 (or, for the relative CE, not above 0) has no CE and is left out of the mean.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bench.stats import clustered_mcnemar, holm


def _ce(err: np.ndarray, ref: np.ndarray, clean: np.ndarray | float = 0.0,
        ref_clean: np.ndarray | float = 0.0, strict: bool = False) -> np.ndarray:
    """CE per corruption (axis 0) from errors (C, S, ...) summed over severities (axis 1); NaN
    where the reference's denominator is 0 (<= 0 when `strict`)."""
    num = (err - clean).sum(axis=1)
    den = (ref - ref_clean).sum(axis=1)
    bad = den <= 0 if strict else den == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(bad, np.nan, 100.0 * num / np.where(bad, 1.0, den))


def _mean(ce: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(ce)
        return np.where(ok.any(axis=0), np.nansum(np.where(ok, ce, 0), axis=0)
                        / np.maximum(ok.sum(axis=0), 1), np.nan)


def _finite(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


def corruption_errors(correct: np.ndarray, clean: np.ndarray, ref_correct: np.ndarray,
                      ref_clean: np.ndarray, corruptions: list[str], bootstrap: int = 0,
                      seed: int = 0, confidence: float = 0.95) -> dict[str, Any]:
    """CE, relative CE, mCE and relative mCE of a model against the reference from per-image
    correctness: ``correct`` / ``ref_correct`` (C, S, n) bool, ``clean`` / ``ref_clean`` (n,)
    on the same images. ``bootstrap`` > 0: percentile intervals of mCE and relative mCE from
    resampling the images (the same draw for both models)."""
    n = correct.shape[-1]

    def errors(weights: np.ndarray) -> tuple[np.ndarray, ...]:
        # weights (B, n): how often each image is drawn; errors (C, S, B) and (B,)
        total = weights.sum(axis=1)      # whole counts: an error of 0 is exactly 0
        return tuple((~m).astype(float) @ weights.T / total
                     for m in (correct, clean, ref_correct, ref_clean))

    e, ec, r, rc = errors(np.ones((1, n)))
    ce, rel = _ce(e, r)[:, 0], _ce(e, r, ec, rc, strict=True)[:, 0]
    out: dict[str, Any] = {
        "ce": {c: _finite(v) for c, v in zip(corruptions, ce, strict=True)},
        "relative_ce": {c: _finite(v) for c, v in zip(corruptions, rel, strict=True)},
        "mce": _finite(_mean(ce[:, None])[0]),
        "relative_mce": _finite(_mean(rel[:, None])[0]),
    }
    if bootstrap > 0 and n > 0:
        rng = np.random.default_rng(seed)
        weights = rng.multinomial(n, np.full(n, 1.0 / n), size=bootstrap).astype(float)
        e, ec, r, rc = errors(weights)
        tail = 100 * (1 - confidence) / 2
        for key, values in (("mce", _mean(_ce(e, r))),
                            ("relative_mce", _mean(_ce(e, r, ec, rc, strict=True)))):
            ok = values[np.isfinite(values)]
            out[f"{key}_ci"] = ([float(np.percentile(ok, q)) for q in (tail, 100 - tail)]
                                if len(ok) else None)
    return out


def corruption_tests(correct: np.ndarray, ref_correct: np.ndarray,
                     corruptions: list[str]) -> dict[str, dict[str, Any]]:
    """Per corruption, the model against the reference on the same images with the image as the
    unit: the clustered McNemar test (bench.stats.clustered_mcnemar) over the severities
    (an image's outcomes at the severities are correlated, as its outcomes over seeds are),
    Holm-adjusted over the corruptions (one family: this cell vs FP32 under corruption)."""
    results = [clustered_mcnemar(correct[i], ref_correct[i], power=False)
               for i in range(len(corruptions))]
    adjusted = holm([r.p_value for r in results])
    return {c: {"test": r.test, "p_value": r.p_value, "p_holm": p, "diff_mean": r.diff_mean,
                "n01": r.n01, "n10": r.n10, "reason": r.reason}
            for c, r, p in zip(corruptions, results, adjusted, strict=True)}
