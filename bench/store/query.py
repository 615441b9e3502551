"""Filters over a store's records, shared by export, the server's API, compare and pull."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import Select, or_, select

from bench.errors import UsageError
from bench.registry import has_wildcards, matching, pattern_regex
from bench.store.records import CellData
from bench.store.schema import CellRecord, MeasurementRecord

MAX_PATTERNS = 100
"""The most wildcard patterns one name filter may hold: each is one SQL expression, and
SQLite refuses a query deeper than 1,000."""


class RecordFilter(BaseModel):
    """Which records to take; an empty list means any. Cell fields filter measurements
    through their cell; `device` and `profile` filter measurements (and cells by `device`
    only when `cells_by_device`). Data sets, backbones and methods may be shell-wildcard
    patterns (`mobilenet*`)."""

    model_config = ConfigDict(extra="forbid")

    datasets: list[str] = Field(default_factory=list)
    backbones: list[str] = Field(default_factory=list)
    methods: list[str] = Field(default_factory=list)
    w_bits: list[int] = Field(default_factory=list)
    a_bits: list[int] = Field(default_factory=list)
    cell_ids: list[str] = Field(default_factory=list)
    devices: list[str] = Field(default_factory=list)
    profiles: list[str] = Field(default_factory=list)
    status: list[str] = Field(default_factory=list)
    cells_by_device: bool = False

    @field_validator("*", mode="before")
    @classmethod
    def _none_is_any(cls, value: Any) -> Any:
        """None (an option not given on the command line) means any, like an empty list."""
        return [] if value is None else value

    @model_validator(mode="after")
    def _patterns_are_valid(self) -> RecordFilter:
        """UsageError naming an invalid pattern, or a filter of more than MAX_PATTERNS."""
        for what, patterns in (("dataset", self.datasets), ("backbone", self.backbones),
                               ("method", self.methods)):
            wild = [p for p in patterns if has_wildcards(p)]
            if len(wild) > MAX_PATTERNS:
                raise UsageError(f"{what}: {len(wild)} wildcard patterns; at most "
                                 f"{MAX_PATTERNS} are allowed")
            for pattern in wild:
                pattern_regex(pattern)
        return self

    def _cell_conditions(self) -> list[Any]:
        names = ((CellRecord.dataset, self.datasets), (CellRecord.backbone, self.backbones),
                 (CellRecord.method, self.methods))
        pairs = ((CellRecord.w_bits, self.w_bits), (CellRecord.a_bits, self.a_bits),
                 (CellRecord.cell_id, self.cell_ids))
        return [*(_name_condition(column, patterns) for column, patterns in names if patterns),
                *(column.in_(values) for column, values in pairs if values)]

    def matches(self, cell: CellData) -> bool:
        """Whether ``cell`` passes the cell fields and `status` (as `cells()` selects)."""
        names = ((cell.dataset, self.datasets), (cell.backbone, self.backbones),
                 (cell.method, self.methods))
        pairs = ((cell.w_bits, self.w_bits), (cell.a_bits, self.a_bits),
                 (cell.cell_id, self.cell_ids), (cell.status, self.status))
        if self.cells_by_device and self.devices:
            pairs += ((cell.device, self.devices),)
        return (all(not patterns or matching(patterns, [name]) for name, patterns in names)
                and all(not values or value in values for value, values in pairs))

    def cells(self) -> Select[tuple[CellRecord]]:
        """Cells matching the cell fields (and `status`; and `devices` if cells_by_device)."""
        conditions = self._cell_conditions()
        if self.status:
            conditions.append(CellRecord.status.in_(self.status))
        if self.cells_by_device and self.devices:
            conditions.append(CellRecord.device.in_(self.devices))
        return select(CellRecord).where(*conditions).order_by(CellRecord.cell_id)

    def measurements(self) -> Select[tuple[MeasurementRecord]]:
        """Measurements matching device/profile/status whose cell matches the cell fields."""
        pairs = ((MeasurementRecord.device, self.devices),
                 (MeasurementRecord.profile, self.profiles),
                 (MeasurementRecord.status, self.status))
        conditions = [column.in_(values) for column, values in pairs if values]
        cell_conditions = self._cell_conditions()
        if cell_conditions:
            conditions.append(MeasurementRecord.cell_id.in_(
                select(CellRecord.cell_id).where(*cell_conditions)))
        return select(MeasurementRecord).where(*conditions).order_by(MeasurementRecord.id)


def _name_condition(column: Any, patterns: list[str]) -> Any:
    """SQL for "column matches one of the shell-wildcard patterns" (case-sensitive on every
    backend, as `matching` is)."""
    plain = [p for p in patterns if not has_wildcards(p)]
    wild = [column.regexp_match(pattern_regex(p)) for p in patterns if has_wildcards(p)]
    return or_(*([column.in_(plain)] if plain else []), *wild)
