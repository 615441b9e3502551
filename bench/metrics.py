"""Classification metrics of one cell's test predictions: from the predicted labels (accuracy,
macro-F1, per-class recall, confusion matrix) and from the predicted probabilities
(calibration and discrimination: ECE, Brier score, macro one-vs-rest AUROC)."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score

ECE_BINS = 15
"""Equal-width confidence bins of the expected calibration error (Guo et al. 2017)."""
PROBABILITY_METRICS = ("ece", "brier", "auroc_macro")
"""The names `probability_metrics` returns, in order."""
DEFINITIONS = {
    "ece": f"expected calibration error: top-1 confidence in {ECE_BINS} equal-width bins of "
           "(0, 1], sum over bins of |bin| / n x |accuracy - mean confidence| (Naeini et al. "
           "2015; Guo et al. 2017)",
    "brier": "multi-class Brier score: mean over images of the sum over classes of "
             "(p_k - 1[y = k])^2, range 0..2 (Brier 1950; unhalved)",
    "auroc_macro": "macro one-vs-rest AUROC: unweighted mean over the classes with positives "
                   "and negatives of the one-vs-rest AUROC of p_k for class k against the rest "
                   "(Provost & Domingos 2000; scikit-learn roc_auc_score multi_class='ovr', "
                   "average='macro')",
}
"""The convention of each probability metric, stored with the figures."""


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int
                           ) -> dict[str, Any]:
    """Top-1 accuracy, macro-F1, per-class recall and the confusion matrix (rows: true)."""
    labels = list(range(num_classes))
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro",
                                   zero_division=0)),
        "per_class_recall": recall_score(y_true, y_pred, labels=labels, average=None,
                                         zero_division=0).tolist(),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (max-subtracted, so large logits do not overflow)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray,
                               n_bins: int = ECE_BINS) -> float:
    """ECE of the top-1 prediction (Naeini et al. 2015, "Obtaining well calibrated
    probabilities using Bayesian binning"; Guo et al. 2017, "On calibration of modern neural
    networks", eq. 3): the confidence max_k p_k of each image falls in one of ``n_bins``
    equal-width bins ((m-1)/M, m/M]; ECE = sum_m |B_m| / n * |acc(B_m) - conf(B_m)|."""
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    if len(y) == 0:
        raise ValueError("ECE of no images is undefined")
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    bins = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    gap = np.abs(np.bincount(bins, correct, n_bins) - np.bincount(bins, confidence, n_bins))
    return float(gap.sum() / len(y))


def brier_score(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Multi-class Brier score (Brier 1950): mean over images of sum_k (p_k - 1[y = k])^2, in
    0..2; not halved (sklearn's brier_score_loss on 2-D probabilities, scale_by_half=False)."""
    p = np.asarray(probs, dtype=np.float64)
    onehot = np.zeros_like(p)
    onehot[np.arange(len(p)), np.asarray(y_true, dtype=np.int64)] = 1.0
    return float(((p - onehot) ** 2).sum(axis=1).mean())


def binary_auroc(positive: np.ndarray, scores: np.ndarray) -> float | None:
    """AUROC of ``scores`` for the boolean ``positive``: the Mann-Whitney U of the positives'
    mid-ranks over n_pos x n_neg (ties count one half); None without positives or negatives."""
    pos = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if not n_pos or not n_neg:
        return None
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def macro_auroc(y_true: np.ndarray, probs: np.ndarray) -> float | None:
    """Macro one-vs-rest AUROC: the unweighted mean over classes of the AUROC of p_k for class k
    against every other class (Provost & Domingos 2000; scikit-learn's ``multi_class="ovr"``,
    ``average="macro"``; not Hand & Till 2001, which is one-vs-one); classes without test
    images (or with only them) are left out, None when no class is left."""
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    per_class = [binary_auroc(y == k, p[:, k]) for k in range(p.shape[1])]
    defined = [a for a in per_class if a is not None]
    return float(np.mean(defined)) if defined else None


def probability_metrics(y_true: np.ndarray, logits: np.ndarray) -> dict[str, float | None]:
    """ECE, Brier score and macro one-vs-rest AUROC of the softmax of ``logits``."""
    probs = softmax(logits)
    return {"ece": expected_calibration_error(y_true, probs),
            "brier": brier_score(y_true, probs),
            "auroc_macro": macro_auroc(y_true, probs)}
