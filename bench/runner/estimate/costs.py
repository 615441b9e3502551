"""The estimate's arithmetic: a cell's cost from measured timings, and a plan's wall time on
an executor that runs several cells at once. No timing happens here (see probe.py).

A cell costs its setup (build the backbone, quantise and calibrate it), its training steps, its
evaluation (the validation split after every epoch, the test split once) and one term per
post-training stage, which the stage's own cost function gives (stage_costs.py). A plan's wall
time is the time to start (imports, data preparation), then to start the workers (executors
whose cells run in other processes), then the schedule the driver follows: cells submitted in
plan order, each once the cells it waits for are done (executors/order.py), at most
`concurrency` at a time.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from bench.runner.executors.order import Waits

TRAINING = "training"
SETUP = "setup"
EVALUATION = "evaluation"


REPEATS = 3
"""Timed calls of every probe measurement (after one warm-up call); their median counts."""

@dataclass(frozen=True)
class CellShape:
    """What a cell's cost depends on besides its model: the images each part of it sees."""

    n_train: int
    n_val: int
    n_test: int
    num_classes: int
    image_size: int
    epochs: int
    batch_size: int
    calibration_batches: int
    trains: bool
    quantized: bool
    method: str = ""
    """The cell's method's name (a stage may do more for some methods)."""

    @property
    def steps(self) -> int:
        """Training steps: every epoch walks the training split in batches (the last one
        partial); a method that only calibrates takes none."""
        if not self.trains:
            return 0
        return self.epochs * math.ceil(self.n_train / self.batch_size)

    @property
    def calibration_images(self) -> int:
        return self.calibration_batches * self.batch_size if self.quantized else 0

    @property
    def predicted_images(self) -> int:
        """Images through `predict`: the validation split after each epoch, the test split."""
        return (self.epochs * self.n_val if self.trains else 0) + self.n_test


@dataclass(frozen=True)
class Timings:
    """Measured seconds of one kind of cell's model, on the assumed device and threads.

    setup_s: build the backbone and prepare it (quantise, calibrate on `setup_images`);
    step_s: one training step at the cell's batch size; forward_image_s: one image through
    the model in eval mode, at predict's batch size.
    """

    setup_s: float
    setup_images: int
    step_s: float
    forward_image_s: float


@dataclass(frozen=True)
class CellCost:
    """A cell's estimated seconds, by term: setup, training, evaluation, then each stage."""

    cell_id: str
    terms: dict[str, float]

    @property
    def seconds(self) -> float:
        return sum(self.terms.values())


def cell_terms(shape: CellShape, timings: Timings, stages: Mapping[str, float]
               ) -> dict[str, float]:
    """A cell's cost terms; calibration images beyond those the setup timing saw cost a
    forward pass each."""
    extra_calibration = max(0, shape.calibration_images - timings.setup_images)
    return {
        SETUP: timings.setup_s + extra_calibration * timings.forward_image_s,
        TRAINING: shape.steps * timings.step_s,
        EVALUATION: shape.predicted_images * timings.forward_image_s,
        **stages,
    }


def makespan(order: Sequence[str], seconds: Mapping[str, float], waits: Mapping[str, Waits],
             done: set[str], concurrency: int) -> float:
    """Wall time of running the cells of ``order`` not in ``done`` as the driver does: in
    order, each once its `needs` are done and its `follows` finished, ``concurrency`` at a
    time. A cell waiting on what never finishes is left out (the driver skips it too)."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    finished = set(done)
    pending = [c for c in order if c not in finished]
    running: list[tuple[float, str]] = []
    now = 0.0
    while pending or running:
        unfinished = set(pending) | {cell for _, cell in running}
        for cell in list(pending):
            if len(running) >= concurrency:
                break
            w = waits.get(cell, Waits())
            if w.needs <= finished and not (w.follows & unfinished):
                pending.remove(cell)
                heapq.heappush(running, (now + seconds[cell], cell))
        if not running:
            break
        now, cell = heapq.heappop(running)
        finished.add(cell)
    return now


@dataclass(frozen=True)
class Assumptions:
    """Where the estimate assumes the cells run."""

    torch_device: str
    threads_per_cell: int
    concurrency: int
    executor: str
    note: str = ""

    def describe(self) -> str:
        at_once = "one cell at a time" if self.concurrency == 1 else \
            f"{self.concurrency} cells at a time"
        text = (f"device {self.torch_device}, {self.threads_per_cell} torch thread"
                f"{'s' if self.threads_per_cell != 1 else ''} a cell, {at_once} "
                f"(executor {self.executor})")
        return f"{text}; {self.note}" if self.note else text


@dataclass(frozen=True)
class EstimateRow:
    """The cells of one (backbone, method, image size, steps per cell) and their costs."""

    backbone: str
    method: str
    image_size: int
    cells: int
    step_seconds: float
    steps_per_cell: int
    terms_per_cell: dict[str, float] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        """Compute of these cells, one after another."""
        return self.cells * sum(self.terms_per_cell.values())


@dataclass(frozen=True)
class Estimate:
    rows: list[EstimateRow]
    cells: list[CellCost]
    assumptions: Assumptions
    startup_s: float = 0.0
    workers_start_s: float = 0.0
    schedule_s: float = 0.0
    not_estimated: tuple[str, ...] = ()   # stages without a cost function
    from_cache: int = 0                   # cells whose terms were measured by an earlier call

    @property
    def compute_s(self) -> float:
        """Every cell's cost added up: the wall time of running them one at a time."""
        return sum(c.seconds for c in self.cells)

    @property
    def total_s(self) -> float:
        """Wall time: start, workers' start, the cells' schedule."""
        return self.startup_s + self.workers_start_s + self.schedule_s

    def term_seconds(self) -> dict[str, float]:
        """Compute by term (setup, training, evaluation, each stage), over every cell."""
        out: dict[str, float] = {}
        for cell in self.cells:
            for name, value in cell.terms.items():
                out[name] = out.get(name, 0.0) + value
        return out

    def share(self, term: str) -> float:
        """The fraction of the compute that ``term`` is (0 when nothing is computed)."""
        total = self.compute_s
        return self.term_seconds().get(term, 0.0) / total if total > 0 else 0.0
