"""Training at the hardware's pace: the grid's own training step (`bench.train.fit`) against a
plain PyTorch loop of the same shape on the same model, and the dry-run estimate's step
(`CellModelProbe.step_s`) against the step `fit` takes, all in one run.

Paper-shaped by default: ResNet-18 and MobileNetV2, 224 px, batch 32, one torch thread (as
every cell), FP32 and QAT (the model prepared as the grid's method prepares it). Targets:
fit / plain loop <= PACE, and the estimate within ESTIMATE of fit. Run with `make bench`;
MEDQ_BENCH_IMAGE_SIZE shrinks the images (the targets are for 224 px). Prints the CPU's
vector flags with the ratios.
"""

from __future__ import annotations

import copy
import os
import statistics
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from bench.runner import RunOptions, plan_grid
from bench.runner.estimate.probe import CellModelProbe
from bench.runner.executors.task import cell_threads
from bench.train import fit
from methods import get_method

IMAGE_SIZE = int(os.environ.get("MEDQ_BENCH_IMAGE_SIZE", "224"))
BATCH = 32
STEPS = 3          # timed steps (after a warm-up epoch) of each loop
CLASSES = 8
PACE = 1.10
ESTIMATE = 0.15


def cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return " ".join(sorted(f for f in flags if f.startswith(("avx", "amx", "fma"))))
    except OSError:
        pass
    return "unknown"


def paper_cell(tmp_path: Path, backbone: str, method: str):
    grid = {"name": "pace", "seeds": 1, "backbones": [backbone],
            "datasets": [{"name": "synthetic", "image_size": IMAGE_SIZE,
                          "options": {"num_classes": CLASSES, "num_images": 4 * BATCH}}],
            "methods": [{"name": "fp32"}, *([{"name": method, "bits": [[8, 8]]}]
                                            if method != "fp32" else [])],
            "train": {"epochs": 2, "batch_size": BATCH}, "finetune": {"epochs": 2,
                                                                      "batch_size": BATCH}}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    plan = plan_grid(RunOptions(grid=str(path), torch_device="cpu"))
    return next(c for c in plan.cells if c.config.method == method)


def plain_step_s(model: torch.nn.Module) -> float:
    """A plain PyTorch step of the same shape: forward, cross-entropy, backward, Adam."""
    x = torch.randn(BATCH, 3, IMAGE_SIZE, IMAGE_SIZE)
    y = torch.randint(0, CLASSES, (BATCH,))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    times = []
    for _ in range(1 + STEPS):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def fit_step_s(model: torch.nn.Module, cell) -> float:
    """The grid's own loop: `fit` on STEPS batches, its second epoch's seconds a step."""
    generator = torch.Generator().manual_seed(0)
    n = STEPS * BATCH
    images = torch.randint(0, 256, (n, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8,
                           generator=generator)
    labels = torch.randint(0, CLASSES, (n,), generator=generator)
    method = get_method(cell.config.method)
    params = method.parse_params(cell.config.params)
    history = fit(model, images, labels, cell.config.train, method.objective(params), seed=0,
                  torch_device=torch.device("cpu"), penalty=method.penalty(params))
    return history["epochs"][-1]["seconds"] / STEPS


@pytest.mark.parametrize("method", ["fp32", "qat"])
@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v2"])
def test_the_grids_step_keeps_the_hardwares_pace(backbone: str, method: str,
                                                 tmp_path: Path) -> None:
    cell = paper_cell(tmp_path, backbone, method)
    with cell_threads():
        probe = CellModelProbe(cell, CLASSES, torch.device("cpu"), {}, tmp_path)
        estimated = probe.step_s()
        ours = fit_step_s(copy.deepcopy(probe.model), cell)
        plain = plain_step_s(copy.deepcopy(probe.model))
    print(f"\n{backbone}/{method} {IMAGE_SIZE}px b{BATCH}, 1 thread: fit {ours:.3f} s/step, "
          f"plain loop {plain:.3f} s/step (fit/plain {ours / plain:.2f}), estimate "
          f"{estimated:.3f} s/step (estimate/fit {estimated / ours:.2f}); "
          f"load {os.getloadavg()[0]:.1f}; CPU flags: {cpu_flags()}")
    assert ours / plain <= PACE
    assert abs(estimated / ours - 1) <= ESTIMATE
