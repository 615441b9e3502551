"""Saliency maps, per-sample stability/faithfulness metrics and the per-cell stability suite.

The names below are imported from their modules on first use, so that importing the package
(as grid planning does for bench.saliency.settings) does not load torch or Captum.
"""

from __future__ import annotations

from bench.lazy import lazy_exports

_EXPORTS = {
    "SALIENCY_METHODS": "methods",
    "compute_maps": "maps",
    "deletion_auc": "metrics",
    "energy_pointing": "metrics",
    "insertion_auc": "metrics",
    "max_sensitivity": "metrics",
    "pointing_game": "metrics",
    "seed_consistency": "metrics",
    "spearman": "metrics",
    "ssim": "metrics",
    "topk_iou": "metrics",
    "topk_iou_mask": "metrics",
    "save_overlay_png": "overlay",
    "SaliencyConfig": "settings",
    "stability_suite": "suite",
    "summarize": "suite",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
