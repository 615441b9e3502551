"""Wall time of the full saliency stability suite for one cell (64 images, default config).

Run explicitly: pytest tests/benchmarks/test_bench_saliency.py --benchmark-enable
SALIENCY_BENCH_IMAGES overrides the image count (e.g. to estimate ResNet-18 from fewer);
SALIENCY_BENCH_THREADS sets torch's intra-op threads (default 1: on a shared, oversubscribed
machine multi-threaded ops stall on thread barriers and time far worse).
"""

from __future__ import annotations

import os

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
