"""Data sets by name, prepared once per run into tensors plus a pinned split.

Importing this package (the registry, the options, the split-manifest cache) needs no torch: a
grid is planned, and a fully cached run finishes, without the training stack.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bench.config import DataConfig
from bench.data.base import DATASETS, ImageSet, cache_dir, get_dataset
from bench.data.manifests import DataSummary, cached_summary, remember, source_fingerprint
from bench.data.splits import Split, make_split
from bench.errors import DataError

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PreparedData:
    config: DataConfig
    images: ImageSet
    split: Split

    @property
    def num_classes(self) -> int:
        return len(self.images.classes)

    @property
    def summary(self) -> DataSummary:
        split = self.split
        return DataSummary(split.manifest_hash, len(self.images.ids), self.num_classes,
                           len(split.train), len(split.val), len(split.test))


def prepare(cfg: DataConfig) -> PreparedData:
    """Load (or reuse the cached decoding of) a data set and split it; its split manifest is
    cached for planning (bench/data/manifests.py)."""
    try:
        source = source_fingerprint(cfg)
    except DataError:
        source = None     # e.g. not downloaded yet: the loader fetches it or says why not
    images = get_dataset(cfg.name).load(cfg, cache_dir())
    split = make_split(images.labels.numpy(), images.ids, cfg.split, images.fingerprint,
                       images.classes)
    data = PreparedData(cfg, images, split)
    remember(cfg, data.summary, source)
    return data


@dataclass
class PlannedData:
    """A data set as a plan knows it: its split manifest's hash and its counts (images,
    classes, train/val/test images), read from the manifest cache (nothing decoded) or from
    preparing it; `load` prepares it on first use."""

    config: DataConfig
    summary: DataSummary
    _prepared: PreparedData | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, data: PreparedData) -> PlannedData:
        return cls(data.config, data.summary, data)

    @property
    def manifest_hash(self) -> str:
        return self.summary.manifest_hash

    @property
    def num_images(self) -> int:
        return self.summary.num_images

    @property
    def num_classes(self) -> int:
        return self.summary.num_classes

    @property
    def loaded(self) -> bool:
        return self._prepared is not None

    def load(self) -> PreparedData:
        if self._prepared is None:
            self._prepared = prepare(self.config)
        return self._prepared


def plan_data(cfg: DataConfig, prepare_absent: bool = True) -> PlannedData:
    """The data set for a plan: from the manifest cache when its source is unchanged, else
    prepared now. Data the source fingerprint says is absent is prepared (which downloads it,
    or raises the loader's DataError) only if ``prepare_absent``; else that DataError."""
    try:
        summary = cached_summary(cfg)
    except DataError:
        if not prepare_absent:
            raise
        summary = None
    if summary is None:
        return PlannedData.of(prepare(cfg))
    return PlannedData(cfg, summary)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float, ImageNet mean/std (what torchvision backbones expect), on
    the images' device."""
    import torch

    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int,
            generator: torch.Generator | None = None):
    """Normalised (x, y) mini-batches; shuffled by `generator` when one is given."""
    import torch

    order = (torch.randperm(len(labels), generator=generator) if generator is not None
             else torch.arange(len(labels)))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        yield normalize(images[idx]), labels[idx]


__all__ = ["DATASETS", "ImageSet", "PlannedData", "PreparedData", "Split", "batches",
           "get_dataset", "normalize", "plan_data", "prepare"]
