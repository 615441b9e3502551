"""Small side-by-side PNG of an image with its FP32 and quantised-cell saliency overlays."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from bench.saliency.metrics import normalise01


def _to_hwc(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """(C, H, W) or (H, W, C) or (H, W) image, min-max scaled to [0, 1] for display."""
    img = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = img.transpose(1, 2, 0)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    return normalise01(img[None])[0]


def save_overlay_png(
    image: np.ndarray | torch.Tensor,
    fp32_map: np.ndarray,
    cell_map: np.ndarray,
    path: str | Path,
    *,
    titles: tuple[str, str] = ("FP32", "cell"),
    dpi: int = 80,
) -> Path:
    """Write image | image+FP32 map | image+cell map (maps scaled to [0,1], jet, alpha 0.5)."""
    img = _to_hwc(image)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(6, 2.2))
    try:
        cmap = None if img.ndim == 3 else "gray"
        axes[0].imshow(img, cmap=cmap)
        axes[0].set_title("input", fontsize=8)
        for ax, sal, title in zip(axes[1:], (fp32_map, cell_map), titles, strict=True):
            ax.imshow(img, cmap=cmap)
            ax.imshow(normalise01(np.asarray(sal)[None])[0], cmap="jet", alpha=0.5,
                      vmin=0.0, vmax=1.0)
            ax.set_title(title, fontsize=8)
        for ax in axes:
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)
    return path
