"""Stratified, seeded train/val/test splits and the manifest that pins them."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.config import SplitConfig
from bench.errors import DataError


@dataclass(frozen=True)
class Split:
    """Sorted index arrays of the three parts and the hash of their manifest."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    manifest: dict[str, Any]
    manifest_hash: str


MIN_PER_CLASS = 2


def check_split_sizes(labels: np.ndarray, cfg: SplitConfig,
                      classes: Sequence[str] | None = None) -> None:
    """DataError naming the class or the split key when a stratified split cannot be made:
    a class with fewer than two images, or a part with fewer images than there are classes."""
    counts = np.bincount(labels, minlength=len(classes or ()))
    names = list(classes) if classes else [f"class {i}" for i in range(len(counts))]
    for name, count in zip(names, counts, strict=False):
        if count < MIN_PER_CLASS:
            raise DataError(f"class {name!r} has {count} image(s); a stratified split needs at "
                            f"least {MIN_PER_CLASS} images per class")
    n, k = len(labels), len(counts)
    n_test = math.ceil(cfg.test * n)
    n_val = math.ceil(cfg.val / (1.0 - cfg.test) * (n - n_test)) if cfg.val > 0 else 0
    parts = [("split.test", cfg.test, n_test)] + ([("split.val", cfg.val, n_val)]
                                                  if cfg.val > 0 else [])
    for key, value, part in parts:
        if part < k:
            raise DataError(f"{key} = {value:g} of {n} images gives {part} {key[6:]} images, "
                            f"fewer than the {k} classes; raise {key} or use more images")
    if n - n_test - n_val < k:
        raise DataError(f"split.val = {cfg.val:g} and split.test = {cfg.test:g} leave "
                        f"{n - n_test - n_val} of {n} images to train on, fewer than the {k} "
                        "classes; lower them or use more images")


def make_split(labels: np.ndarray, ids: list[str], cfg: SplitConfig, data_fingerprint: str,
               classes: Sequence[str] | None = None) -> Split:
    """Stratified split: each class keeps its proportion in train, val and test. ``classes``
    names the classes in errors."""
    from sklearn.model_selection import train_test_split

    check_split_sizes(labels, cfg, classes)
    index = np.arange(len(labels))
    try:
        rest, test = train_test_split(index, test_size=cfg.test, stratify=labels,
                                      random_state=cfg.seed)
        if cfg.val > 0:
            val_share = cfg.val / (1.0 - cfg.test)
            train, val = train_test_split(rest, test_size=val_share, stratify=labels[rest],
                                          random_state=cfg.seed)
        else:
            train, val = rest, np.array([], dtype=int)
    except ValueError as err:
        raise DataError(f"cannot make a stratified split of {len(labels)} images with "
                        f"split.val = {cfg.val:g} and split.test = {cfg.test:g}: {err}") from err
    parts = {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}
    manifest = {
        "data_fingerprint": data_fingerprint,
        "split": cfg.model_dump(),
        **{name: [ids[i] for i in idx] for name, idx in parts.items()},
    }
    blob = json.dumps(manifest, sort_keys=True).encode()
    return Split(parts["train"], parts["val"], parts["test"], manifest,
                 hashlib.sha256(blob).hexdigest()[:16])
