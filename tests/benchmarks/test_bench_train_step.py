"""Training-step time (forward, loss, backward, optimiser step): backbone x scheme x objective.

Skipped in the default run (`--benchmark-skip`, MEDQ_BENCH unset). Run with, for example:

    MEDQ_BENCH=1 MEDQ_BENCH_IMAGE_SIZE=112 python -m pytest -s -o addopts="" \
        tests/benchmarks/test_bench_train_step.py --benchmark-only --benchmark-group-by=group

Each group (backbone, scheme, image size) holds one row per objective, so the SGT / CE ratio is
read within one run. On a shared, loaded machine prefer `test_sgt_over_ce_interleaved`: it
alternates CE and SGT steps and records the ratio of median step times (printed with -s, and in
--benchmark-json extra_info). Schemes other than fp32 come from `bench.quant` and are left out
while it is absent. Environment: MEDQ_BENCH_IMAGE_SIZE (224), MEDQ_BENCH_BATCH (16),
MEDQ_BENCH_ROUNDS (3), MEDQ_BENCH_THREADS (2, torch intra-op threads).
"""

from __future__ import annotations

import importlib.util
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator

import pytest
import torch
import torchvision
from torch import nn

from bench.objectives import CrossEntropy, Objective, SaliencyGuided

NUM_CLASSES = 8
THREADS = int(os.environ.get("MEDQ_BENCH_THREADS", "2"))
IMAGE_SIZE = int(os.environ.get("MEDQ_BENCH_IMAGE_SIZE", "224"))
BATCH = int(os.environ.get("MEDQ_BENCH_BATCH", "16"))
ROUNDS = int(os.environ.get("MEDQ_BENCH_ROUNDS", "3"))

Scheme = Callable[[nn.Module, torch.Tensor], nn.Module]


def _small_cnn() -> nn.Module:
    from bench.smallcnn import SmallCNN

    return SmallCNN(NUM_CLASSES)


BACKBONES: dict[str, Callable[[], nn.Module]] = {
    "smallcnn": _small_cnn,
    "resnet18": lambda: torchvision.models.resnet18(weights=None, num_classes=NUM_CLASSES),
}

OBJECTIVES: dict[str, Callable[[], Objective]] = {
    "ce": CrossEntropy,
    "sgt": lambda: SaliencyGuided(generator=torch.Generator().manual_seed(0)),
    "sgt_shared_pass": lambda: SaliencyGuided(saliency_pass="shared",
                                              generator=torch.Generator().manual_seed(0)),
}


def _fake_quant(scheme: str) -> Scheme:
    """W4A4 fake-quant model from bench.quant (imported lazily: Brevitas is slow to import)."""

    def build(model: nn.Module, x: torch.Tensor) -> nn.Module:
        from bench.quant import QuantSpec, calibrate, quantize

        qmodel = quantize(model, QuantSpec(w_bits=4, a_bits=4, scheme=scheme), x)
        calibrate(qmodel, [x])
        return qmodel

    return build


def _schemes() -> dict[str, Scheme]:
    """fp32 always; QAT, PACT and LSQ fake-quant models if bench.quant exists."""
    schemes: dict[str, Scheme] = {"fp32": lambda model, x: model}
    if importlib.util.find_spec("bench.quant") is not None:
        schemes["qat"] = _fake_quant("stats")
        schemes["pact"] = _fake_quant("pact")
        schemes["lsq"] = _fake_quant("lsq")
    return schemes


SCHEMES = _schemes()


@pytest.fixture(autouse=True, scope="module")
def _threads() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


def _make_step(backbone_name: str, scheme_name: str, objective: Objective) -> Callable[[], float]:
    """A training step (zero_grad, loss, backward, SGD step) on a fixed random batch."""
    torch.manual_seed(0)
    x = torch.randn(BATCH, 3, IMAGE_SIZE, IMAGE_SIZE)
    y = torch.randint(0, NUM_CLASSES, (BATCH,))
    model = SCHEMES[scheme_name](BACKBONES[backbone_name]().train(), x).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss, _ = objective.loss(model, x, y)
        loss.backward()
        optimizer.step()
        return float(loss)

    return step


def _group(backbone_name: str, scheme_name: str) -> str:
    return f"{backbone_name}/{scheme_name}/{IMAGE_SIZE}px/b{BATCH}"


@pytest.mark.benchmark
@pytest.mark.parametrize("objective_name", list(OBJECTIVES))
@pytest.mark.parametrize("scheme_name", list(SCHEMES))
@pytest.mark.parametrize("backbone_name", list(BACKBONES))
def test_train_step(benchmark, backbone_name: str, scheme_name: str, objective_name: str
                    ) -> None:
    step = _make_step(backbone_name, scheme_name, OBJECTIVES[objective_name]())
    benchmark.group = _group(backbone_name, scheme_name)
    benchmark.extra_info.update(backbone=backbone_name, scheme=scheme_name,
                                objective=objective_name, threads=THREADS)
    loss = benchmark.pedantic(step, rounds=ROUNDS, warmup_rounds=1, iterations=1)
    assert math.isfinite(loss)


@pytest.mark.benchmark
@pytest.mark.parametrize("scheme_name", list(SCHEMES))
@pytest.mark.parametrize("backbone_name", list(BACKBONES))
def test_sgt_over_ce_interleaved(benchmark, backbone_name: str, scheme_name: str) -> None:
    """One CE and one SGT step per round, interleaved so that changing CPU load from other
    processes hits both alike. Median-time ratios go to extra_info: "sgt_over_ce" (wall clock)
    and "cpu_sgt_over_ce" (process CPU time, steadier under load with one thread)."""
    steps = {name: _make_step(backbone_name, scheme_name, OBJECTIVES[name]())
             for name in ("ce", "sgt")}
    wall: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, list[float]] = {name: [] for name in steps}

    def one_round() -> None:
        for name, step in steps.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            step()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)

    benchmark.group = _group(backbone_name, scheme_name) + "/interleaved"
    benchmark.pedantic(one_round, rounds=ROUNDS, warmup_rounds=1, iterations=1)
    ratios = {kind: statistics.median(t["sgt"][1:]) / statistics.median(t["ce"][1:])
              for kind, t in (("wall", wall), ("cpu", cpu))}
    benchmark.extra_info.update(backbone=backbone_name, scheme=scheme_name, threads=THREADS,
                                sgt_over_ce=ratios["wall"], cpu_sgt_over_ce=ratios["cpu"])
    print(f"{benchmark.group}: SGT/CE median step time, wall {ratios['wall']:.2f}, "
          f"process CPU {ratios['cpu']:.2f}")
    assert len(wall["ce"]) == len(wall["sgt"]) == ROUNDS + 1
