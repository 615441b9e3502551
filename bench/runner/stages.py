"""Post-training stages of a cell (deployment, saliency, ...), registered by name.

A stage runs after the method has trained the cell's model, inside the cell: its artifacts go
into the cell's staging folder and its results into the cell's record, so it is cached, resumed
and failed exactly like the training it follows. A stage returns a JSON-able dict stored under
`metrics[<stage name>]`; the flat `columns` entry of that dict (if any) becomes columns of
`bench results`. Settings come from the grid's `stages: {<name>: {...}}` and are part of the
cell's identity; a stage whose name is absent from the grid's `stages` does not run.

A stage is declared in a light module (pydantic only: grids are planned, and cell ids computed,
without torch) that holds its settings model and registers it with the place of its run
function, `"module:function"`; that module may import the training stack and is imported only
when the stage runs. E.g. bench/deploy/settings.py and bench/deploy/stage.py.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from bench.config import format_validation_error
from bench.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from bench.data import PreparedData
    from bench.store import ResultsStore


@dataclass(frozen=True)
class StageInput:
    """What a stage may use: the trained model and the cell's context."""

    cell: Any                      # bench.runner.plan.Cell
    data: PreparedData
    model: nn.Module               # trained, eval mode, on `torch_device` (fake-quant if quantised)
    quantized: bool
    test_logits: torch.Tensor      # the torch model's logits on the test split
    folder: Path                   # the cell's staging folder: write artifacts here
    store: ResultsStore            # read-only use: e.g. the FP32 parent's artifacts
    torch_device: torch.device     # where the cell trained (`bench run --device`)
    settings: BaseModel            # the stage's validated settings


StageFn = Callable[[StageInput], dict[str, Any]]


@dataclass(frozen=True)
class Stage:
    name: str
    Settings: type[BaseModel]
    runs: str      # "module:function" of the StageFn, imported when the stage first runs

    @property
    def run(self) -> StageFn:
        module, _, function = self.runs.partition(":")
        return getattr(importlib.import_module(module), function)


STAGES: dict[str, Stage] = {}


def register_stage(name: str, settings: type[BaseModel], runs: str) -> None:
    """Declare stage ``name``: its settings model and where its run function is
    (``"module:function"``)."""
    if name in STAGES and STAGES[name] != Stage(name, settings, runs):
        raise ValueError(f"stage '{name}' registered twice")
    STAGES[name] = Stage(name, settings, runs)


def load_stages() -> None:
    """Import the modules that declare stages (light: their run functions load lazily)."""
    for module in STAGE_MODULES:
        importlib.import_module(module)


STAGE_MODULES: tuple[str, ...] = ("bench.deploy.settings", "bench.saliency.settings")


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
