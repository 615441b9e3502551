"""Timings of a cell's model on this machine, as the cell would run it.

A probe builds the cell's backbone and prepares it with the cell's method (quantise, calibrate)
on random data; that preparation, timed once, is the cell's setup. Every other timing is the
median of REPEATS timed calls after one warm-up call, at the largest batch up to the one the
cell uses whose call takes at most PROBE_CALL_S (a bigger model is timed on fewer images and
scaled per image; a training step is extrapolated to the cell's batch along a line through
two batches instead, as its fixed cost is large). A stage is timed on a fresh copy of the
model each time, as a cell runs it on its own new model. Run a probe inside `cell_threads()`:
it is timed on the threads cells get.
"""

from __future__ import annotations

import copy
import functools
import statistics
import time
from collections.abc import Callable, Hashable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from pydantic import BaseModel
from torch import nn

from bench.config import BackboneConfig
from bench.data import ImageSet, PreparedData, Split, normalize
from bench.models import build_model
from bench.runner.estimate.costs import REPEATS, Timings
from bench.runner.plan import Cell
from bench.runner.stages import STAGES, StageInput, load_stages
from bench.train import make_optimizer, predict
from methods import MethodContext, get_method

PROBE_CALL_S = 0.5
"""How long one timed call may take at most; its batch shrinks (down to 1 or 2) to fit."""
PREDICT_BATCH = 256
"""`bench.train.predict`'s batch size."""
SETUP_IMAGES = 4
"""Images the timed setup calibrates on."""
T = TypeVar("T")


def median_seconds(call: Callable[[], object], repeats: int = REPEATS,
                   sync: Callable[[], None] = lambda: None) -> float:
    """Median wall time of ``repeats`` calls after one warm-up call."""
    call()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def fitted_batch(call: Callable[[int], object], target: int, smallest: int = 1,
                 sync: Callable[[], None] = lambda: None) -> int:
    """The largest batch up to ``target`` (at least ``smallest``) whose call takes at most
    PROBE_CALL_S: from the smallest batch (after a warm-up call), doubled while a call at
    twice the batch, scaled linearly from the last one, would still fit."""
    batch = min(smallest, target)
    call(batch)
    seconds = _seconds(call, batch, sync)
    while batch < target:
        bigger = min(target, 2 * batch)
        if seconds * bigger / batch > PROBE_CALL_S:
            break
        batch = bigger
        seconds = _seconds(call, batch, sync)
    return batch


def _seconds(call: Callable[[int], object], batch: int, sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    call(batch)
    sync()
    return time.perf_counter() - start


def per_image_seconds(call: Callable[[int], object], target: int, smallest: int = 1,
                      sync: Callable[[], None] = lambda: None) -> float:
    """Seconds per image of ``call(batch)``, timed at a fitted batch (see fitted_batch)."""
    batch = fitted_batch(call, target, smallest, sync)
    return median_seconds(lambda: call(batch), sync=sync) / batch


def call_seconds(call: Callable[[int], object], target: int, smallest: int = 1,
                 sync: Callable[[], None] = lambda: None) -> float:
    """Seconds of one ``call(target)``: timed at ``target`` when it fits PROBE_CALL_S, else
    extrapolated along the line through the medians at two batches (the fitted batch and half
    of it, or twice the smallest), so that a call's fixed cost (a training step's optimiser
    step and weight gradients, which dominate a small batch) is counted once, not per image."""
    batch = fitted_batch(call, target, smallest, sync)
    if batch >= target:
        return median_seconds(lambda: call(target), sync=sync)
    low, high = (batch, min(target, 2 * batch)) if batch // 2 < smallest else (batch // 2, batch)
    at_low = median_seconds(lambda: call(low), sync=sync)
    at_high = median_seconds(lambda: call(high), sync=sync)
    slope = (at_high - at_low) / (high - low)
    if slope <= 0:   # noise swamped the difference: scale per image
        return at_high * target / high
    return at_high + slope * (target - high)


class CellModelProbe:
    """The model of one kind of cell (backbone, image size, method and its parameters,
    batch size and optimiser), prepared as the cell prepares it, on random data."""

    def __init__(self, cell: Cell, num_classes: int, torch_device: torch.device,
                 memo: dict[Hashable, Any], workdir: Path) -> None:
        cfg = cell.config
        self.cell, self.num_classes, self._torch_device = cell, num_classes, torch_device
        self.backbone, self.image_size = cfg.backbone.name, cfg.dataset.image_size
        self.torch_device = str(torch_device)
        self._memo, self._workdir = memo, workdir
        self._method = get_method(cfg.method)
        self._params = self._method.parse_params(cfg.params)
        self.quantized = self._method.quantized
        self._generator = torch.Generator().manual_seed(0)
        self._models: dict[str, nn.Module] = {}
        start = time.perf_counter()
        self.model = self._prepare(min(cfg.train.batch_size, SETUP_IMAGES))
        self._sync()
        self.setup_s = time.perf_counter() - start
        self.setup_images = min(cfg.train.batch_size, SETUP_IMAGES) if self.quantized else 0
        self._timed: dict[tuple[str, int, str], float] = {}

    def _build(self) -> nn.Module:
        model = build_model(BackboneConfig(name=self.backbone), self.num_classes)
        return model.to(self._torch_device)

    def _prepare(self, calibration_images: int) -> nn.Module:
        cfg = self.cell.config
        example = self._inputs(2).to(self._torch_device)

        def calibration() -> Iterator[torch.Tensor]:
            yield self._inputs(calibration_images).to(self._torch_device)

        ctx = MethodContext(w_bits=cfg.w_bits, a_bits=cfg.a_bits, build_backbone=self._build,
                            load_parent=self._build, fit=_no_fit,
                            calibration_batches=calibration, example_input=example)
        model = self._build() if not self._method.starts_from_parent(self._params) \
            else ctx.load_parent()  # type: ignore[misc]
        return self._method.prepare(model, ctx, self._params)

    def _sync(self) -> None:
        if self._torch_device.type == "cuda":
            torch.cuda.synchronize(self._torch_device)

    def images(self, n: int) -> torch.Tensor:
        """n random uint8 images of the cell's size."""
        size = self.image_size
        return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8,
                             generator=self._generator)

    def _inputs(self, n: int) -> torch.Tensor:
        return normalize(self.images(n))

    def _labels(self, n: int) -> torch.Tensor:
        return torch.randint(0, self.num_classes, (n,), generator=self._generator)

    def _model_on(self, torch_device: str | None) -> tuple[nn.Module, torch.device]:
        target = torch.device(torch_device) if torch_device is not None else self._torch_device
        if target == self._torch_device:
            return self.model, target
        if str(target) not in self._models:
            self._models[str(target)] = copy.deepcopy(self.model).to(target)
        return self._models[str(target)], target

    def _per_image(self, what: str, batch: int, torch_device: str | None,
                   call: Callable[[nn.Module, torch.device, int], object], smallest: int = 1
                   ) -> float:
        key = (what, batch, str(torch_device or self._torch_device))
        if key not in self._timed:
            model, target = self._model_on(torch_device)

            def sync() -> None:
                if target.type == "cuda":
                    torch.cuda.synchronize(target)

            self._timed[key] = per_image_seconds(lambda b: call(model, target, b), batch,
                                                 smallest, sync)
        return self._timed[key]

    def step_s(self) -> float:
        """One training step (objective, penalty, backward, optimiser step) at the cell's
        batch size; 0 for a method that does not train."""
        if not self._method.trains(self._params):
            return 0.0
        batch_size = self.cell.config.train.batch_size
        objective = self._method.objective(self._params)
        penalty = self._method.penalty(self._params)
        optimizer = make_optimizer([p for p in self.model.parameters() if p.requires_grad],
                                   self.cell.config.train)

        def step(model: nn.Module, torch_device: torch.device, batch: int) -> None:
            x, y = self._inputs(batch).to(torch_device), self._labels(batch).to(torch_device)
            model.train()
            loss, _ = objective.loss(model, x, y)
            if penalty is not None:
                loss = loss + penalty(model)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        seconds = call_seconds(lambda b: step(self.model, self._torch_device, b), batch_size,
                               smallest=2, sync=self._sync)
        self.model.eval()
        return seconds

    def forward_image_s(self, batch: int, torch_device: str | None = None) -> float:
        def forward(model: nn.Module, target: torch.device, b: int) -> None:
            model.eval()
            with torch.no_grad():
                model(self._inputs(b).to(target))

        return self._per_image("forward", batch, torch_device, forward)

    def gradient_image_s(self, batch: int, torch_device: str | None = None) -> float:
        def gradient(model: nn.Module, target: torch.device, b: int) -> None:
            model.eval()
            x = self._inputs(b).to(target).requires_grad_()
            y = self._labels(b).to(target)
            model(x).gather(1, y[:, None]).sum().backward()
            model.zero_grad(set_to_none=True)

        return self._per_image("gradient", batch, torch_device, gradient)

    def per_image_s(self, fn: Callable[[Any], object], batch: int) -> float:
        images = self.images(batch)
        return per_image_seconds(lambda b: fn(images[:b]), batch)

    def stage_seconds(self, name: str, settings: BaseModel, n_images: int) -> tuple[float, Path]:
        load_stages()
        folder = self._workdir / f"{name}-{len(list(self._workdir.iterdir()))}"
        folder.mkdir()
        inp = self._stage_input(settings, n_images, folder)
        times = []
        for _ in range(1 + REPEATS):   # a warm-up, then REPEATS; each on a fresh copy of the
            fresh = replace(inp, model=copy.deepcopy(self.model).eval())   # model, as a cell's
            start = time.perf_counter()
            STAGES[name].run(fresh)
            self._sync()
            times.append(time.perf_counter() - start)
        return statistics.median(times[1:]), folder

    def _stage_input(self, settings: BaseModel, n: int, folder: Path) -> StageInput:
        """The stage's input for a cell whose test split is n random images (no store: a
        stage that reads the store cannot be run by a probe)."""
        images = self.images(n)
        classes = [f"class{i}" for i in range(self.num_classes)]
        imageset = ImageSet(images, self._labels(n), None, classes, [str(i) for i in range(n)],
                            "estimate-probe")
        empty = np.arange(0)
        split = Split(empty, empty, np.arange(n), {}, "estimate-probe")
        data = PreparedData(self.cell.config.dataset, imageset, split)
        logits = predict(self.model, images, self._torch_device)
        return StageInput(self.cell, data, self.model.eval(), self.quantized, logits, folder,
                          None, self._torch_device, settings)  # type: ignore[arg-type]

    def shared(self, key: Hashable, compute: Callable[[], T]) -> T:
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]  # type: ignore[no-any-return]

    @functools.cached_property
    def _timings(self) -> Timings:
        return Timings(setup_s=self.setup_s, setup_images=self.setup_images,
                       step_s=self.step_s(), forward_image_s=self.forward_image_s(PREDICT_BATCH))

    def timings(self) -> Timings:
        """The cell's own timings (measured once a probe)."""
        return self._timings


def _no_fit(*_: object) -> dict[str, Any]:
    raise AssertionError("a probe prepares the model; it never trains it with fit")
