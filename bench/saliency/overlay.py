"""Small side-by-side PNG of an image with its FP32 and this cell's saliency overlays.

Drawn with Pillow (no figure machinery: a few milliseconds per image): each panel is scaled to
`panel` pixels (nearest neighbour) under a title strip; maps are min-max scaled to [0, 1],
coloured with matplotlib's "jet" colormap and blended over the image with alpha 0.5; the sheet
is stored as a 256-colour palette PNG (a few kB).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image, ImageDraw

from bench.saliency.metrics import normalise01

TITLE_PX = 14
ALPHA = 0.5


def _to_hwc(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """(C, H, W) or (H, W, C) or (H, W) image -> (H, W, 3) min-max scaled to [0, 1]."""
    img = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = img.transpose(1, 2, 0)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    img = normalise01(img[None])[0]
    return np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img


def _panel(rgb: np.ndarray, title: str, size: int) -> Image.Image:
    pixels = Image.fromarray((rgb * 255).round().astype(np.uint8))
    panel = Image.new("RGB", (size, size + TITLE_PX), "white")
    panel.paste(pixels.resize((size, size), Image.Resampling.NEAREST), (0, TITLE_PX))
    ImageDraw.Draw(panel).text((2, 1), title, fill="black")
    return panel


def save_overlay_png(
    image: np.ndarray | torch.Tensor,
    fp32_map: np.ndarray | None,
    cell_map: np.ndarray,
    path: str | Path,
    *,
    titles: tuple[str, str] = ("FP32", "cell"),
    panel: int = 96,
) -> Path:
    """Write image | image+FP32 map | image+cell map; without an FP32 map (an FP32 cell, or no
    reference) only image | image+cell map."""
    img = _to_hwc(image)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    jet = colormaps["jet"]
    panels = [_panel(img, "input", panel)]
    for sal, title in zip((fp32_map, cell_map), titles, strict=True):
        if sal is not None:
            heat = jet(normalise01(np.asarray(sal, dtype=np.float64)[None])[0])[..., :3]
            panels.append(_panel((1 - ALPHA) * img + ALPHA * heat, title, panel))
    sheet = Image.new("RGB", (sum(p.width for p in panels), panels[0].height), "white")
    for i, p in enumerate(panels):
        sheet.paste(p, (i * panel, 0))
    sheet.quantize(256).save(path, optimize=True)
    return path
