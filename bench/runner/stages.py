"""Post-training stages of a cell (deployment, saliency, ...), registered by name.

A stage runs after the method has trained the cell's model, inside the cell: its artifacts go
into the cell's staging folder and its results into the cell's record, so it is cached, resumed
and failed exactly like the training it follows. A stage returns a JSON-able dict stored under
`metrics[<stage name>]`; the flat `columns` entry of that dict (if any) becomes columns of
`bench results`. Settings come from the grid's `stages: {<name>: {...}}` and are part of the
cell's identity; a stage whose name is absent from the grid's `stages` does not run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ValidationError
from torch import nn

from bench.config import format_validation_error
from bench.data import PreparedData
from bench.errors import ConfigError
from bench.store import ResultsStore


@dataclass(frozen=True)
class StageInput:
    """What a stage may use: the trained model and the cell's context."""

    cell: Any                      # bench.runner.plan.Cell
    data: PreparedData
    model: nn.Module               # trained model, eval mode, on `device` (fake-quant if quantised)
    quantized: bool
    test_logits: torch.Tensor      # the torch model's logits on the test split
    folder: Path                   # the cell's staging folder: write artifacts here
    store: ResultsStore            # read-only use: e.g. the FP32 parent's artifacts
    device: torch.device
    settings: BaseModel            # the stage's validated settings


StageFn = Callable[[StageInput], dict[str, Any]]


@dataclass(frozen=True)
class Stage:
    name: str
    run: StageFn
    Settings: type[BaseModel]


STAGES: dict[str, Stage] = {}


def register_stage(name: str, settings: type[BaseModel]) -> Callable[[StageFn], StageFn]:
    def add(fn: StageFn) -> StageFn:
        STAGES[name] = Stage(name, fn, settings)
        return fn
    return add


def load_stages() -> None:
    """Import the modules that register stages (kept lazy: they pull in heavy libraries)."""
    import importlib

    for module in STAGE_MODULES:
        importlib.import_module(module)


STAGE_MODULES: tuple[str, ...] = ("bench.deploy.stage", "bench.saliency.stage")


def validate_stage_settings(raw: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Validate a grid's `stages` block; returns the settings with defaults filled in."""
    load_stages()
    resolved = {}
    for name, settings in raw.items():
        if name not in STAGES:
            raise ConfigError(f"unknown stage '{name}'; known: {', '.join(sorted(STAGES))}")
        try:
            model = STAGES[name].Settings.model_validate(settings or {})
        except ValidationError as err:
            raise ConfigError(f"stage '{name}': {format_validation_error(err)}") from err
        resolved[name] = model.model_dump(mode="json")
    return resolved
