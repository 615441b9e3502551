"""Per-sample saliency-map statistics; every function returns one value per sample, shape (N,).

Maps are (N, H, W) arrays; masks are boolean (N, H, W) (a singleton channel axis is dropped).
Undefined values are NaN: Spearman of a constant map, pointing/energy with an empty mask or an
all-zero map. Summaries should use nan-aware reductions and report the NaN count.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import combinations
from typing import Literal

import numpy as np
import torch
from scipy.stats import rankdata
from skimage.metrics import structural_similarity
from torch import Tensor, nn
from torchvision.transforms.v2.functional import gaussian_blur

from bench.saliency.maps import eval_mode

ExplainFn = Callable[[Tensor, Tensor], np.ndarray]
Baseline = Literal["zeros", "blur"]
BLUR_KERNEL = 11
BLUR_SIGMA = 5.0


def _flat(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a.reshape(a.shape[0], -1)


def _masks(masks: np.ndarray) -> np.ndarray:
    m = np.asarray(masks).astype(bool)
    if m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    return m.reshape(m.shape[0], -1)


def _rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    den = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(axis=1) / den
    return np.where(den > 0, np.clip(r, -1.0, 1.0), np.nan)


def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of the flattened maps; ties get average ranks (as scipy)."""
    return _rowwise_pearson(rankdata(_flat(a), axis=1), rankdata(_flat(b), axis=1))


def normalise01(maps: np.ndarray) -> np.ndarray:
    """Per-sample min-max scaling to [0, 1]; a constant map becomes all zeros."""
    m = np.asarray(maps, dtype=np.float64)
    axes = tuple(range(1, m.ndim))
    lo, hi = m.min(axis=axes, keepdims=True), m.max(axis=axes, keepdims=True)
    span = hi - lo
    return np.where(span > 0, (m - lo) / np.where(span > 0, span, 1.0), 0.0)


def ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSIM of per-sample [0,1]-normalised maps: skimage defaults (7x7 uniform window), range 1."""
    na, nb = normalise01(a), normalise01(b)
    pairs = zip(na, nb, strict=True)
    return np.array([structural_similarity(x, y, data_range=1.0) for x, y in pairs])


def topk_mask(maps: np.ndarray, k: float) -> np.ndarray:
    """Boolean (N, H*W) marking the round(k*H*W) (at least 1) highest pixels; ties by index."""
    flat = _flat(maps)
    m = max(1, round(k * flat.shape[1]))
    idx = np.argsort(-flat, axis=1, kind="stable")[:, :m]
    out = np.zeros(flat.shape, dtype=bool)
    np.put_along_axis(out, idx, True, axis=1)
    return out


def _iou(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    inter = (x & y).sum(axis=1)
    union = (x | y).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1), np.nan)


def topk_iou(a: np.ndarray, b: np.ndarray, k: float = 0.1) -> np.ndarray:
    """IoU of the top-k fraction pixel sets of two maps."""
    return _iou(topk_mask(a, k), topk_mask(b, k))


def topk_iou_mask(maps: np.ndarray, masks: np.ndarray, k: float = 0.1) -> np.ndarray:
    """IoU between the top-k fraction pixel set of each map and its ground-truth mask."""
    return _iou(topk_mask(maps, k), _masks(masks))


def pointing_game(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """1 if any maximal pixel lies in the mask, else 0; NaN for an empty mask (Quantus rule)."""
    a, m = _flat(maps), _masks(masks)
    hit = np.any(m & (a == a.max(axis=1, keepdims=True)), axis=1).astype(np.float64)
    hit[m.sum(axis=1) == 0] = np.nan
    return hit


def energy_pointing(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Share of positive attribution inside the mask: sum(a+ * m) / sum(a+); NaN if sum(a+)=0."""
    pos, m = np.clip(_flat(maps), 0.0, None), _masks(masks)
    total = pos.sum(axis=1)
    out = np.full(pos.shape[0], np.nan)
    ok = (total > 0) & (m.sum(axis=1) > 0)
    out[ok] = (pos * m).sum(axis=1)[ok] / total[ok]
    return out


def max_sensitivity(
    explain_fn: ExplainFn,
    images: Tensor,
    targets: Tensor,
    noise_std: float,
    n_samples: int,
    *,
    seed: int = 0,
) -> np.ndarray:
    """Max over n_samples noisy inputs of ||e(x+d) - e(x)||_F / ||e(x)||_F (Yeh et al., 2019).

    d ~ N(0, noise_std^2) i.i.d. per input element; draw s is `noise_std * torch.randn(
    images.shape, generator=torch.Generator().manual_seed(seed))` continued s times. Norms are
    Frobenius over the flattened map (Quantus' fro_norm). 0/0 is defined as 0 (an explanation
    that is zero and stays zero), x/0 with x > 0 as inf.
    """
    gen = torch.Generator().manual_seed(seed)
    base = _flat(explain_fn(images, targets))
    den = np.linalg.norm(base, axis=1)
    worst = np.zeros(base.shape[0])
    for _ in range(n_samples):
        noise = noise_std * torch.randn(images.shape, generator=gen, dtype=images.dtype)
        num = np.linalg.norm(_flat(explain_fn(images + noise, targets)) - base, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(den > 0, num / np.where(den > 0, den, 1.0),
                             np.where(num > 0, np.inf, 0.0))
        worst = np.maximum(worst, ratio)
    return worst


def baseline_images(images: Tensor, kind: Baseline) -> Tensor:
    """All-zeros images, or a Gaussian blur (kernel 11, sigma 5, as in RISE) of the images."""
    if kind == "zeros":
        return torch.zeros_like(images)
    if kind == "blur":
        k = min(BLUR_KERNEL, 2 * (min(images.shape[-2:]) // 2) - 1)
        return gaussian_blur(images, kernel_size=[k, k], sigma=[BLUR_SIGMA, BLUR_SIGMA])
    raise ValueError(f"unknown baseline '{kind}'")


@torch.no_grad()
def _flip_curve(
    model: nn.Module, images: Tensor, targets: Tensor, maps: np.ndarray, steps: int,
    start: Tensor, end: Tensor, batch_size: int,
) -> np.ndarray:
    """Target-class probability as pixels go from `start` to `end` in decreasing saliency.

    The (step, image) inputs are evaluated `batch_size` at a time across steps, so a small image
    set costs few forward passes.
    """
    n, _, h, w = images.shape
    order = np.argsort(-_flat(maps), axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(h * w)[None].repeat(n, 0), axis=1)
    rank_t = torch.from_numpy(rank).reshape(n, 1, h, w)
    t = torch.as_tensor(np.asarray(targets), dtype=torch.long)
    flips = torch.tensor([round(s * h * w / steps) for s in range(steps + 1)])
    step_of = torch.arange(steps + 1).repeat_interleave(n)
    image_of = torch.arange(n).repeat(steps + 1)
    probs = np.zeros((n, steps + 1))
    with eval_mode(model):
        for b in range(0, len(step_of), batch_size):
            s, i = step_of[b:b + batch_size], image_of[b:b + batch_size]
            flipped = rank_t[i] < flips[s].view(-1, 1, 1, 1)
            p = torch.softmax(model(torch.where(flipped, end[i], start[i])).float(), dim=1)
            probs[i.numpy(), s.numpy()] = p.gather(1, t[i, None])[:, 0].numpy()
    return probs


def deletion_auc(
    model: nn.Module, images: Tensor, targets: Tensor, maps: np.ndarray, steps: int = 20,
    *, baseline: Baseline = "zeros", batch_size: int = 64,
) -> np.ndarray:
    """RISE deletion: replace pixels (all channels) by the baseline, most salient first.

    Score = trapezoid area under p(target | x_s) over s/steps in [0, 1] (steps+1 points);
    lower is better. Default baseline: zeros in model-input space (the mean image when inputs
    are mean-normalised).
    """
    base = baseline_images(images, baseline)
    curve = _flip_curve(model, images, targets, maps, steps, images, base, batch_size)
    return np.trapezoid(curve, dx=1.0 / steps, axis=1)


def insertion_auc(
    model: nn.Module, images: Tensor, targets: Tensor, maps: np.ndarray, steps: int = 20,
    *, baseline: Baseline = "blur", batch_size: int = 64,
) -> np.ndarray:
    """RISE insertion: start from the baseline (default blurred image), restore the most
    salient pixels first; trapezoid AUC over [0, 1]; higher is better."""
    base = baseline_images(images, baseline)
    curve = _flip_curve(model, images, targets, maps, steps, base, images, batch_size)
    return np.trapezoid(curve, dx=1.0 / steps, axis=1)


def seed_consistency(maps_by_seed: list[np.ndarray]) -> np.ndarray:
    """Per-sample mean Spearman over all pairs of seeds' maps (needs at least two seeds)."""
    if len(maps_by_seed) < 2:
        raise ValueError("seed_consistency needs maps from at least two seeds")
    pairs = [spearman(a, b) for a, b in combinations(maps_by_seed, 2)]
    return np.mean(np.stack(pairs), axis=0)
