"""Each post-training stage's own cost term, registered by the stage's name.

A stage's cost function turns its settings, the cell's shape (how many images each split has)
and a probe of the cell's model (timings measured here, on demand) into seconds per cell. It
lives next to its stage (`bench/<stage>/cost.py`) so that whoever changes what a stage
computes changes its cost with it. A stage that has none is listed as not estimated.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from bench.runner.estimate.costs import CellShape

T = TypeVar("T")


class ModelProbe(Protocol):
    """Timings of one kind of cell's model on the assumed torch device (see probe.py). Every
    timing is the median of at least 3 timed calls after a warm-up call; batches shrink to
    keep a call short, and seconds per image are scaled from them."""

    backbone: str
    image_size: int
    quantized: bool
    torch_device: str

    def forward_image_s(self, batch: int, torch_device: str | None = None) -> float:
        """One image through the model in eval mode, without gradients, in batches of
        ``batch``; ``torch_device`` (default: the cell's) is where the stage runs the model."""

    def gradient_image_s(self, batch: int, torch_device: str | None = None) -> float:
        """One image's gradient of its target logit with respect to the input (a saliency
        map's forward and backward pass), eval mode, in batches of ``batch``."""

    def per_image_s(self, fn: Callable[[Any], object], batch: int) -> float:
        """``fn(images)`` per image, for uint8 (N, 3, H, W) images of the cell's size."""

    def stage_seconds(self, name: str, settings: BaseModel, n_images: int) -> tuple[float, Path]:
        """The stage itself run on the probe's model with a test split of ``n_images``
        random images, and the folder holding what its last run wrote."""

    def shared(self, key: Hashable, compute: Callable[[], T]) -> T:
        """``compute()`` once per ``key`` for the whole estimate (e.g. one export timing
        serves every method with the same graph)."""


StageCostFn = Callable[[Any, CellShape, ModelProbe], float]
STAGE_COSTS: dict[str, StageCostFn] = {}
STAGE_COST_MODULES: tuple[str, ...] = ("bench.deploy.cost", "bench.saliency.cost",
                                       "bench.robustness.cost")


def register_stage_cost(name: str) -> Callable[[StageCostFn], StageCostFn]:
    """Decorator: ``fn(settings, shape, probe) -> seconds`` is stage ``name``'s cost a cell."""
    def add(fn: StageCostFn) -> StageCostFn:
        STAGE_COSTS[name] = fn
        return fn
    return add


def load_stage_costs() -> None:
    """Import the modules that register stage costs (lazily: they import their stages)."""
    for module in STAGE_COST_MODULES:
        importlib.import_module(module)
