"""Estimate a plan's compute time from training-step costs measured on this machine.

For each distinct (backbone, image size, method) the method's real step (its objective, its
quantised graph, forward + backward + optimiser step) is timed on random data at a small batch
and scaled linearly to the grid's batch size; a cell's cost is its step count times that.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from bench.config import BackboneConfig
from bench.models import build_model
from bench.runner.plan import Cell, Plan
from bench.train import make_optimizer
from methods import get_method

PROBE_BATCH = 4
DEFAULT_CLASSES = 8


@dataclass(frozen=True)
class EstimateRow:
    backbone: str
    method: str
    image_size: int
    cells: int
    step_seconds: float
    steps_per_cell: int

    @property
    def seconds(self) -> float:
        return self.cells * self.steps_per_cell * self.step_seconds


def step_seconds(cell: Cell, num_classes: int, repeats: int = 1) -> float:
    """Seconds of one of the cell's training steps (a forward pass when the method only
    calibrates), at the cell's batch size, scaled from a PROBE_BATCH measurement."""
    cfg = cell.config
    method = get_method(cfg.method)
    params = method.parse_params(cfg.params)
    batch = min(cfg.train.batch_size, PROBE_BATCH)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, cfg.dataset.image_size, cfg.dataset.image_size, generator=generator)
    y = torch.randint(0, num_classes, (batch,), generator=generator)
    model = build_model(BackboneConfig(name=cfg.backbone.name), num_classes)
    if method.quantized:
        model = method.build_quantized(model, cfg.w_bits, cfg.a_bits, params, x[:2])
    model.train()
    objective = method.objective(params)
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], cfg.train)
    penalty = method.penalty(params)

    def step() -> None:
        if not method.trains(params):
            with torch.no_grad():
                model(x)
            return
        loss, _ = objective.loss(model, x, y)
        if penalty is not None:
            loss = loss + penalty(model)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats * cfg.train.batch_size / batch


def steps_per_cell(cell: Cell, num_images: int) -> int:
    cfg = cell.config
    method = get_method(cfg.method)
    if not method.trains(method.parse_params(cfg.params)):
        return cfg.calibration_batches
    split = cfg.dataset.split
    n_train = max(1, round(num_images * (1.0 - split.val - split.test)))
    return cfg.train.epochs * math.ceil(n_train / cfg.train.batch_size)


def estimate(plan: Plan, cell_ids: set[str] | None = None) -> list[EstimateRow]:
    """Per (backbone, method, image size): cells to run, measured step cost, steps per cell."""
    groups: dict[tuple[str, str, int, int], list[Cell]] = {}
    for cell in plan.cells:
        if cell_ids is None or cell.cell_id in cell_ids:
            c = cell.config
            key = (c.backbone.name, c.method, c.dataset.image_size, steps_for(plan, cell))
            groups.setdefault(key, []).append(cell)
    rows = []
    for (backbone, method, size, steps), cells in groups.items():
        classes = plan.data[cells[0].data_key].num_classes or DEFAULT_CLASSES
        rows.append(EstimateRow(backbone, method, size, len(cells),
                                step_seconds(cells[0], classes), steps))
    return rows


def steps_for(plan: Plan, cell: Cell) -> int:
    data = plan.data[cell.data_key]
    n = data.num_images
    return steps_per_cell(cell, n or 0)
