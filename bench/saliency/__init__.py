"""Saliency maps, per-sample stability/faithfulness metrics and the per-cell stability suite."""

from bench.saliency.maps import METHODS, compute_maps
from bench.saliency.metrics import (
    deletion_auc,
    energy_pointing,
    insertion_auc,
    max_sensitivity,
    pointing_game,
    seed_consistency,
    spearman,
    ssim,
    topk_iou,
    topk_iou_mask,
)
from bench.saliency.overlay import save_overlay_png
from bench.saliency.suite import SaliencyConfig, stability_suite, summarize

__all__ = [
    "METHODS",
    "SaliencyConfig",
    "compute_maps",
    "deletion_auc",
    "energy_pointing",
    "insertion_auc",
    "max_sensitivity",
    "pointing_game",
    "save_overlay_png",
    "seed_consistency",
    "spearman",
    "ssim",
    "stability_suite",
    "summarize",
    "topk_iou",
    "topk_iou_mask",
]
