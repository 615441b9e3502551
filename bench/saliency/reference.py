"""The FP32 maps a cell's maps are compared with: its parent's, or for a float cell trained from
scratch (SGT) the FP32 cell of the same data, split, backbone, seed, training config and saliency
settings (so that the two differ only in the method)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.saliency.mapfile import MAPS_FILE, load_maps
from bench.store import ResultsStore
from methods.base import FP32


@dataclass(frozen=True)
class Reference:
    """Stored FP32 maps of the same images, or why there are none (`skipped`)."""

    cell_id: str | None = None
    relation: str | None = None          # "parent" or "fp32_same_seed"
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    skipped: str | None = None

    def describe(self) -> dict[str, Any]:
        return {"cell_id": self.cell_id, "relation": self.relation, "skipped": self.skipped}


def same_seed_fp32(store: ResultsStore, config: Any) -> str | None:
    """Id of the latest ok FP32 cell with the same data, split, backbone, seed, training config
    and saliency settings."""
    want = config.model_dump(mode="json")
    keys = ("dataset", "backbone", "seed", "split_manifest", "train")
    matches = [r for r in store.records()
               if r.status == "ok" and r.method == FP32
               and all(r.config.get(k) == want[k] for k in keys)
               and (r.config.get("stages") or {}).get("saliency") == want["stages"].get("saliency")]
    if not matches:
        return None
    return max(matches, key=lambda r: (r.finished_at, r.cell_id)).cell_id


def find_reference(store: ResultsStore, config: Any, index: np.ndarray) -> Reference:
    """The reference maps for a cell with CellConfig `config` evaluated on images `index`."""
    if config.parent_id:
        ref_id, relation = config.parent_id, "parent"
    elif config.method == FP32:
        return Reference(skipped="FP32 cell: it is the reference")
    else:
        ref_id, relation = same_seed_fp32(store, config), "fp32_same_seed"
        if ref_id is None:
            return Reference(skipped="no parent, and no FP32 cell of the same data, backbone, "
                                     "seed, training config and saliency settings in the "
                                     "store")
    record = store.get(ref_id)
    if record is not None and MAPS_FILE in (record.artifact_hashes or {}):
        store.checked_file(record, MAPS_FILE)   # a changed reference fails the cell, named
    stored = load_maps(store.artifact_dir(ref_id))
    if stored is None:
        return Reference(ref_id, relation, skipped=f"reference cell {ref_id} has no saliency maps")
    if not np.array_equal(stored.index, index):
        return Reference(ref_id, relation,
                         skipped=f"reference cell {ref_id} evaluated other images")
    return Reference(ref_id, relation, stored.maps)
