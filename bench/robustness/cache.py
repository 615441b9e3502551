"""Corrupted test images, made once per data set, split, image subset, corruption, severity and
seed and reused by every cell: cached beside the prepared data (``<cache>/corrupted/``), each
file with the SHA-256 of its images beside it, checked on every load (a file that fails the
check is made again)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from bench.robustness.corruptions import corrupt_batch, library_version

log = logging.getLogger(__name__)


def cache_key(fingerprint: str, manifest_hash: str, index: np.ndarray, images: np.ndarray,
              name: str, severity: int, seed: int) -> str:
    """What the corrupted images depend on, hashed: the data (its fingerprint and split), the
    image subset, the clean images themselves (bytes, shape and dtype: one data set at two image
    sizes shares fingerprint and index but not images), the corruption, its severity, the seed
    and the generator's version."""
    clean = np.asarray(images)
    blob = json.dumps([fingerprint, manifest_hash, hashlib.sha256(
        np.asarray(index, dtype=np.int64).tobytes()).hexdigest(), digest(clean),
        list(clean.shape), str(clean.dtype), name, severity, seed, library_version()])
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def digest(images: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()


def _load(path: Path) -> np.ndarray | None:
    check = path.with_suffix(".sha256")
    if not path.exists() or not check.exists():
        return None
    try:
        with np.load(path) as f:
            images = f["images"]
    except (OSError, ValueError, KeyError):
        images = None
    if images is None or digest(images) != check.read_text().strip():
        log.warning("corrupted-image cache %s fails its hash check: making it again", path)
        return None
    return images


def _save(path: Path, images: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, images=images)
    check = path.with_suffix(".sha256")
    tmp_check = check.with_name(f"{check.name}.{os.getpid()}.tmp")
    tmp_check.write_text(digest(images))
    os.replace(tmp, path)
    os.replace(tmp_check, check)


def corrupted_images(root: Path, images: np.ndarray, index: np.ndarray, fingerprint: str,
                     manifest_hash: str, name: str, severity: int, seed: int) -> np.ndarray:
    """uint8 (N, 3, H, W) `images` (the data set's images at `index`) under corruption `name` at
    `severity`, from the cache under `root` or made and cached."""
    key = cache_key(fingerprint, manifest_hash, index, images, name, severity, seed)
    path = root / "corrupted" / f"{key}.npz"
    cached = _load(path)
    if cached is not None:
        return cached
    made = corrupt_batch(images, name, severity, seed, np.asarray(index))
    _save(path, made)
    return made
