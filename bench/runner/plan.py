"""Expand a grid into cells, each FP32 parent before the cells that start from it.

Planning needs no training stack: method, backbone and stage declarations import without torch,
and each data set's split manifest comes from the manifest cache when its source is unchanged
(bench/data/manifests.py). Data is prepared only for cells that will run (`confirm_data`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from bench.config import (
    FP32_BITS,
    MAX_SEEDS,
    BackboneConfig,
    CellConfig,
    DataConfig,
    GridConfig,
    MethodEntry,
)
from bench.data import PlannedData, get_dataset, plan_data
from bench.errors import ConfigError, DataError
from bench.models import BACKBONES, get_backbone
from bench.registry import Registry, matching
from bench.runner.stages import validate_stage_settings
from methods import METHODS, get_method
from methods.base import FP32

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Cell:
    cell_id: str
    config: CellConfig
    data_key: str

    @property
    def label(self) -> str:
        c = self.config
        bits = "" if c.w_bits == FP32_BITS else f" W{c.w_bits}A{c.a_bits}"
        return f"{c.dataset.name}/{c.backbone.name}/{c.method}{bits}/seed {c.seed}"


@dataclass(frozen=True)
class MissingData:
    """A data set a dry run could not prepare here: cells are listed, their ids are not final."""

    config: DataConfig
    reason: str
    num_images: int | None
    num_classes: int | None = None


@dataclass
class Plan:
    grid: GridConfig
    cells: list[Cell] = field(default_factory=list)
    data: dict[str, PlannedData | MissingData] = field(default_factory=dict)

    def add(self, cell: Cell) -> None:
        if all(c.cell_id != cell.cell_id for c in self.cells):
            self.cells.append(cell)


@dataclass(frozen=True)
class Overrides:
    """What `bench run` flags change in a grid before it is expanded."""

    dataset: str | None = None
    data_root: str | None = None
    backbones: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    seeds: int | None = None
    epochs: int | None = None


def apply_overrides(grid: GridConfig, o: Overrides) -> GridConfig:
    changes: dict = {}
    datasets = grid.datasets
    if o.dataset is not None:
        matching = [d for d in datasets if d.name == o.dataset]
        datasets = matching or [DataConfig(name=o.dataset, image_size=d.image_size, split=d.split)
                                for d in datasets[:1]]
    if o.data_root is not None:
        datasets = [d.model_copy(update={"root": o.data_root}) for d in datasets]
    changes["datasets"] = datasets
    if o.backbones:
        changes["backbones"] = _chosen("backbone", BACKBONES, o.backbones, grid.backbones,
                                       grid.name)
    if o.methods:
        changes["methods"] = _chosen("method", METHODS, o.methods, grid.methods, grid.name)
    if o.seeds is not None:
        if o.seeds > MAX_SEEDS:
            raise ConfigError(f"--seeds {o.seeds:,}: at most {MAX_SEEDS:,} seeds")
        changes["seeds"] = list(range(o.seeds))
    if o.epochs is not None:
        changes["train"] = grid.train.model_copy(update={"epochs": o.epochs})
        changes["finetune"] = grid.finetune.model_copy(update={"epochs": o.epochs})
    return grid.model_copy(update=changes)


def _chosen(kind: str, registry: Registry[Any], patterns: tuple[str, ...],
            entries: list[Any], grid: str) -> list[Any]:
    """The grid's entries whose name matches a pattern (`--backbone 'mobilenet*'`): each pattern
    must name something registered and match something in the grid."""
    registry.select(patterns)
    known = [e.name for e in entries]
    missing = [p for p in patterns if not matching([p], known)]
    if missing:
        raise ConfigError(f"{kind} {', '.join(missing)} is not in grid '{grid}' "
                          f"(its {kind}s: {', '.join(known)})")
    chosen = set(matching(patterns, known))
    return [e for e in entries if e.name in chosen]


def validate_names(grid: GridConfig) -> None:
    """Fail early, before any data is prepared, on unknown names or bad parameters."""
    for i, d in enumerate(grid.datasets):
        get_dataset(d.name).parse_options(d.options, f"grid '{grid.name}' datasets.{i}:")
    for b in grid.backbones:
        get_backbone(b.name)
    for m in grid.methods:
        get_method(m.name).parse_params(m.params)
    validate_stage_settings(grid.stages)


def _cell(grid: GridConfig, data: PlannedData | MissingData, data_key: str,
          backbone: BackboneConfig,
          entry: MethodEntry, bits: tuple[int, int], seed: int, parent_id: str | None) -> Cell:
    config = CellConfig(
        dataset=data.config, backbone=backbone, method=entry.name,
        params=get_method(entry.name).parse_params(entry.params).model_dump(mode="json"),
        w_bits=bits[0], a_bits=bits[1], seed=seed,
        train=grid.finetune if parent_id else grid.train,
        calibration_batches=grid.calibration_batches, parent_id=parent_id,
        split_manifest=data_key, stages=validate_stage_settings(grid.stages))
    return Cell(config.cell_id(), config, data_key)


def _plan_data(cfg: DataConfig, allow_missing: bool,
               known: list[PlannedData]) -> tuple[str, PlannedData | MissingData]:
    try:
        data = next((k for k in known if k.config == cfg), None) \
            or plan_data(cfg, prepare_absent=not allow_missing)
    except DataError as err:
        if not allow_missing:
            raise
        nominal = get_dataset(cfg.name).nominal_images or cfg.options.get("num_images")
        return f"unprepared-{cfg.name}", MissingData(cfg, str(err), nominal)
    return data.manifest_hash, data


def build_plan(grid: GridConfig, allow_missing_data: bool = False,
               known: list[PlannedData] | None = None) -> Plan:
    """All cells of a grid, parents first; plans (and validates) each data set once: from its
    cached split manifest, else by preparing it (``known``: data sets already prepared).

    With allow_missing_data (dry runs), a data set that is not available here still yields
    its cells, under a placeholder split manifest; it is not downloaded.
    """
    validate_names(grid)
    plan = Plan(grid)
    for data_cfg in grid.datasets:
        key, data = _plan_data(data_cfg, allow_missing_data, known or [])
        plan.data[key] = data
        for backbone in grid.backbones:
            for seed in grid.seeds:
                parent_entry = next((m for m in grid.methods if m.name == FP32),
                                    MethodEntry(name=FP32))
                parent = _cell(grid, data, key, backbone, parent_entry, (FP32_BITS, FP32_BITS),
                               seed, None)
                for entry in grid.methods:
                    method = get_method(entry.name)
                    params = method.parse_params(entry.params)
                    needs_parent = method.starts_from_parent(params)
                    if needs_parent:
                        plan.add(parent)
                    bit_pairs = entry.bits if method.quantized else [(FP32_BITS, FP32_BITS)]
                    for bits in dict.fromkeys(tuple(b) for b in bit_pairs):
                        plan.add(_cell(grid, data, key, backbone, entry, bits, seed,
                                       parent.cell_id if needs_parent else None))
    return plan


def confirm_data(plan: Plan, done: set[str]) -> Plan:
    """The plan with every data set that a cell to run uses prepared. If a cached split
    manifest turns out stale (a change its source fingerprint missed, e.g. another
    scikit-learn's split), the plan is rebuilt from the prepared data, so that cell ids are
    always those of the data the cells train on."""
    prepared: list[PlannedData] = []
    stale = False
    for key, data in plan.data.items():
        if isinstance(data, PlannedData) and any(c.data_key == key and c.cell_id not in done
                                                 for c in plan.cells):
            fresh = PlannedData.of(data.load())
            prepared.append(fresh)
            if fresh.manifest_hash != key:
                stale = True
                log.warning("the cached split manifest of data set '%s' was stale (%s, now %s);"
                            " planning again", data.config.name, key, fresh.manifest_hash)
    return build_plan(plan.grid, known=prepared) if stale else plan
