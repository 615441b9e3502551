"""One cell's saliency-stability run: every configured method and metric, plus summaries."""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from bench.saliency import metrics as M
from bench.saliency.maps import METHODS, compute_maps


class SaliencyConfig(BaseModel):
    """Saliency-stability settings; defaults are sized for a fast smoke run.

    n_samples: images evaluated per cell (the suite takes the first n_samples; the `saliency`
    stage draws them from the test split with `seed`); noise_std/noise_samples: Gaussian input
    noise (model-input units) and draws for max-sensitivity; smoothgrad_std/smoothgrad_samples:
    SmoothGrad noise; ig_steps: Integrated-Gradients steps; gradcam_layer: dotted module name,
    None = last Conv2d; deletion_steps: pixel-flipping steps; overlays: PNG overlays the stage
    writes (first method, first images); threads: torch intra-op threads while the stage runs
    (None: unchanged; 1 avoids thread-barrier stalls on small batches on a busy CPU); seed:
    image subset, SmoothGrad and sensitivity noise.
    """

    model_config = ConfigDict(extra="forbid")

    methods: list[str] = Field(default_factory=lambda: ["gradient", "integrated_gradients",
                                                        "smoothgrad", "gradcam"], min_length=1)
    n_samples: int = Field(64, ge=1)
    topk: float = Field(0.1, gt=0.0, le=1.0)
    noise_std: float = Field(0.05, ge=0.0)
    noise_samples: int = Field(4, ge=1)
    ig_steps: int = Field(16, ge=1)
    smoothgrad_samples: int = Field(8, ge=1)
    smoothgrad_std: float = Field(0.15, ge=0.0)
    gradcam_layer: str | None = None
    deletion_steps: int = Field(16, ge=1)
    batch_size: int = Field(32, ge=1)
    overlays: int = Field(3, ge=0)
    threads: int | None = Field(None, ge=1)
    seed: int = 0

    def model_post_init(self, _: object) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown saliency methods {unknown}; known: {list(METHODS)}")


def _explainer(model: nn.Module, method: str, cfg: SaliencyConfig) -> M.ExplainFn:
    return partial(_maps, model=model, method=method, cfg=cfg)


def _maps(images: Tensor, targets: Tensor, *, model: nn.Module, method: str,
          cfg: SaliencyConfig) -> np.ndarray:
    return compute_maps(
        model, images, targets, method, n_samples=cfg.smoothgrad_samples,
        noise_std=cfg.smoothgrad_std, ig_steps=cfg.ig_steps, layer=cfg.gradcam_layer,
        batch_size=cfg.batch_size, seed=cfg.seed,
    )


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

    Always: max_sensitivity, deletion_auc (zeros baseline), insertion_auc (blur baseline).
    With fp32_model, or stored FP32 maps of the same images in reference_maps[method]:
    spearman_fp32, ssim_fp32, topk_iou_fp32 (cell map vs FP32 map; stored maps win).
    With masks: pointing_game, energy_pointing, topk_iou_mask.
    """
    n = min(cfg.n_samples, images.shape[0])
    x = images[:n]
    t = torch.as_tensor(np.asarray(targets)[:n], dtype=torch.long)
    mk = None if masks is None else np.asarray(masks)[:n]
    out: dict[str, dict[str, np.ndarray]] = {}
    for method in cfg.methods:
        explain = _explainer(model, method, cfg)
        maps = explain(x, t)
        res: dict[str, np.ndarray] = {"maps": maps}
        ref = (reference_maps or {}).get(method)
        if ref is None and fp32_model is not None:
            ref = _explainer(fp32_model, method, cfg)(x, t)
        if ref is not None:
            ref = np.asarray(ref)[:n]
            res["spearman_fp32"] = M.spearman(maps, ref)
            res["ssim_fp32"] = M.ssim(maps, ref)
            res["topk_iou_fp32"] = M.topk_iou(maps, ref, cfg.topk)
        res["max_sensitivity"] = M.max_sensitivity(
            explain, x, t, cfg.noise_std, cfg.noise_samples, seed=cfg.seed)
        if mk is not None:
            res["pointing_game"] = M.pointing_game(maps, mk)
            res["energy_pointing"] = M.energy_pointing(maps, mk)
            res["topk_iou_mask"] = M.topk_iou_mask(maps, mk, cfg.topk)
        res["deletion_auc"] = M.deletion_auc(
            model, x, t, maps, cfg.deletion_steps, batch_size=cfg.batch_size)
        res["insertion_auc"] = M.insertion_auc(
            model, x, t, maps, cfg.deletion_steps, batch_size=cfg.batch_size)
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
