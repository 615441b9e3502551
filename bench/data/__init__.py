"""Data sets by name, prepared once per run into tensors plus a pinned split."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.config import DataConfig
from bench.data import imagefolder, kvasir, synthetic  # noqa: F401  (register data sets)
from bench.data.base import DATASETS, ImageSet, cache_dir, get_dataset
from bench.data.splits import Split, make_split

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@dataclass(frozen=True)
class PreparedData:
    config: DataConfig
    images: ImageSet
    split: Split

    @property
    def num_classes(self) -> int:
        return len(self.images.classes)


def prepare(cfg: DataConfig) -> PreparedData:
    """Load (or reuse the cached decoding of) a data set and split it."""
    images = get_dataset(cfg.name).load(cfg, cache_dir())
    split = make_split(images.labels.numpy(), images.ids, cfg.split, images.fingerprint,
                       images.classes)
    return PreparedData(cfg, images, split)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float, ImageNet mean/std (what torchvision backbones expect)."""
    return (images.float() / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


def batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int,
            generator: torch.Generator | None = None):
    """Normalised (x, y) mini-batches; shuffled by `generator` when one is given."""
    order = (torch.randperm(len(labels), generator=generator) if generator is not None
             else torch.arange(len(labels)))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        yield normalize(images[idx]), labels[idx]


__all__ = ["DATASETS", "ImageSet", "PreparedData", "Split", "batches", "get_dataset",
           "normalize", "prepare"]
