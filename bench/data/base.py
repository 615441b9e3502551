"""The in-memory form every data set is prepared into, and the data-set registry."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.config import DataConfig
from bench.errors import ConfigError


@dataclass(frozen=True)
class ImageSet:
    """Decoded, resized images of one data set.

    images: uint8 (N, 3, H, W); labels: int64 (N,); masks: bool (N, H, W) lesion masks, or None;
    ids: a stable identifier per image (relative path, or generator index); fingerprint: a hash
    of the content, so the split manifest changes when the data does.
    """

    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor | None
    classes: list[str]
    ids: list[str]
    fingerprint: str

    def __post_init__(self) -> None:
        n = len(self.ids)
        if self.images.shape[0] != n or self.labels.shape[0] != n:
            raise ValueError("images, labels and ids must have the same length")


Loader = Callable[[DataConfig, Path], ImageSet]


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    load: Loader
    description: str
    has_masks: bool
    nominal_images: int | None = None


DATASETS: dict[str, DatasetInfo] = {}


def register_dataset(name: str, description: str, has_masks: bool = False,
                     nominal_images: int | None = None) -> Callable[[Loader], Loader]:
    """Register a loader; nominal_images lets a dry run estimate cost without the data."""
    def add(load: Loader) -> Loader:
        DATASETS[name] = DatasetInfo(name, load, description, has_masks, nominal_images)
        return load
    return add


def get_dataset(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise ConfigError(f"unknown data set '{name}'; known: {', '.join(sorted(DATASETS))}"
                          ) from None


def cache_dir() -> Path:
    """Where prepared data sets and downloads are cached (MEDQ_CACHE, else ~/.cache)."""
    root = os.environ.get("MEDQ_CACHE") or Path.home() / ".cache" / "medq-bench"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def tensor_digest(*tensors: torch.Tensor | None) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        if t is not None:
            digest.update(t.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
