"""Shipped backbones on random data, for export and deploy tests that train nothing."""

from __future__ import annotations

import torch
from torch import nn

from bench.models import get_backbone
from bench.quant import QuantSpec, calibrate, quantize


def random_images(n: int, size: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def backbone_with_data_statistics(name: str, size: int, num_classes: int = 3) -> nn.Module:
    """A freshly initialised backbone whose BatchNorm statistics come from two random batches
    (no weight is trained). With the default statistics (mean 0, variance 1) a random
    EfficientNet-B0 at 32 px outputs a constant: its activations vanish, its quantisers
    collapse to their minimum scale and ONNX Runtime rejects the export's average pools."""
    torch.manual_seed(0)
    model = get_backbone(name).build(num_classes)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # a plain average over the batches
    model.train()
    with torch.no_grad():
        for seed in (10, 11):
            model(random_images(8, size, seed))
    return model.eval()


def quantised_backbone(name: str, size: int, w_bits: int, a_bits: int,
                       scheme: str = "stats") -> nn.Module:
    """``backbone_with_data_statistics`` quantised with ``bench.quant`` and calibrated on two
    random batches, in eval mode."""
    model = backbone_with_data_statistics(name, size)
    qmodel = quantize(model, QuantSpec(w_bits, a_bits, scheme=scheme), random_images(2, size, 1))
    calibrate(qmodel, [random_images(4, size, 2), random_images(4, size, 3)])
    return qmodel.eval()
