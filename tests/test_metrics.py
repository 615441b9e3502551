"""Probability metrics of a cell's predictions (bench.metrics) against independent
implementations: scikit-learn for the Brier score and the macro one-vs-rest AUROC, scipy's
Mann-Whitney U for the per-class AUROC, a hand-computed fixture for the 15-bin ECE."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import mannwhitneyu
from sklearn.metrics import brier_score_loss, roc_auc_score

from bench.metrics import (
    ECE_BINS,
    binary_auroc,
    brier_score,
    expected_calibration_error,
    macro_auroc,
    probability_metrics,
    softmax,
)


def _fixture(seed: int = 0, n: int = 200, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 2.0 * np.eye(k)[y] * rng.random((n, 1))
    logits[:10] = np.round(logits[:10])          # ties in the scores
    return y, logits


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_brier_matches_sklearn_unhalved(seed: int) -> None:
    y, logits = _fixture(seed)
    p = softmax(logits)
    ours = brier_score(y, p)
    assert ours == pytest.approx(brier_score_loss(y, p, labels=range(4), scale_by_half=False),
                                 abs=1e-12)
    assert 0.0 <= ours <= 2.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_macro_auroc_matches_sklearn_ovr(seed: int) -> None:
    y, logits = _fixture(seed)
    p = softmax(logits)
    assert macro_auroc(y, p) == pytest.approx(
        roc_auc_score(y, p, multi_class="ovr", average="macro"), abs=1e-12)


def test_binary_auroc_is_mann_whitney_u_over_pairs() -> None:
    y, logits = _fixture(3)
    for k in range(4):
        pos = y == k
        u = mannwhitneyu(logits[pos, k], logits[~pos, k]).statistic
        assert binary_auroc(pos, logits[:, k]) == pytest.approx(u / (pos.sum() * (~pos).sum()))
    assert binary_auroc(np.ones(5, bool), np.arange(5.0)) is None


def test_macro_auroc_leaves_out_a_class_without_test_images() -> None:
    y, logits = _fixture(4, k=4)
    keep = y != 3
    p = softmax(logits[keep])
    per_class = [roc_auc_score(y[keep] == c, p[:, c]) for c in range(3)]
    assert macro_auroc(y[keep], p) == pytest.approx(np.mean(per_class))


def test_ece_by_hand_in_15_equal_width_bins() -> None:
    # confidence 0.9 in bin (13/15, 14/15] twice, one right one wrong; 0.5 in (7/15, 8/15]
    # right; 1.0 in the last bin (14/15, 1] right.
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.5, 0.5], [1.0, 0.0]])
    y = np.array([0, 1, 0, 0])
    expected = (2 / 4) * abs(0.5 - 0.9) + (1 / 4) * abs(1.0 - 0.5) + (1 / 4) * 0.0
    assert ECE_BINS == 15
    assert expected_calibration_error(y, p) == pytest.approx(expected)
    # a perfectly calibrated bin: 3 of 4 right at confidence 0.75
    p2 = np.tile([0.75, 0.25], (4, 1))
    assert expected_calibration_error(np.array([0, 0, 0, 1]), p2) == pytest.approx(0.0)


def test_ece_bins_are_right_closed() -> None:
    """Confidence 0.6 = 9/15 exactly sits on an edge; right-closed it joins 0.55 in bin
    (8/15, 9/15], left-closed it would join 0.65 in [9/15, 10/15). By hand, 0.6 right, 0.55
    wrong, 0.65 right:
    right-closed: |1 - (0.6 + 0.55)| + |1 - 0.65| = 0.15 + 0.35, ECE = 0.5 / 3;
    left-closed:  |0 - 0.55| + |2 - (0.6 + 0.65)| = 0.55 + 0.75, ECE = 1.3 / 3."""
    assert 9 / 15 == 0.6
    p = np.array([[0.6, 0.4], [0.55, 0.45], [0.65, 0.35]])
    y = np.array([0, 1, 0])
    ece = expected_calibration_error(y, p)
    assert ece == pytest.approx(0.5 / 3)
    assert ece != pytest.approx(1.3 / 3)
    # with 1 bin ECE is |acc - mean conf|
    assert expected_calibration_error(y, p, n_bins=1) == pytest.approx(abs(2 / 3 - 0.6))


def test_probability_metrics_of_logits() -> None:
    y, logits = _fixture(5)
    out = probability_metrics(y, logits)
    assert set(out) == {"ece", "brier", "auroc_macro"}
    assert out["brier"] == pytest.approx(brier_score(y, softmax(logits)))
    assert softmax(np.array([[1000.0, 0.0]]))[0, 0] == pytest.approx(1.0)


def test_auroc_definition_cites_one_vs_rest_not_hand_and_till() -> None:
    """Hand & Till 2001 is the one-vs-one average; the stored definition is one-vs-rest."""
    from bench.metrics import DEFINITIONS
    said = DEFINITIONS["auroc_macro"]
    assert "Hand & Till" not in said
    assert "Provost & Domingos 2000" in said and "multi_class='ovr'" in said
    assert "average='macro'" in said
