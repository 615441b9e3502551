"""Split manifests cached by data config and source fingerprint, so that a grid is planned
without decoding or generating a single image (and without importing torch).

A cell's id needs its data set's split-manifest hash; a dry run and the cost estimate need the
numbers of images and classes. Each preparation of a data set writes these three under the hash
of its `DataConfig` and its source fingerprint (`DatasetInfo.source`: the generator's options and
code, a folder's content hashes (data/filehash.py), an archive's size, mtime, SHA-256). Planning
reads them back when the fingerprint still matches; any change to the data changes the
fingerprint, so the entry is simply not found and the data set is prepared again. A data set
with no source fingerprint is always prepared.

A cached entry is only ever trusted for planning: before a cell runs, its data set is prepared
and the plan rebuilt if the manifest differs (`bench.runner.plan.confirm_data`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.config import DataConfig
from bench.data.base import cache_dir, get_dataset
from bench.errors import DataError

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1
MANIFEST_DIR = "manifests"
COUNTS = ("num_images", "num_classes", "n_train", "n_val", "n_test")


@dataclass(frozen=True)
class DataSummary:
    """What a plan needs of a prepared data set: its split manifest's hash, its numbers of
    images and classes, and the sizes of the split's parts (for estimates)."""

    manifest_hash: str
    num_images: int
    num_classes: int
    n_train: int
    n_val: int
    n_test: int


def source_fingerprint(cfg: DataConfig) -> str | None:
    """The data set's source fingerprint; None if it has none or cannot tell without preparing
    it. DataError (from the data set) when the data is not available here."""
    source = get_dataset(cfg.name).source
    return None if source is None else source(cfg, cache_dir())


def entry_path(cfg: DataConfig, source: str) -> Path:
    payload = {"version": MANIFEST_VERSION, "data": cfg.model_dump(mode="json"),
               "source": source}
    key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]
    return cache_dir() / MANIFEST_DIR / f"{cfg.name}-{key}.json"


def read_summary(cfg: DataConfig, source: str) -> DataSummary | None:
    """The cached summary of ``cfg`` at ``source``, or None (never cached, or unreadable)."""
    path = entry_path(cfg, source)
    try:
        raw: dict[str, Any] = json.loads(path.read_text())
        return DataSummary(str(raw["manifest_hash"]),
                           *(int(raw[k]) for k in COUNTS))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("ignoring unreadable split-manifest cache entry %s: %s", path, err)
        return None


def write_summary(cfg: DataConfig, source: str, summary: DataSummary) -> None:
    """Record ``summary`` for ``cfg`` at ``source`` (atomically: concurrent writers are safe);
    a cache that cannot be written is skipped with a warning."""
    path = entry_path(cfg, source)
    body = {"manifest_hash": summary.manifest_hash,
            **{k: getattr(summary, k) for k in COUNTS},
            "data": cfg.model_dump(mode="json"), "source": source}
    partial = path.with_name(f"{path.name}.{os.getpid()}.part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(body, indent=1, sort_keys=True))
        partial.replace(path)
    except OSError as err:   # a read-only or full cache only costs planning time
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        log.warning("cannot write the split-manifest cache entry %s (%s); the data set will "
                    "be prepared again to plan the next run", path, err.strerror or err)


def cached_summary(cfg: DataConfig) -> DataSummary | None:
    """The summary planning may use without preparing ``cfg``, or None. DataError when the
    data set's source says the data is not available here."""
    source = source_fingerprint(cfg)
    return None if source is None else read_summary(cfg, source)


def remember(cfg: DataConfig, summary: DataSummary, source: str | None = None) -> None:
    """Cache a freshly prepared data set's summary (no-op without a source fingerprint).
    ``source``: the fingerprint taken before preparing, if there was one."""
    if source is None:
        try:
            source = source_fingerprint(cfg)
        except DataError:
            return
    if source is not None:
        write_summary(cfg, source, summary)
