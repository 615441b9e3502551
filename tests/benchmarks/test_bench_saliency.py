"""Wall time of the full saliency stability suite for one cell (64 images, default config), and
the paper grid's settings on ResNet-18 at 224: seconds per image and the model throughput
against a training step's (`test_paper_settings_resnet18_throughput`, SALIENCY_BENCH_PAPER_IMAGES
images, default 8: the paper's subset of 8 of 64 becomes 1 of 8).

Run explicitly: pytest tests/benchmarks/test_bench_saliency.py --benchmark-enable
SALIENCY_BENCH_IMAGES overrides the image count (e.g. to estimate ResNet-18 from fewer);
SALIENCY_BENCH_THREADS sets torch's intra-op threads (default 1: on a shared, oversubscribed
machine multi-threaded ops stall on thread barriers and time far worse).
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from bench.saliency import SaliencyConfig, stability_suite
from bench.smallcnn import SmallCNN

N_IMAGES = int(os.environ.get("SALIENCY_BENCH_IMAGES", "64"))
N_THREADS = int(os.environ.get("SALIENCY_BENCH_THREADS", "1"))


def _cell(model: nn.Module, size: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor, np.ndarray]:
    torch.manual_seed(0)
    model.eval()
    images = torch.randn(N_IMAGES, 3, size, size)
    targets = torch.randint(0, 2, (N_IMAGES,))
    masks = np.zeros((N_IMAGES, size, size), dtype=bool)
    masks[:, size // 4: 3 * size // 4, size // 4: 3 * size // 4] = True
    return model, images, targets, masks


@pytest.mark.parametrize(
    ("name", "build", "size"),
    [
        ("smallcnn", lambda: SmallCNN(2), 32),
        ("resnet18", lambda: torchvision.models.resnet18(weights=None, num_classes=2), 224),
    ],
)
def test_stability_suite_time(benchmark: object, name: str, build: object, size: int) -> None:
    torch.set_num_threads(N_THREADS)
    model, images, targets, masks = _cell(build(), size)
    fp32 = build().eval()
    cfg = SaliencyConfig(n_samples=N_IMAGES)
    res = benchmark.pedantic(stability_suite, args=(model, fp32, images, targets, masks, cfg),
                             rounds=1, iterations=1)
    benchmark.extra_info.update(images=N_IMAGES, size=size, backbone=name, threads=N_THREADS)
    assert set(res) == set(cfg.methods)
    assert all(r["maps"].shape == (N_IMAGES, size, size) for r in res.values())


PAPER_IMAGES = int(os.environ.get("SALIENCY_BENCH_PAPER_IMAGES", "8"))
STEP_BATCH = 16
MIN_THROUGHPUT_RATIO = 0.8


def _paper_settings(n: int) -> SaliencyConfig:
    """The paper grid's saliency settings on n images, its subsets scaled to keep their share of
    the evaluated images (at least one image)."""
    from bench.config import load_grid

    raw = load_grid("paper").model_dump(mode="json")["stages"]["saliency"]
    cfg = SaliencyConfig(**raw)
    scaled = {m: max(1, round(k * n / cfg.n_samples)) for m, k in cfg.sensitivity_images.items()}
    return cfg.model_copy(update={"n_samples": n, "sensitivity_images": scaled})


def _per_image_s(call: object, images: int) -> float:
    call()   # warm-up
    times = []
    for _ in range(3):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) / images


def test_paper_settings_resnet18_throughput(benchmark: object) -> None:
    """ResNet-18 at 224 on one thread: seconds per evaluated image under the paper grid's
    saliency settings (the stability suite with stored FP32 maps, as the stage runs it), and the
    suite's model throughput (images through the model a second, counted by a forward hook)
    against a plain training step's, which must be >= MIN_THROUGHPUT_RATIO. Also checks the
    cost ratios tests/test_paper_shaped.py assumes (RESNET18_224): a gradient pass and a forward
    pass cost at most that fraction of a training step's image, an SGT step at least that
    multiple."""
    from bench.objectives import SaliencyGuided
    from tests.benchmarks.test_bench_latency import cpu_info
    from tests.test_paper_shaped import RESNET18_224

    torch.set_num_threads(1)
    cpu, flags, vnni = cpu_info()
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=8).eval()
    cfg = _paper_settings(PAPER_IMAGES)
    images = torch.randn(PAPER_IMAGES, 3, 224, 224)
    targets = torch.randint(0, 8, (PAPER_IMAGES,))
    reference = {m: np.random.default_rng(1).random((PAPER_IMAGES, 224, 224), np.float32)
                 for m in cfg.methods}
    seen = [0]
    handle = model.register_forward_pre_hook(
        lambda _m, args: seen.__setitem__(0, seen[0] + args[0].shape[0]))
    start = time.perf_counter()
    try:
        benchmark.pedantic(stability_suite, args=(model, None, images, targets, None, cfg),
                           kwargs={"reference_maps": reference}, rounds=1, iterations=1)
    finally:
        handle.remove()
    seconds = time.perf_counter() - start
    stage_rate = seen[0] / seconds

    x, y = torch.randn(STEP_BATCH, 3, 224, 224), torch.randint(0, 8, (STEP_BATCH,))
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sgt = SaliencyGuided(generator=torch.Generator().manual_seed(0))

    def step(objective: object = None) -> None:
        model.train()
        loss = (nn.functional.cross_entropy(model(x), y) if objective is None
                else objective.loss(model, x, y)[0])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    def gradient() -> None:
        model.eval()
        xx = x.clone().requires_grad_()
        torch.autograd.grad(model(xx).gather(1, y[:, None]).sum(), xx)

    def forward() -> None:
        model.eval()
        with torch.inference_mode():
            model(x)

    step_s = _per_image_s(step, STEP_BATCH)
    ratios = {"gradient": _per_image_s(gradient, STEP_BATCH) / step_s,
              "forward": _per_image_s(forward, STEP_BATCH) / step_s,
              "sgt_step": _per_image_s(lambda: step(sgt), STEP_BATCH) / step_s}
    model.eval()
    info = {"cpu": cpu, "flags": flags, "vnni": vnni, "threads": 1, "images": PAPER_IMAGES,
            "sensitivity_images": cfg.sensitivity_images,
            "seconds_per_image": seconds / PAPER_IMAGES,
            "model_images_per_image": seen[0] / PAPER_IMAGES,
            "stage_images_per_s": stage_rate, "train_step_images_per_s": 1.0 / step_s,
            "throughput_ratio": stage_rate * step_s,
            **{f"{k}_per_step_image": v for k, v in ratios.items()}}
    benchmark.extra_info.update(info)
    print(f"\nsaliency, paper settings, ResNet-18 224, 1 thread, CPU {cpu} (flags "
          f"{', '.join(flags)}; VNNI: {', '.join(vnni) or 'none'}): "
          f"{info['seconds_per_image']:.1f} s/image, "
          f"{info['model_images_per_image']:.0f} images through the model per image, "
          f"{stage_rate:.2f} img/s vs {1 / step_s:.2f} img/s for a training step "
          f"(ratio {info['throughput_ratio']:.2f}); per training-step image: gradient "
          f"{ratios['gradient']:.2f}, forward {ratios['forward']:.2f}, SGT step "
          f"{ratios['sgt_step']:.2f}")
    assert stage_rate * step_s >= MIN_THROUGHPUT_RATIO
    assert ratios["gradient"] <= RESNET18_224["gradient"]
    assert ratios["forward"] <= RESNET18_224["forward"]
    assert ratios["sgt_step"] >= RESNET18_224["sgt_step"]
