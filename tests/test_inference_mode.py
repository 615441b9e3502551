"""The saliency stage's forward-only passes run under `torch.inference_mode()`
(bench.saliency.metrics.forward_only). Brevitas issue 1245 reports inference mode breaking
quantised inference, so this checks it for every quantisation scheme of bench.quant (observed
ranges as PTQ and QAT use them, PACT, LSQ) at W4A4 on the small CNN, and for its FP32 model:
the outputs equal those under `torch.no_grad()`, no parameter or buffer becomes an inference
tensor, and a gradient pass afterwards (the next saliency map) equals one on a twin that never
ran in inference mode."""

from __future__ import annotations

import copy
from functools import cache

import pytest
import torch
from torch import nn

from bench.config import BackboneConfig
from bench.models import build_model
from bench.quant import QuantSpec, calibrate, quantize
from bench.saliency.metrics import forward_only


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


@cache
def trained(backbone: str, scheme: str | None) -> nn.Module:
    """A W4A4 graph of `scheme` (None: the FP32 model), calibrated and fine-tuned one step in
    training mode, as a QAT/PACT/LSQ cell leaves it, in eval mode."""
    torch.manual_seed(0)
    model = build_model(BackboneConfig(name=backbone), 3)
    if scheme is not None:
        model = quantize(model.eval(), QuantSpec(w_bits=4, a_bits=4, scheme=scheme), _images(2, 0))
        calibrate(model, [_images(8, 1)])
    model.train()
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01)
    nn.functional.cross_entropy(model(_images(8, 2)), torch.tensor([0, 1, 2, 0] * 2)).backward()
    optimiser.step()
    return model.eval()


def _input_gradient(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_()
    model(x)[:, 0].sum().backward()
    return x.grad


@pytest.mark.parametrize(("backbone", "scheme"), [
    ("smallcnn", None), ("smallcnn", "stats"), ("smallcnn", "pact"), ("smallcnn", "lsq")])
def test_inference_mode_equals_no_grad_for_the_projects_quantised_models(
        backbone: str, scheme: str | None) -> None:
    x = _images(6, 3)
    model, twin = copy.deepcopy(trained(backbone, scheme)), copy.deepcopy(trained(backbone, scheme))
    with torch.no_grad():
        expected = twin(x)
    with forward_only():
        assert torch.is_inference_mode_enabled()
        out = model(x)
    assert torch.equal(out, expected)
    inference = [k for k, v in model.state_dict(keep_vars=True).items() if v.is_inference()]
    assert not inference
    assert torch.equal(_input_gradient(model, x), _input_gradient(twin, x))
