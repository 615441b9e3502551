"""One cell's saliency-stability run: every configured method and metric, plus summaries."""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
from torch import Tensor, nn

from bench.saliency import metrics as M
from bench.saliency.maps import compute_maps
from bench.saliency.settings import SaliencyConfig


def _maps(images: Tensor, targets: Tensor, ids: np.ndarray, *, model: nn.Module, method: str,
          cfg: SaliencyConfig) -> np.ndarray:
    return compute_maps(
        model, images, targets, method, n_samples=cfg.smoothgrad_samples,
        noise_std=cfg.smoothgrad_std, ig_steps=cfg.ig_steps, layer=cfg.gradcam_layer,
        batch_size=cfg.batch_size, seed=cfg.seed, ids=ids,
    )


def maps_for(model: nn.Module, method: str, cfg: SaliencyConfig) -> M.ExplainFn:
    """The explanation function of one model and saliency method under `cfg`."""
    return partial(_maps, model=model, method=method, cfg=cfg)


def stability_suite(
    model: nn.Module,
    fp32_model: nn.Module | None,
    images: Tensor,
    targets: Tensor | np.ndarray,
    masks: np.ndarray | None,
    cfg: SaliencyConfig,
    reference_maps: dict[str, np.ndarray] | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Per method: "maps" (N, H, W) and per-sample (N,) metric arrays.

    Always: max_sensitivity; deletion (zeros baseline) and insertion (blur baseline) scores,
    raw and normalised by the model's p(target | x) and against a random pixel order (see
    `metrics.perturbation_scores`; the random-order curves and p(target | x) are computed once
    per model). With fp32_model, or stored FP32 maps of the same images in
    reference_maps[method]: spearman_fp32, ssim_fp32, topk_iou_fp32 (cell map vs FP32 map;
    stored maps win). With masks: pointing_game, energy_pointing, topk_iou_mask.
    """
    n = min(cfg.n_samples, images.shape[0])
    x = images[:n]
    t = torch.as_tensor(np.asarray(targets)[:n], dtype=torch.long)
    ids = np.arange(n)
    mk = None if masks is None else np.asarray(masks)[:n]
    steps, batch = cfg.deletion_steps, cfg.batch_size
    p_clean = M.target_probability(model, x, t, batch)
    shuffled = M.random_ranks(n, x.shape[-2] * x.shape[-1], cfg.seed)
    random_curves = {"deletion": M.deletion_curve(model, x, t, shuffled, steps, batch_size=batch),
                     "insertion": M.insertion_curve(model, x, t, shuffled, steps,
                                                    batch_size=batch)}
    out: dict[str, dict[str, np.ndarray]] = {}
    for method in cfg.methods:
        explain = maps_for(model, method, cfg)
        maps = explain(x, t, ids)
        res: dict[str, np.ndarray] = {"maps": maps}
        ref = (reference_maps or {}).get(method)
        if ref is None and fp32_model is not None:
            ref = maps_for(fp32_model, method, cfg)(x, t, ids)
        if ref is not None:
            ref = np.asarray(ref)[:n]
            res["spearman_fp32"] = M.spearman(maps, ref)
            res["ssim_fp32"] = M.ssim(maps, ref)
            res["topk_iou_fp32"] = M.topk_iou(maps, ref, cfg.topk)
        res["max_sensitivity"] = M.max_sensitivity(
            explain, x, t, cfg.sensitivity_radius, cfg.sensitivity_samples, seed=cfg.seed,
            base_maps=maps, batch_size=batch)
        if mk is not None:
            res["pointing_game"] = M.pointing_game(maps, mk)
            res["energy_pointing"] = M.energy_pointing(maps, mk)
            res["topk_iou_mask"] = M.topk_iou_mask(maps, mk, cfg.topk)
        ranks = M.saliency_ranks(maps)
        res.update(M.perturbation_scores(
            "deletion", M.deletion_curve(model, x, t, ranks, steps, batch_size=batch),
            random_curves["deletion"], p_clean))
        res.update(M.perturbation_scores(
            "insertion", M.insertion_curve(model, x, t, ranks, steps, batch_size=batch),
            random_curves["insertion"], p_clean))
        out[method] = res
    return out


def summarize(results: dict[str, dict[str, np.ndarray]]) -> dict[str, float]:
    """Flat `saliency_<metric>/<method>/{mean,std,n}`: NaN-aware mean, sample std (ddof=1,
    NaN when n < 2) and the count of non-NaN samples. Maps are skipped."""
    flat: dict[str, float] = {}
    for method, res in results.items():
        for metric, values in res.items():
            if metric == "maps":
                continue
            v = np.asarray(values, dtype=np.float64)
            v = v[~np.isnan(v)]
            key = f"saliency_{metric}/{method}"
            flat[f"{key}/mean"] = float(v.mean()) if v.size else float("nan")
            flat[f"{key}/std"] = float(v.std(ddof=1)) if v.size > 1 else float("nan")
            flat[f"{key}/n"] = float(v.size)
    return flat
