"""Saliency maps, per-sample stability/faithfulness metrics and the per-cell stability suite.

The names below are imported from their modules on first use, so that importing the package
(as grid planning does for bench.saliency.settings) does not load torch or Captum.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "METHODS": "maps",
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


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
