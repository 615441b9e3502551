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
from bench.registry import Registry

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


def _load(place: str) -> Any:
    module, _, name = place.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Stage:
    """A stage's declaration. runs: "module:function" of its StageFn, imported when the stage
    first runs; columns: the `columns` its result holds, as names or as the "module:function"
    of ``(settings) -> list[str]`` when they depend on the settings."""

    name: str
    Settings: type[BaseModel]
    runs: str
    columns: tuple[str, ...] | str = ()

    @property
    def run(self) -> StageFn:
        return _load(self.runs)

    def declared_columns(self, settings: BaseModel) -> list[str]:
        if isinstance(self.columns, str):
            return list(_load(self.columns)(settings))
        return list(self.columns)


STAGE_MODULES: tuple[str, ...] = ("bench.deploy.settings", "bench.saliency.settings",
                                  "bench.robustness.settings")

STAGES: Registry[Stage] = Registry("stage", "stages", STAGE_MODULES)
"""Stages by name: the built-in ones and plugins' (entry points `medq_bench.stages`)."""


def register_stage(name: str, settings: type[BaseModel], runs: str,
                   columns: tuple[str, ...] | str = ()) -> Stage:
    """Declare stage ``name``: its settings model, where its run function is
    (``"module:function"``) and the result columns it returns (see `Stage`)."""
    return STAGES.register(name, Stage(name, settings, runs, columns))


def load_stages() -> None:
    """Import the modules that declare stages (light: their run functions load lazily)."""
    STAGES.load()


def validate_stage_settings(raw: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Validate a grid's `stages` block; returns the settings with defaults filled in."""
    resolved = {}
    for name, settings in raw.items():
        stage = STAGES.get(name)
        try:
            model = stage.Settings.model_validate(settings or {})
        except ValidationError as err:
            raise ConfigError(f"stage '{name}': {format_validation_error(err)}") from err
        resolved[name] = model.model_dump(mode="json")
    return resolved
