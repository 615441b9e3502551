"""Estimate a plan's wall time from costs measured on this machine (`bench run --dry-run`).

For each distinct kind of cell (backbone, image size, method and its parameters, batch size
and optimiser; bit-widths share a kind, as fake quantisation costs the same at any width) a probe
times the cell's model here, on the device and threads its cells would get (probe.py). Each
cell's cost is the sum of its terms: setup, training steps, evaluation and one term per stage,
each stage giving its own (stage_costs.py). The plan's wall time adds the start of a run and
of its workers to the schedule of the cells on the executor's parallelism (costs.py). What was
measured is kept per machine, software and kind of cell (cache.py): a second estimate of the
same cells measures nothing.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import torch

from bench.runner.estimate.cache import EstimateCache, cell_key, machine_fingerprint
from bench.runner.estimate.costs import (
    Assumptions,
    CellCost,
    CellShape,
    Estimate,
    EstimateRow,
    cell_terms,
    makespan,
)
from bench.runner.estimate.stage_costs import STAGE_COSTS, load_stage_costs
from bench.runner.executors.base import Executor, local_cores, resolve_torch_device
from bench.runner.executors.order import waits
from bench.runner.executors.task import CELL_THREADS, WORKER_MODULES, cell_threads
from bench.runner.plan import Cell, MissingData, Plan
from bench.runner.stages import STAGES
from methods import get_method

DEFAULT_CLASSES = 8
CellModelProbe: Any = None
"""probe.CellModelProbe, imported with the stages' cost functions when a cell is first measured
(they load the training and export stack, which a fully cached estimate never needs)."""

__all__ = ["Estimate", "EstimateCache", "EstimateRow", "cell_shape", "estimate",
           "machine_fingerprint"]


def cell_shape(plan: Plan, cell: Cell) -> CellShape:
    """How many images each part of the cell sees (from the split's fractions when the data
    set is not prepared here)."""
    cfg = cell.config
    data = plan.data[cell.data_key]
    if isinstance(data, MissingData):
        n = data.num_images or 0
        n_val, n_test = round(n * cfg.dataset.split.val), round(n * cfg.dataset.split.test)
        n_train, classes = max(n - n_val - n_test, 0), data.num_classes or DEFAULT_CLASSES
    else:
        summary = data.summary
        n_train, n_val, n_test = summary.n_train, summary.n_val, summary.n_test
        classes = data.num_classes
    method = get_method(cfg.method)
    return CellShape(n_train=n_train, n_val=n_val, n_test=n_test, num_classes=classes,
                     image_size=cfg.dataset.image_size, epochs=cfg.train.epochs,
                     batch_size=cfg.train.batch_size,
                     calibration_batches=cfg.calibration_batches,
                     trains=method.trains(method.parse_params(cfg.params)),
                     quantized=method.quantized, method=cfg.method)


def _kind(cell: Cell, classes: int) -> Hashable:
    """What a cell's timings depend on: its model, its method and how it steps."""
    c = cell.config
    return (c.backbone.name, c.dataset.image_size, c.method, json.dumps(c.params, sort_keys=True),
            c.train.batch_size, c.train.optimizer, classes)


def assumptions(executor: Executor) -> Assumptions:
    """Where the cells would run: the executor's torch device (resolved here), CELL_THREADS a
    cell, and as many at once as the executor runs, at most one a core (or a GPU)."""
    torch_device = resolve_torch_device(executor.options.torch_device)
    planned = executor.concurrency
    if torch_device.type == "cuda":
        limit, unit = max(torch.cuda.device_count(), 1), "GPU"
    else:
        limit, unit = max(local_cores() // CELL_THREADS, 1), "core"
    note = ""
    if executor.options.address is not None:   # the cluster's CPUs (GPUs), not this machine's
        limit = planned
        note = (f"the Ray cluster's {planned} {unit}s, each assumed as fast as one here")
    elif planned > limit:
        note = f"{planned} at once share {limit} {unit}{'s' if limit != 1 else ''}"
    return Assumptions(torch_device=str(torch_device), threads_per_cell=CELL_THREADS,
                       concurrency=min(planned, limit), executor=executor.name, note=note)


def workers_start_seconds(executor: Executor, cache: EstimateCache | None = None) -> float:
    """Starting workers that import the cell code themselves (0 for in-process executors):
    one import of what a worker preloads (WORKER_MODULES) in a fresh interpreter, timed (or
    the cache's timing)."""
    if executor.in_process:
        return 0.0
    if cache is not None and cache.workers_start_s is not None:
        return cache.workers_start_s
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {', '.join(WORKER_MODULES)}"], check=True,
                   capture_output=True)
    seconds = time.perf_counter() - start
    if cache is not None:
        cache.workers_start_s = seconds
    return seconds


def estimate(plan: Plan, cell_ids: set[str] | None, executor: Executor,
             startup_s: float = 0.0, cache: bool | EstimateCache = False,
             re_estimate: bool = False) -> Estimate:
    """Time every kind of cell to run (all of the plan's when ``cell_ids`` is None) and add
    the plan's wall time up; ``startup_s`` is what starting a run costs before its first cell
    (the caller's own start, measured). With ``cache`` (True: this machine's in $MEDQ_CACHE),
    cells measured before are not measured again, unless ``re_estimate``."""
    chosen = assumptions(executor)
    if cache is True:
        cache = EstimateCache(machine_fingerprint(chosen), fresh=re_estimate)
    store = cache or None
    todo = [c for c in plan.cells if cell_ids is None or c.cell_id in cell_ids]
    costs: list[CellCost] = []
    rows: dict[tuple[str, str, int, int], list[tuple[float, CellCost]]] = {}
    missing: set[str] = set()
    memo: dict[Hashable, Any] = {}
    probes: dict[Hashable, Any] = {}
    from_cache, measured = 0, set()
    torch_device = torch.device(chosen.torch_device)
    workdir: Path | None = None
    with contextlib.ExitStack() as measuring:   # entered on the first cell to measure
        for cell in todo:
            shape = cell_shape(plan, cell)
            key = cell_key(cell, shape)
            found = store.terms(key) if store is not None else None
            if found is not None:
                step_s, terms = found
                from_cache += key not in measured
            else:
                if workdir is None:
                    measuring.enter_context(cell_threads())
                    workdir = Path(measuring.enter_context(
                        tempfile.TemporaryDirectory(prefix="medq-estimate-")))
                step_s, terms = _measure(cell, shape, probes, memo, torch_device, workdir)
                if store is not None:
                    store.put(key, step_s, terms)
                    measured.add(key)
            missing.update(n for n in cell.config.stages if n not in terms)
            cost = CellCost(cell.cell_id, terms)
            costs.append(cost)
            c = cell.config
            rows.setdefault((c.backbone.name, c.method, c.dataset.image_size, shape.steps),
                            []).append((step_s, cost))
    ids = {c.cell_id for c in todo}
    schedule = makespan([c.cell_id for c in plan.cells], {c.cell_id: c.seconds for c in costs},
                        waits(plan), {c.cell_id for c in plan.cells} - ids, chosen.concurrency)
    result = Estimate(rows=[_row(key, members) for key, members in rows.items()], cells=costs,
                      assumptions=chosen, startup_s=startup_s,
                      workers_start_s=workers_start_seconds(executor, store) if todo else 0.0,
                      schedule_s=schedule, not_estimated=tuple(sorted(missing)),
                      from_cache=from_cache)
    if store is not None:
        store.save()
    return result


def _measure(cell: Cell, shape: CellShape, probes: dict[Hashable, Any],
             memo: dict[Hashable, Any], torch_device: torch.device, workdir: Path
             ) -> tuple[float, dict[str, float]]:
    """A cell's step seconds and cost terms (a stage without a cost function has none),
    timed on its kind's probe (made on first use)."""
    global CellModelProbe
    if CellModelProbe is None:
        from bench.runner.estimate.probe import CellModelProbe
    load_stage_costs()
    kind = _kind(cell, shape.num_classes)
    if kind not in probes:
        probes[kind] = CellModelProbe(cell, shape.num_classes, torch_device, memo, workdir)
    probe = probes[kind]
    stages = {}
    for name, raw in cell.config.stages.items():
        if name in STAGE_COSTS:
            settings = STAGES[name].Settings.model_validate(raw)
            stages[name] = STAGE_COSTS[name](settings, shape, probe)
    timings = probe.timings()
    return timings.step_s, cell_terms(shape, timings, stages)


def _row(key: tuple[str, str, int, int], members: list[tuple[float, CellCost]]) -> EstimateRow:
    backbone, method, size, steps = key
    n = len(members)
    terms: dict[str, float] = {}
    for _, cost in members:
        for name, value in cost.terms.items():
            terms[name] = terms.get(name, 0.0) + value / n
    return EstimateRow(backbone, method, size, n, sum(s for s, _ in members) / n, steps, terms)
