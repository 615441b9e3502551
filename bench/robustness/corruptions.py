"""Image corruptions at 5 severities, seeded: imaging artefacts an endoscope produces.

Six are ImageNet-C's (Hendrycks & Dietterich 2019, "Benchmarking neural network robustness to
common corruptions and perturbations", ICLR), from `imagecorruptions` (Michaelis et al. 2019),
the packaging of Hendrycks' own code for images of any size: its functions and severity
parameters are used unchanged (the 32-pixel minimum of its `corrupt` wrapper is not applied, as
these six work on any size; their pixel-sized parameters were set for 224-pixel ImageNet
images, so on small images the blurs are stronger than on ImageNet). Chosen over albumentations
because its severities are the ones mCE is defined on. Specular glare, which neither library
has, is defined here (`specular_glare`). Severity 0 is the identity.

Each corrupted image is a function of (image, corruption, severity, seed, image key) only:
`imagecorruptions` draws from numpy's global generator, which is seeded per image and restored
afterwards.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import version

import numpy as np

from bench.robustness.settings import CORRUPTIONS

Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]
"""(H, W, 3) uint8 image, severity 1..5, generator -> corrupted (H, W, 3) uint8 image."""

GLARE = [(1, 0.05), (2, 0.07), (3, 0.09), (4, 0.11), (6, 0.13)]
"""Per severity: specular highlights an image and their radius as a fraction of the image side."""

GENERATOR_VERSION = 1
"""Bumped whenever what a corruption produces changes (part of the cache key)."""


def library_version() -> str:
    return f"imagecorruptions-{version('imagecorruptions')}-v{GENERATOR_VERSION}"


@contextmanager
def seeded_global_numpy(seed: int) -> Iterator[None]:
    """numpy's global generator seeded for the block and restored afterwards."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _library(name: str) -> Corruption:
    def apply(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
        from PIL import Image
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from imagecorruptions import corruptions as ic
        with seeded_global_numpy(int(rng.integers(2**32))):
            out = getattr(ic, name)(Image.fromarray(image), severity)
        return np.uint8(np.asarray(out))    # truncation, as imagecorruptions.corrupt does
    return apply


def specular_glare(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Specular highlights of an endoscope's light on wet mucosa: saturated white spots with a
    Gaussian fall-off at random places, screen-blended (``x + (1 - x) * g``, g the spots'
    intensity in [0, 1]) so that they saturate to white at their centres; GLARE gives their
    number and radius per severity."""
    count, radius = GLARE[severity - 1]
    h, w = image.shape[:2]
    x = image.astype(np.float64) / 255.0
    yy, xx = np.mgrid[0:h, 0:w]
    glare = np.zeros((h, w))
    for _ in range(count):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        r = radius * min(h, w) * rng.uniform(0.7, 1.3)
        aspect = rng.uniform(0.5, 1.0)
        d2 = ((yy - cy) / (r * aspect)) ** 2 + ((xx - cx) / r) ** 2
        glare = np.maximum(glare, np.clip(1.5 * np.exp(-d2 / 2.0), 0.0, 1.0))
    out = x + (1.0 - x) * glare[..., None]
    return np.uint8(np.clip(out, 0.0, 1.0) * 255)


CORRUPTION_FNS: dict[str, Corruption] = {
    **{name: _library(name) for name in CORRUPTIONS if name != "specular_glare"},
    "specular_glare": specular_glare,
}


def corrupt_image(image: np.ndarray, name: str, severity: int, seed: int, key: int
                  ) -> np.ndarray:
    """``image`` (H, W, 3) uint8 under corruption ``name`` at ``severity`` (0: a copy of it),
    drawn from a generator seeded by (seed, corruption, severity, key)."""
    if severity == 0:
        return image.copy()
    if name not in CORRUPTION_FNS:
        raise ValueError(f"unknown corruption {name!r}; known: {list(CORRUPTION_FNS)}")
    if not 1 <= severity <= 5:
        raise ValueError(f"severity must be 0..5, got {severity}")
    rng = np.random.default_rng([seed, CORRUPTIONS.index(name), severity, key])
    out = CORRUPTION_FNS[name](np.ascontiguousarray(image), severity, rng)
    if out.shape != image.shape or out.dtype != np.uint8:
        raise RuntimeError(f"{name} returned {out.dtype} {out.shape} for {image.shape}")
    return out


def corrupt_batch(images: np.ndarray, name: str, severity: int, seed: int,
                  keys: np.ndarray) -> np.ndarray:
    """uint8 (N, 3, H, W) images corrupted one by one; ``keys`` (N,): each image's key (its
    data-set index, so an image is corrupted the same whatever else is in the batch)."""
    out = [corrupt_image(np.transpose(img, (1, 2, 0)), name, severity, seed, int(k))
           for img, k in zip(images, keys, strict=True)]
    return np.stack([np.transpose(o, (2, 0, 1)) for o in out]) if out else images.copy()
