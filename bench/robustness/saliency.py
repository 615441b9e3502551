"""Saliency stability under corruption: per image, the Spearman rank correlation (as the
saliency stage's, bench.saliency.metrics.spearman) between its map on the clean image and on
each corrupted one, for the cell's own model; the images are the saliency stage's draw
(bench.saliency.stage.evaluation_subset with the settings' count and seed)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bench.data import cache_dir, normalize
from bench.robustness.cache import corrupted_images
from bench.robustness.settings import RobustnessSettings
from bench.runner.stages import StageInput


def saliency_stability(inp: StageInput, cfg: RobustnessSettings) -> dict[str, Any]:
    """Mean Spearman per corruption and severity, and over all of them (`mean`)."""
    if cfg.saliency_images == 0:
        return {"skipped": "saliency_images is 0"}
    from bench.saliency.metrics import spearman
    from bench.saliency.stage import evaluation_subset, on_torch_device
    from bench.saliency.suite import SaliencyConfig, maps_for

    scfg = SaliencyConfig(methods=[cfg.saliency_method], seed=cfg.seed)
    imgs, split = inp.data.images, inp.data.split
    index = evaluation_subset(split.test, cfg.saliency_images, cfg.seed)
    device = torch.device(inp.torch_device)
    explain = maps_for(on_torch_device(inp.model, device), cfg.saliency_method, scfg)
    targets = imgs.labels[index].to(device)
    ids = np.arange(len(index))
    clean = imgs.images[index]
    reference = explain(normalize(clean.to(device)), targets, ids)
    rho: dict[str, list[float | None]] = {}
    for c in cfg.corruptions:
        rho[c] = []
        for s in cfg.severities:
            x = corrupted_images(cache_dir(), clean.numpy(), index, imgs.fingerprint,
                                 split.manifest_hash, c, s, cfg.seed)
            r = spearman(reference, explain(normalize(torch.from_numpy(x).to(device)), targets,
                                            ids))
            rho[c].append(float(np.nanmean(r)) if np.isfinite(r).any() else None)
    values = [v for per in rho.values() for v in per if v is not None]
    return {"method": cfg.saliency_method, "images": index.tolist(), "spearman": rho,
            "mean": float(np.mean(values)) if values else None}
