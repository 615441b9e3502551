"""Seed consistency: mean pairwise Spearman of the stored maps of cells that differ only in seed.

The stage evaluates every cell of a data set on the same images, so the maps of such cells are
comparable image by image. Cross-cell, hence computed from the store after a run rather than in
a cell: `seed_consistency_table` gives one row per group and saliency method, and
`with_seed_consistency` adds the `saliency_seed_spearman` columns to `ResultsStore.rows()`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import numpy as np

from bench.saliency.columns import column_name, describe
from bench.saliency.mapfile import StoredMaps, load_maps
from bench.saliency.metrics import seed_consistency
from bench.store import CellRecord, ResultsStore

COLUMN = "seed_spearman"
_NOT_IDENTITY = ("seed", "parent_id")


def _group_key(record: CellRecord) -> str:
    """The record's config without what differs between seeds (its seed, its parent)."""
    return json.dumps({k: v for k, v in record.config.items() if k not in _NOT_IDENTITY},
                      sort_keys=True)


def _groups(store: ResultsStore) -> list[list[tuple[CellRecord, StoredMaps]]]:
    groups: dict[str, list[tuple[CellRecord, StoredMaps]]] = defaultdict(list)
    for record in store.records():
        if record.status != "ok" or "saliency" not in (record.metrics or {}):
            continue
        stored = load_maps(store.artifact_dir(record.cell_id))
        if stored is not None:
            groups[_group_key(record)].append((record, stored))
    return [sorted(g, key=lambda rs: rs[0].seed) for g in groups.values() if len(g) > 1]


def seed_consistency_table(store: ResultsStore) -> list[dict[str, Any]]:
    """One row per group of cells differing only in seed (two or more) and saliency method:
    identity, seeds, cell ids, and mean/std/n/values of the per-image mean pairwise Spearman."""
    rows = []
    for group in _groups(store):
        first, ref = group[0]
        if any(not np.array_equal(s.index, ref.index) for _, s in group):
            continue
        for method in first.metrics["saliency"]["methods"]:
            stacks = [s.maps[method] for _, s in group if method in s.maps]
            if len(stacks) != len(group):
                continue
            rows.append({
                "dataset": first.dataset, "backbone": first.backbone, "method": first.method,
                "w_bits": first.w_bits, "a_bits": first.a_bits, "saliency_method": method,
                "primary": method == first.metrics["saliency"]["primary"],
                "seeds": [r.seed for r, _ in group], "cell_ids": [r.cell_id for r, _ in group],
                f"saliency_{COLUMN}": describe(seed_consistency(stacks)),
            })
    return rows


def seed_consistency_columns(store: ResultsStore) -> dict[str, dict[str, float | None]]:
    """cell id -> `saliency_seed_spearman` (primary method) and `saliency_seed_spearman/<m>`;
    every cell of a group gets its group's value."""
    columns: dict[str, dict[str, float | None]] = defaultdict(dict)
    for row in seed_consistency_table(store):
        mean = row[f"saliency_{COLUMN}"]["mean"]
        for cell_id in row["cell_ids"]:
            if row["primary"]:
                columns[cell_id][column_name(COLUMN)] = mean
            columns[cell_id][column_name(COLUMN, row["saliency_method"])] = mean
    return dict(columns)


def with_seed_consistency(rows: list[dict[str, Any]], store: ResultsStore
                          ) -> list[dict[str, Any]]:
    """`ResultsStore.rows()` plus the seed-consistency columns for every row that has saliency
    columns (None where the cell has no other seed in the store)."""
    by_cell = seed_consistency_columns(store)
    prefix = column_name("deletion_auc", "")
    out = []
    for row in rows:
        methods = [k[len(prefix):] for k in row if k.startswith(prefix)]
        if not methods:
            out.append(row)
            continue
        empty = {column_name(COLUMN): None,
                 **{column_name(COLUMN, m): None for m in methods}}
        out.append({**row, **empty, **by_cell.get(row["cell_id"], {})})
    return out
