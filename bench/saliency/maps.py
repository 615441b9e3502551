"""Saliency maps from Captum attribution methods, aggregated over channels to (N, H, W).

Every method attributes the model's *logit* of the target class. Pixel-space attributions
(N, C, H, W) are reduced over channels with `aggregate`: "abs_sum" (default, sum_c |a_c|) or
"abs_max" (max_c |a_c|), so every map is non-negative. Grad-CAM is computed on one layer with
ReLU applied (standard Grad-CAM) and upsampled bilinearly to the input size; the layer's
output is read through an identity probe so Brevitas QuantTensor outputs work too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np
import torch
from captum.attr import (
    IntegratedGradients,
    LayerAttribution,
    LayerGradCam,
    NoiseTunnel,
    Saliency,
)
from torch import Tensor, nn

Aggregate = Literal["abs_sum", "abs_max"]


def last_conv(model: nn.Module) -> nn.Module:
    """The last `nn.Conv2d` (Brevitas `QuantConv2d` included) in `model.modules()` order."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("model has no Conv2d module; pass layer= explicitly")
    return convs[-1]


def resolve_layer(model: nn.Module, layer: nn.Module | str | None) -> nn.Module:
    """A module given directly, by dotted name, or (None) the last conv of the model."""
    if layer is None:
        return last_conv(model)
    if isinstance(layer, str):
        return model.get_submodule(layer)
    return layer


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode for the block; a model in training mode is put back after it."""
    was_training = model.training
    if was_training:
        model.eval()
    try:
        yield model
    finally:
        if was_training:
            model.train()


@contextmanager
def tensor_probe(layer: nn.Module) -> Iterator[nn.Module]:
    """An identity module applied to `layer`'s output tensor, for Captum layer hooks.

    Brevitas layers return a QuantTensor (a NamedTuple), which Captum's hooks mistake for a
    tuple of outputs; the probe sees its `.value` instead, and the value it returns is put back.
    """
    probe = nn.Identity()

    def hook(_: nn.Module, __: Any, out: Any) -> Any:
        if isinstance(out, Tensor):
            return probe(out)
        return out.set(value=probe(out.value))

    handle = layer.register_forward_hook(hook)
    try:
        yield probe
    finally:
        handle.remove()


def _gradient(model: nn.Module, x: Tensor, t: Tensor, **_: object) -> Tensor:
    return Saliency(model).attribute(x, target=t, abs=False)


def _integrated_gradients(
    model: nn.Module, x: Tensor, t: Tensor, *, ig_steps: int, batch_size: int, **_: object
) -> Tensor:
    ig = IntegratedGradients(model)
    return ig.attribute(
        x, baselines=torch.zeros_like(x), target=t, n_steps=ig_steps,
        internal_batch_size=batch_size,
    )


def _smoothgrad(
    model: nn.Module, x: Tensor, t: Tensor, *, n_samples: int, noise_std: float,
    seeds: list[int], **_: object,
) -> Tensor:
    """NoiseTunnel per image, seeded per image, all its noise samples in one forward pass,
    so the result does not depend on batch_size."""
    tunnel = NoiseTunnel(Saliency(model))
    out = []
    for i, seed in enumerate(seeds):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            out.append(tunnel.attribute(
                x[i:i + 1], nt_type="smoothgrad", nt_samples=n_samples, stdevs=noise_std,
                target=t[i:i + 1], abs=False,
            ))
    return torch.cat(out)


def _gradcam(
    model: nn.Module, x: Tensor, t: Tensor, *, layer: nn.Module | str | None, **_: object
) -> Tensor:
    with tensor_probe(resolve_layer(model, layer)) as probe:
        attr = LayerGradCam(model, probe).attribute(x, target=t, relu_attributions=True)
    return LayerAttribution.interpolate(attr, tuple(x.shape[-2:]), interpolate_mode="bilinear")


METHODS: dict[str, Callable[..., Tensor]] = {
    "gradient": _gradient,
    "integrated_gradients": _integrated_gradients,
    "smoothgrad": _smoothgrad,
    "gradcam": _gradcam,
}


def aggregate_channels(attr: Tensor, how: Aggregate = "abs_sum") -> Tensor:
    """(N, C, H, W) -> (N, H, W) by sum or max of absolute values over channels."""
    if how == "abs_sum":
        return attr.abs().sum(dim=1)
    if how == "abs_max":
        return attr.abs().amax(dim=1)
    raise ValueError(f"unknown aggregate '{how}'")


def compute_maps(
    model: nn.Module,
    images: Tensor,
    targets: Tensor | np.ndarray | list[int],
    method: str,
    *,
    n_samples: int = 16,
    noise_std: float = 0.15,
    ig_steps: int = 16,
    layer: nn.Module | str | None = None,
    batch_size: int = 32,
    aggregate: Aggregate = "abs_sum",
    seed: int = 0,
) -> np.ndarray:
    """Saliency maps (N, H, W) float32 for `images` (N, C, H, W) and class `targets` (N,).

    `n_samples`/`noise_std`: SmoothGrad samples and noise std (model-input units);
    `ig_steps`: Integrated-Gradients steps from an all-zeros baseline; `layer`: Grad-CAM layer
    (module, dotted name, or None for the last Conv2d); `seed`: SmoothGrad noise of image i uses
    seed + i. The model is put in eval mode for the call and its mode is restored afterwards.
    """
    if method not in METHODS:
        raise ValueError(f"unknown saliency method '{method}'; known: {', '.join(METHODS)}")
    fn = METHODS[method]
    t_all = torch.as_tensor(np.asarray(targets), dtype=torch.long)
    maps = []
    with eval_mode(model):
        for start in range(0, images.shape[0], batch_size):
            x = images[start:start + batch_size].detach().float().clone().requires_grad_()
            t = t_all[start:start + batch_size]
            seeds = [seed + start + i for i in range(x.shape[0])]
            attr = fn(
                model, x, t, n_samples=n_samples, noise_std=noise_std, ig_steps=ig_steps,
                layer=layer, batch_size=batch_size, seeds=seeds,
            )
            maps.append(aggregate_channels(attr.detach(), aggregate).cpu().numpy())
    return np.concatenate(maps).astype(np.float32)
