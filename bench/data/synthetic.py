"""Deterministic endoscopy-like images with class-specific lesions and their ground-truth masks.

Each image is a reddish mucosa-like background (smooth colour field, folds and fine noise) with
one lesion of random size and place. The class decides the lesion's shape, colour and texture;
the lesion's pixels form the mask that saliency localisation is scored against. Image i of a
seed is always the same, whatever the image count or the order of generation.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from bench.config import DataConfig
from bench.data.base import (
    ImageSet,
    check_memory,
    options_of,
    register_dataset,
    tensor_digest,
)

SHAPES = ("disk", "square", "ring", "cross", "triangle", "ellipse")
ID_BYTES = 100
"""Memory of one image's id string and list slot, for the memory estimate."""


class SyntheticOptions(BaseModel):
    """`options` of the synthetic data set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_classes: int = Field(3, ge=2, description="Lesion classes (at least 2: something to "
                                                   "classify)")
    num_images: int = Field(480, ge=1)
    seed: int = Field(0, ge=0, le=2**63 - 1)


def memory_need(num_images: int, size: int) -> int:
    """Bytes that generating ``num_images`` images of ``size`` x ``size`` takes at its peak:
    images, masks, labels and ids, plus one image tensor's copy while it is hashed."""
    return num_images * (2 * 3 * size * size + size * size + 8 + ID_BYTES)


def _shape_mask(shape: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float,
                r: float, angle: float) -> np.ndarray:
    dy, dx = yy - cy, xx - cx
    ry = dy * np.cos(angle) - dx * np.sin(angle)
    rx = dy * np.sin(angle) + dx * np.cos(angle)
    if shape == "disk":
        return dy**2 + dx**2 <= r**2
    if shape == "square":
        return (np.abs(ry) <= r * 0.85) & (np.abs(rx) <= r * 0.85)
    if shape == "ring":
        d2 = dy**2 + dx**2
        return (d2 <= r**2) & (d2 >= (0.55 * r) ** 2)
    if shape == "cross":
        arm = r * 0.35
        return ((np.abs(ry) <= arm) & (np.abs(rx) <= r)) | ((np.abs(rx) <= arm) & (np.abs(ry) <= r))
    if shape == "triangle":
        return (ry <= r * 0.6) & (ry >= -r + 1.7 * np.abs(rx))
    return (ry / r) ** 2 + (rx / (0.55 * r)) ** 2 <= 1.0


def _class_style(label: int) -> tuple[str, np.ndarray, float]:
    """Shape, RGB colour and stripe frequency of a class; classes beyond the shapes vary texture."""
    shape = SHAPES[label % len(SHAPES)]
    hue = (label * 0.61803) % 1.0
    colour = np.array([0.55 + 0.4 * np.cos(2 * np.pi * hue), 0.45 + 0.35 * np.sin(2 * np.pi * hue),
                       0.35 + 0.3 * np.cos(2 * np.pi * (hue + 0.33))]).clip(0.05, 0.95)
    frequency = 0.0 if label < len(SHAPES) else 0.6 + 0.5 * (label // len(SHAPES))
    return shape, colour, frequency


def generate_image(seed: int, index: int, label: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One (H, W, 3) uint8 image and its (H, W) bool lesion mask."""
    rng = np.random.default_rng([seed, index])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    base = np.array([0.78, 0.36, 0.30]) + rng.normal(0, 0.04, 3)
    field = sum(rng.uniform(0.02, 0.06) * np.sin(2 * np.pi * (rng.uniform(0.5, 2.5) * yy
                + rng.uniform(0.5, 2.5) * xx) + rng.uniform(0, 2 * np.pi)) for _ in range(3))
    folds = 0.08 * np.exp(-((np.sin(2 * np.pi * (rng.uniform(1, 3) * yy + xx * rng.uniform(0, 1))
                                    + rng.uniform(0, 6))) ** 2) / 0.05)
    img = base[None, None, :] + (field - folds)[..., None] + rng.normal(0, 0.025, (size, size, 3))
    shape, colour, frequency = _class_style(label)
    radius = rng.uniform(0.12, 0.22)
    cy, cx = rng.uniform(radius, 1 - radius, 2)
    mask = _shape_mask(shape, yy, xx, cy, cx, radius, rng.uniform(0, np.pi))
    if not mask.any():
        mask[int(cy * size), int(cx * size)] = True
    texture = (0.75 + 0.25 * np.sin(2 * np.pi * frequency * size * yy) if frequency
               else np.ones_like(yy))
    alpha = rng.uniform(0.55, 0.85)
    lesion = colour[None, None, :] * texture[..., None] + rng.normal(0, 0.03, (size, size, 3))
    img = np.where(mask[..., None], (1 - alpha) * img + alpha * lesion, img)
    return (img.clip(0, 1) * 255).round().astype(np.uint8), mask


def generator_source(cfg: DataConfig, cache: Path) -> str:
    """The images are a function of the options (in the config), this generator's code and
    NumPy's random streams: a hash of this file and NumPy's version."""
    code = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    return f"synthetic:{code}:numpy-{np.__version__}"


@register_dataset("synthetic", "Deterministic endoscopy-like lesions with masks (options: "
                  "num_classes, num_images, seed)", has_masks=True, options=SyntheticOptions,
                  source=generator_source)
def load_synthetic(cfg: DataConfig, cache: Path) -> ImageSet:
    import torch

    opts: SyntheticOptions = options_of(cfg)
    n, k, seed, size = opts.num_images, opts.num_classes, opts.seed, cfg.image_size
    check_memory(memory_need(n, size), f"data set 'synthetic': options.num_images = {n} at "
                                       f"image_size {size}")
    labels = np.arange(n) % k
    images = np.empty((n, 3, size, size), np.uint8)
    masks = np.empty((n, size, size), bool)
    for i in range(n):
        img, mask = generate_image(seed, i, int(labels[i]), size)
        images[i], masks[i] = img.transpose(2, 0, 1), mask
    ids = [f"synthetic-{seed}-{i}" for i in range(n)]
    images_t, labels_t, masks_t = (torch.from_numpy(images), torch.from_numpy(labels).long(),
                                   torch.from_numpy(masks))
    return ImageSet(images_t, labels_t, masks_t, [f"class_{c}" for c in range(k)], ids,
                    tensor_digest(images_t, labels_t, masks_t))
