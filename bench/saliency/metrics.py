"""Per-sample saliency-map statistics; every function returns one value per sample, shape (N,).

Maps are (N, H, W) arrays; masks are boolean (N, H, W) (a singleton channel axis is dropped).
Undefined values are NaN: Spearman of a constant map, pointing/energy with an empty mask or an
all-zero map. Summaries should use nan-aware reductions and report the NaN count.

Forward-only passes (p(target | x), the deletion and insertion curves) run under
`forward_only()`, i.e. `torch.inference_mode()`: Brevitas issue 1245 reports inference mode
breaking quantised inference, so tests/test_inference_mode.py checks, for every quantisation
scheme of bench.quant and the FP32 backbones, that outputs equal those under `torch.no_grad()`
and that gradient passes after it are unchanged.
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

from bench.saliency.maps import as_targets, eval_mode, model_torch_device

ExplainFn = Callable[[Tensor, Tensor, np.ndarray], np.ndarray]
"""(images, targets, positions of the images in the evaluated set) -> maps (N, H, W)."""
Baseline = Literal["zeros", "blur"]
BLUR_KERNEL = 11
BLUR_SIGMA = 5.0


CONSTANT_RTOL = 1e-5
"""A map whose range is at most this fraction of its largest |value| is constant: upsampling a
1x1 Grad-CAM map, for one, leaves float32 rounding noise (~1e-7 relative) that would otherwise
decide ranks, SSIM and top-k sets."""


def _flat(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a.reshape(a.shape[0], -1)


def _flat_maps(maps: np.ndarray) -> np.ndarray:
    """(N, H*W) float64 maps; a numerically constant map (CONSTANT_RTOL) is set to 0."""
    flat = _flat(maps).copy()
    if flat.size:
        span = np.ptp(flat, axis=1)
        flat[span <= CONSTANT_RTOL * np.abs(flat).max(axis=1)] = 0.0
    return flat


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
    return _rowwise_pearson(rankdata(_flat_maps(a), axis=1), rankdata(_flat_maps(b), axis=1))


def normalise01(maps: np.ndarray) -> np.ndarray:
    """Per-sample min-max scaling to [0, 1]; a (numerically) constant map becomes all zeros."""
    m = _flat_maps(maps).reshape(np.shape(maps))
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
    """Boolean (N, H*W) marking each map's round(k*H*W) (at least 1) highest pixels, without
    a tie that straddles the cut: the pixels strictly above the value of the first pixel left
    out, so tied values (the zeros of a sparse map) are either all in or all out and the set
    never depends on pixel order. A map with such a tie gets fewer than round(k*H*W) pixels;
    a constant map gets none."""
    flat = _flat_maps(maps)
    m = max(1, round(k * flat.shape[1]))
    if m >= flat.shape[1]:
        return np.ones(flat.shape, dtype=bool)
    cut = -np.partition(-flat, m, axis=1)[:, m:m + 1]
    return flat > cut


def _iou(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    inter = (x & y).sum(axis=1)
    union = (x | y).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1), np.nan)


def topk_iou(a: np.ndarray, b: np.ndarray, k: float = 0.1) -> np.ndarray:
    """IoU of the top-k fraction pixel sets of two maps (see `topk_mask`); NaN when both sets
    are empty."""
    return _iou(topk_mask(a, k), topk_mask(b, k))


def topk_iou_mask(maps: np.ndarray, masks: np.ndarray, k: float = 0.1) -> np.ndarray:
    """IoU between the top-k fraction pixel set of each map and its ground-truth mask."""
    return _iou(topk_mask(maps, k), _masks(masks))


def pointing_game(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """1 if any maximal pixel lies in the mask, else 0; NaN for an empty mask (Quantus rule)."""
    a, m = _flat_maps(maps), _masks(masks)
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


def forward_only() -> torch.inference_mode:
    """The context of the passes that need no gradient: inference mode (no autograd or version
    counter bookkeeping), which Brevitas' fake-quant graphs of this project run unchanged (see
    the module docstring)."""
    return torch.inference_mode()


def linf_ball_noise(shape: tuple[int, ...], radius: float, seed: int) -> Tensor:
    """One draw from the uniform distribution on the L-infinity ball of `radius`: i.i.d.
    U(-radius, radius) per element, from a generator seeded with `seed` (CPU, float32)."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=gen) * 2.0 - 1.0) * radius


def sensitivity_noise_seed(seed: int, draw: int, image: int) -> int:
    """Seed of draw `draw` for image position `image`: independent of batching and of which
    other images are evaluated, the same for every cell."""
    return int(np.random.SeedSequence([seed, draw, image]).generate_state(1)[0])


def max_sensitivity(
    explain_fn: ExplainFn,
    images: Tensor,
    targets: Tensor,
    radius: float,
    n_samples: int,
    *,
    seed: int = 0,
    base_maps: np.ndarray | None = None,
    batch_size: int = 32,
    ids: np.ndarray | None = None,
) -> np.ndarray:
    """Max-sensitivity (Yeh et al., NeurIPS 2019): max over n_samples perturbations d drawn
    uniformly from the L-infinity ball of `radius` of ||e(x+d) - e(x)||_F / ||e(x)||_F.

    The conventions of Quantus' `MaxSensitivity` (uniform noise, Frobenius norms of the flattened
    difference and of e(x)) and Captum's `sensitivity_max` (its `default_perturb_func`, 10
    draws by default); `radius` is in model-input units. `ids` are the images' positions in
    the evaluated set (default 0..N-1): draw s of the image at position i is
    `linf_ball_noise(x_i.shape, radius, sensitivity_noise_seed(seed, s, i))`, so a subset of the
    images gets the values it would get among all of them. `explain_fn(x, t, ids)` gets those
    positions, so a method with its own noise (SmoothGrad) reuses the noise of the unperturbed
    image. `base_maps` are e(x) when already computed; the (draw, image) pairs are explained
    `batch_size` at a time, perturbed on the images' torch device. 0/0 is defined as 0 (an
    explanation that is zero and stays zero), x/0 with x > 0 as inf (Captum divides by 1 there
    instead).
    """
    n = images.shape[0]
    ids = np.arange(n) if ids is None else np.asarray(ids)
    targets = as_targets(targets, images.device)
    base = _flat(explain_fn(images, targets, ids) if base_maps is None else base_maps)
    den = np.linalg.norm(base, axis=1)
    worst = np.zeros(n)
    pairs = [(s, i) for s in range(n_samples) for i in range(n)]
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        rows = np.array([i for _, i in chunk])
        noise = torch.stack([linf_ball_noise(tuple(images.shape[1:]), radius,
                                             sensitivity_noise_seed(seed, s, int(ids[i])))
                             for s, i in chunk]).to(images.device, images.dtype)
        rows_t = torch.from_numpy(rows).to(images.device)
        maps = _flat(explain_fn(images[rows_t] + noise, targets[rows_t], ids[rows]))
        num = np.linalg.norm(maps - base[rows], axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(den[rows] > 0, num / np.where(den[rows] > 0, den[rows], 1.0),
                             np.where(num > 0, np.inf, 0.0))
        np.maximum.at(worst, rows, ratio)
    return worst


def baseline_images(images: Tensor, kind: Baseline) -> Tensor:
    """All-zeros images, or a Gaussian blur (kernel 11, sigma 5, as in RISE) of the images."""
    if kind == "zeros":
        return torch.zeros_like(images)
    if kind == "blur":
        k = min(BLUR_KERNEL, 2 * (min(images.shape[-2:]) // 2) - 1)
        return gaussian_blur(images, kernel_size=[k, k], sigma=[BLUR_SIGMA, BLUR_SIGMA])
    raise ValueError(f"unknown baseline '{kind}'")


def saliency_ranks(maps: np.ndarray) -> np.ndarray:
    """(N, H*W) rank of each pixel in decreasing saliency (0 = most salient; ties, and a
    numerically constant map, by index)."""
    flat = _flat_maps(maps)
    order = np.argsort(-flat, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(flat.shape[1])[None].repeat(len(flat), 0), axis=1)
    return rank


def random_ranks(n: int, pixels: int, seed: int) -> np.ndarray:
    """(n, pixels) random pixel ranks; image position i uses SeedSequence([seed, i]), so every
    cell gets the same random order for the same image."""
    return np.stack([np.random.default_rng([seed, i]).permutation(pixels) for i in range(n)])


def target_probability(model: nn.Module, images: Tensor, targets: Tensor,
                       batch_size: int = 64) -> np.ndarray:
    """softmax(model(x))[target] per image (N,), in eval mode, on the model's torch device."""
    torch_device = model_torch_device(model)
    t = as_targets(targets, torch_device)
    out = []
    with eval_mode(model), forward_only():
        for b in range(0, images.shape[0], batch_size):
            p = torch.softmax(model(images[b:b + batch_size].to(torch_device)).float(), dim=1)
            out.append(p.gather(1, t[b:b + batch_size, None])[:, 0])
    return torch.cat(out).cpu().numpy() if out else np.zeros(0)


def flip_curve(
    model: nn.Module, images: Tensor, targets: Tensor, ranks: np.ndarray, steps: int,
    start: Tensor, end: Tensor, batch_size: int,
    ends: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Target-class probability (N, steps+1) as pixels (all channels) go from `start` to `end`
    in increasing `ranks`: at step s the round(s*H*W/steps) lowest-ranked pixels come from `end`.

    Step 0 is `start` and step `steps` is `end` whatever the order: `ends` = (p(target | start),
    p(target | end)), when already known, fill them and only the steps between are evaluated.
    The (step, image) inputs are evaluated `batch_size` at a time across steps, so a small image
    set costs few forward passes; inputs are built on the model's torch device.
    """
    n, _, h, w = images.shape
    torch_device = model_torch_device(model)
    rank_t = torch.from_numpy(np.asarray(ranks)).reshape(n, 1, h, w).to(torch_device)
    start, end = start.to(torch_device), end.to(torch_device)
    t = as_targets(targets, torch_device)
    flips = torch.tensor([round(s * h * w / steps) for s in range(steps + 1)], device=torch_device)
    first, last = (0, steps) if ends is None else (1, steps - 1)
    step_of = torch.arange(first, last + 1).repeat_interleave(n).to(torch_device)
    image_of = torch.arange(n).repeat(last - first + 1).to(torch_device)
    probs = torch.zeros((n, steps + 1), dtype=torch.float64, device=torch_device)
    if ends is not None:
        probs[:, 0] = torch.as_tensor(ends[0], dtype=torch.float64, device=torch_device)
        probs[:, steps] = torch.as_tensor(ends[1], dtype=torch.float64, device=torch_device)
    with eval_mode(model), forward_only():
        for b in range(0, len(step_of), batch_size):
            s, i = step_of[b:b + batch_size], image_of[b:b + batch_size]
            flipped = rank_t[i] < flips[s].view(-1, 1, 1, 1)
            p = torch.softmax(model(torch.where(flipped, end[i], start[i])).float(), dim=1)
            probs[i, s] = p.gather(1, t[i, None])[:, 0].double()
    return probs.cpu().numpy()


def deletion_curve(model: nn.Module, images: Tensor, targets: Tensor, ranks: np.ndarray,
                   steps: int, *, baseline: Baseline = "zeros", batch_size: int = 64,
                   ends: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """RISE deletion curve: pixels replaced by the baseline in increasing `ranks`; `ends`:
    (p(target | image), p(target | baseline)) when known (see `flip_curve`)."""
    base = baseline_images(images, baseline)
    return flip_curve(model, images, targets, ranks, steps, images, base, batch_size, ends)


def insertion_curve(model: nn.Module, images: Tensor, targets: Tensor, ranks: np.ndarray,
                    steps: int, *, baseline: Baseline = "blur", batch_size: int = 64,
                    ends: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """RISE insertion curve: pixels of the image restored into the baseline in increasing
    `ranks`; `ends`: (p(target | baseline), p(target | image)) when known."""
    base = baseline_images(images, baseline)
    return flip_curve(model, images, targets, ranks, steps, base, images, batch_size, ends)


class PerturbationCurves:
    """Deletion (zeros baseline) and insertion (blur baseline) curves of one model on fixed
    images for any number of pixel orders, without evaluating anything twice: p(target | x),
    p(target | zeros) and p(target | blurred x) are computed once (3 forward passes an image)
    and are every order's end points; each order then costs 2 * (steps - 1) passes an image."""

    def __init__(self, model: nn.Module, images: Tensor, targets: Tensor, steps: int,
                 batch_size: int) -> None:
        self.model, self.images, self.steps, self.batch_size = model, images, steps, batch_size
        self.targets = as_targets(targets, model_torch_device(model))
        self.zeros = baseline_images(images, "zeros")
        self.blur = baseline_images(images, "blur")
        self.p_clean = target_probability(model, images, self.targets, batch_size)
        self.p_zeros = target_probability(model, self.zeros, self.targets, batch_size)
        self.p_blur = target_probability(model, self.blur, self.targets, batch_size)

    def deletion(self, ranks: np.ndarray) -> np.ndarray:
        return flip_curve(self.model, self.images, self.targets, ranks, self.steps, self.images,
                          self.zeros, self.batch_size, (self.p_clean, self.p_zeros))

    def insertion(self, ranks: np.ndarray) -> np.ndarray:
        return flip_curve(self.model, self.images, self.targets, ranks, self.steps, self.blur,
                          self.images, self.batch_size, (self.p_blur, self.p_clean))


def curve_auc(curve: np.ndarray, scale: np.ndarray | None = None) -> np.ndarray:
    """Trapezoid area under each curve over s/steps in [0, 1]; with `scale` (N,), of the curve
    divided by it (NaN where the scale is 0)."""
    steps = curve.shape[1] - 1
    if scale is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            curve = np.where(scale[:, None] > 0, curve / scale[:, None], np.nan)
    return np.trapezoid(curve, dx=1.0 / steps, axis=1)


def deletion_auc(
    model: nn.Module, images: Tensor, targets: Tensor, maps: np.ndarray, steps: int = 20,
    *, baseline: Baseline = "zeros", batch_size: int = 64,
) -> np.ndarray:
    """RISE deletion (Petsiuk et al. 2018): replace pixels (all channels) by the baseline, most
    salient first; trapezoid area under p(target | x_s) over s/steps in [0, 1] (steps+1 points).
    Lower is better for one model; across models see `perturbation_scores`. Default baseline:
    zeros in model-input space (the mean image when inputs are mean-normalised)."""
    return curve_auc(deletion_curve(model, images, targets, saliency_ranks(maps), steps,
                                    baseline=baseline, batch_size=batch_size))


def insertion_auc(
    model: nn.Module, images: Tensor, targets: Tensor, maps: np.ndarray, steps: int = 20,
    *, baseline: Baseline = "blur", batch_size: int = 64,
) -> np.ndarray:
    """RISE insertion: start from the baseline (default blurred image), restore the most
    salient pixels first; trapezoid AUC over [0, 1]; higher is better for one model."""
    return curve_auc(insertion_curve(model, images, targets, saliency_ranks(maps), steps,
                                     baseline=baseline, batch_size=batch_size))


def perturbation_scores(kind: Literal["deletion", "insertion"], curve: np.ndarray,
                        random_curve: np.ndarray, p_clean: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image deletion or insertion scores that can be compared across models.

    `<kind>_auc`: raw AUC of p(target) (depends on how confident the model is);
    `<kind>_auc_norm`: AUC of p(target | x_s) / p(target | x), the curve as a fraction of the
    model's own probability on the intact image (deletion: the first point is 1; insertion: the
    last); `<kind>_auc_random`: the same for a random pixel order (`random_ranks`) on the same
    model; `<kind>_gain`: how much better the saliency order is than the random one, random -
    saliency for deletion and saliency - random for insertion, so higher is better for both
    and 0 is chance. A value is NaN where p(target | x) is 0.
    """
    norm, rand = curve_auc(curve, p_clean), curve_auc(random_curve, p_clean)
    gain = rand - norm if kind == "deletion" else norm - rand
    return {f"{kind}_auc": curve_auc(curve), f"{kind}_auc_norm": norm,
            f"{kind}_auc_random": rand, f"{kind}_gain": gain}


def seed_consistency(maps_by_seed: list[np.ndarray]) -> np.ndarray:
    """Per-sample mean Spearman over all pairs of seeds' maps (needs at least two seeds)."""
    if len(maps_by_seed) < 2:
        raise ValueError("seed_consistency needs maps from at least two seeds")
    pairs = [spearman(a, b) for a, b in combinations(maps_by_seed, 2)]
    return np.mean(np.stack(pairs), axis=0)
