"""Stratified, seeded train/val/test splits and the manifest that pins them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split

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


def make_split(labels: np.ndarray, ids: list[str], cfg: SplitConfig, data_fingerprint: str
               ) -> Split:
    """Stratified split: each class keeps its proportion in train, val and test."""
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
        raise DataError(f"cannot make a stratified split of {len(labels)} images: {err}") from err
    parts = {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}
    manifest = {
        "data_fingerprint": data_fingerprint,
        "split": cfg.model_dump(),
        **{name: [ids[i] for i in idx] for name, idx in parts.items()},
    }
    blob = json.dumps(manifest, sort_keys=True).encode()
    return Split(parts["train"], parts["val"], parts["test"], manifest,
                 hashlib.sha256(blob).hexdigest()[:16])
