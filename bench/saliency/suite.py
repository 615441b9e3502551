"""One cell's saliency-stability run: every configured method and metric, plus summaries."""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bench.saliency import metrics as M
from bench.saliency.maps import as_targets, compute_maps, model_torch_device
from bench.saliency.settings import SaliencyConfig, detail_positions


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

    Always: max_sensitivity, on the images `cfg.sensitivity_images` gives the method (the first
    k of `detail_positions`; NaN for the others); deletion (zeros baseline) and insertion (blur
    baseline) scores, raw and normalised by the model's p(target | x) and against a random
    pixel order (see `metrics.perturbation_scores`; the curves' end points, p(target | x) and
    the random-order curves are computed once per model, `metrics.PerturbationCurves`). With
    fp32_model, or stored FP32 maps of the same images in reference_maps[method]: spearman_fp32,
    ssim_fp32, topk_iou_fp32 (cell map vs FP32 map; stored maps win). With masks: pointing_game,
    energy_pointing, topk_iou_mask. The images are moved to the model's torch device once; every
    pass runs there, and only maps and probabilities come back as CPU arrays.
    """
    n = min(cfg.n_samples, images.shape[0])
    torch_device = model_torch_device(model)
    x = images[:n].to(torch_device)
    t = as_targets(targets, torch_device)[:n]
    ids = np.arange(n)
    order = np.asarray(detail_positions(n, cfg.seed), dtype=np.int64)
    mk = None if masks is None else np.asarray(masks)[:n]
    batch = cfg.batch_size
    curves = M.PerturbationCurves(model, x, t, cfg.deletion_steps, batch)
    shuffled = M.random_ranks(n, x.shape[-2] * x.shape[-1], cfg.seed)
    random_curves = {"deletion": curves.deletion(shuffled), "insertion": curves.insertion(shuffled)}
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
        pos = np.sort(order[:cfg.sensitivity_count(method, n)])
        sensitivity = np.full(n, np.nan)
        rows = torch.from_numpy(pos).to(torch_device)
        sensitivity[pos] = M.max_sensitivity(
            explain, x[rows], t[rows],
            cfg.sensitivity_radius, cfg.sensitivity_samples, seed=cfg.seed, base_maps=maps[pos],
            batch_size=batch, ids=pos)
        res["max_sensitivity"] = sensitivity
        if mk is not None:
            res["pointing_game"] = M.pointing_game(maps, mk)
            res["energy_pointing"] = M.energy_pointing(maps, mk)
            res["topk_iou_mask"] = M.topk_iou_mask(maps, mk, cfg.topk)
        ranks = M.saliency_ranks(maps)
        res.update(M.perturbation_scores("deletion", curves.deletion(ranks),
                                         random_curves["deletion"], curves.p_clean))
        res.update(M.perturbation_scores("insertion", curves.insertion(ranks),
                                         random_curves["insertion"], curves.p_clean))
        out[method] = res
    return out


def subsets(cfg: SaliencyConfig, index: np.ndarray) -> dict[str, Any]:
    """The evaluated images (data-set indices `index`) each metric computed on a subset saw:
    max-sensitivity per saliency method, and the sanity check's images."""
    n = len(index)
    order = detail_positions(n, cfg.seed)

    def images(k: int) -> dict[str, Any]:
        chosen = np.sort(np.asarray(order[:k], dtype=np.int64))
        return {"n": int(k), "of": n, "images": index[chosen].tolist()}

    return {"max_sensitivity": {m: images(cfg.sensitivity_count(m, n)) for m in cfg.methods},
            "sanity": images(min(cfg.sanity_images, n))}


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
