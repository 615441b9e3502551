"""Saliency maps from Captum attribution methods, aggregated over channels to (N, H, W).

Every method attributes the model's *logit* of the target class. Pixel-space attributions
(N, C, H, W) are reduced over channels with `aggregate`: "abs_sum" (default, sum_c |a_c|) or
"abs_max" (max_c |a_c|), so every map is non-negative. Grad-CAM (Selvaraju et al. 2017) is
computed on the input of the model's final global pooling (see `gradcam_target`: the same tensor
in the FP32 model and in its Brevitas graph) with ReLU applied, and upsampled bilinearly to the
input size; the tensor is read through an identity probe so Brevitas QuantTensors work too.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import (
    IntegratedGradients,
    LayerAttribution,
    LayerGradCam,
    Saliency,
)
from torch import Tensor, fx, nn

from bench.saliency.methods import SALIENCY_METHODS

Aggregate = Literal["abs_sum", "abs_max"]


_GLOBAL_POOL_MODULES = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_GLOBAL_POOL_FUNCTIONS = (F.adaptive_avg_pool2d, F.adaptive_max_pool2d)


def _graph(model: nn.Module) -> Any:
    """The model's fx graph: its own for a graph module (Brevitas' backport of torch.fx
    included), else a symbolic trace."""
    graph = getattr(model, "graph", None)
    if graph is not None and hasattr(graph, "nodes"):
        return graph
    try:
        return fx.symbolic_trace(model).graph
    except Exception as err:  # tracing fails on data-dependent control flow
        raise ValueError(f"cannot trace {type(model).__name__} to find its global pooling "
                         f"({type(err).__name__}: {err}); set gradcam_layer") from err


def _is_global_pool(model: nn.Module, node: Any) -> bool:
    if node.op == "call_module":
        return isinstance(model.get_submodule(str(node.target)), _GLOBAL_POOL_MODULES)
    return node.op == "call_function" and node.target in _GLOBAL_POOL_FUNCTIONS


@dataclass(frozen=True)
class LayerTarget:
    """Where Grad-CAM reads its feature maps: the input of `module` (`at="input"`) or its
    output (`at="output"`); `name` is the module's dotted name."""

    module: nn.Module
    name: str
    at: Literal["input", "output"]


def gradcam_target(model: nn.Module) -> LayerTarget:
    """The input of the model's final global pooling: the last block's output after its
    normalisation and activation, the same tensor in the FP32 model and in its Brevitas graph.

    Found in the fx graph (traced for a plain module): the last global-pooling node
    (`AdaptiveAvg/MaxPool2d` module or function). A pooling module is hooked on its input; a
    pooling function (torchvision's MobileNetV2) on the output of the module that feeds it,
    which must run once per forward. Hooking the last Conv2d instead compares different tensors:
    in the FP32 model its output precedes batch norm, in the quantised graph batch norm is
    folded into the conv and the hook sits after it.
    """
    pools = [n for n in _graph(model).nodes if _is_global_pool(model, n)]
    if not pools:
        raise ValueError(f"{type(model).__name__} has no global pooling; set gradcam_layer")
    pool = pools[-1]
    if pool.op == "call_module":
        name = str(pool.target)
        return LayerTarget(model.get_submodule(name), name, "input")
    source = pool.args[0]
    calls = [n for n in pool.graph.nodes
             if n.op == "call_module" and n.target == getattr(source, "target", None)]
    if getattr(source, "op", None) != "call_module" or len(calls) != 1:
        raise ValueError(f"the global pooling of {type(model).__name__} is not fed by a module "
                         "that runs once; set gradcam_layer")
    name = str(source.target)
    return LayerTarget(model.get_submodule(name), name, "output")


def resolve_layer(model: nn.Module, layer: nn.Module | str | None) -> LayerTarget:
    """Grad-CAM's feature maps: the output of a module given directly or by dotted name, or
    (None) the input of the final global pooling (`gradcam_target`)."""
    if layer is None:
        return gradcam_target(model)
    if isinstance(layer, str):
        return LayerTarget(model.get_submodule(layer), layer, "output")
    return LayerTarget(layer, type(layer).__name__, "output")


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


def _probed(probe: nn.Module, value: Any) -> Any:
    if isinstance(value, Tensor):
        return probe(value)
    return value.set(value=probe(value.value))


@contextmanager
def tensor_probe(target: LayerTarget) -> Iterator[nn.Module]:
    """An identity module applied to the target tensor (a module's input or output), for
    Captum layer hooks.

    Brevitas layers pass QuantTensors (NamedTuples), which Captum's hooks mistake for tuples of
    tensors; the probe sees their `.value` instead, and the value it returns is put back.
    """
    probe = nn.Identity()
    if target.at == "output":
        handle = target.module.register_forward_hook(
            lambda _m, _i, out: _probed(probe, out))
    else:
        handle = target.module.register_forward_pre_hook(
            lambda _m, args: (_probed(probe, args[0]), *args[1:]))
    try:
        yield probe
    finally:
        handle.remove()


def gradient(model: nn.Module, x: Tensor, t: Tensor, **_: object) -> Tensor:
    return Saliency(model).attribute(x, target=t, abs=False)


def integrated_gradients(
    model: nn.Module, x: Tensor, t: Tensor, *, ig_steps: int, batch_size: int, **_: object
) -> Tensor:
    ig = IntegratedGradients(model)
    return ig.attribute(
        x, baselines=torch.zeros_like(x), target=t, n_steps=ig_steps,
        internal_batch_size=batch_size,
    )


def smoothgrad_noise(shape: tuple[int, ...], n_samples: int, noise_std: float, seed: int
                     ) -> Tensor:
    """(n_samples, *shape) N(0, noise_std^2) noise of one image: the draw of Captum's
    NoiseTunnel after `torch.manual_seed(seed)`, from a CPU generator of its own (so the noise is
    the same on every torch device and leaves the global random state alone)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.normal(0.0, noise_std, size=(n_samples, *shape), generator=gen)


def smoothgrad(
    model: nn.Module, x: Tensor, t: Tensor, *, n_samples: int, noise_std: float,
    seeds: list[int], batch_size: int, **_: object,
) -> Tensor:
    """SmoothGrad (Smilkov et al. 2017), as Captum's NoiseTunnel(Saliency) with
    nt_type="smoothgrad": the mean gradient over `n_samples` noisy copies of each image, image
    i's noise seeded with seeds[i] (`smoothgrad_noise`). The copies of several images go through
    the model together, `batch_size` at a time, so the result does not depend on batch_size."""
    saliency = Saliency(model)
    copies = torch.cat([
        x[i:i + 1].detach() + smoothgrad_noise(tuple(x.shape[1:]), n_samples, noise_std,
                                               seed).to(x.device, x.dtype)
        for i, seed in enumerate(seeds)])
    targets = t.repeat_interleave(n_samples)
    grads = torch.cat([
        saliency.attribute(copies[b:b + batch_size].requires_grad_(),
                           target=targets[b:b + batch_size], abs=False)
        for b in range(0, len(copies), batch_size)])
    return grads.view(len(seeds), n_samples, *x.shape[1:]).mean(dim=1)


def gradcam(model: nn.Module, x: Tensor, t: Tensor, *, layer: LayerTarget, **_: object
             ) -> Tensor:
    with tensor_probe(layer) as probe:
        attr = LayerGradCam(model, probe).attribute(x, target=t, relu_attributions=True)
    return LayerAttribution.interpolate(attr, tuple(x.shape[-2:]), interpolate_mode="bilinear")




def aggregate_channels(attr: Tensor, how: Aggregate = "abs_sum") -> Tensor:
    """(N, C, H, W) -> (N, H, W) by sum or max of absolute values over channels."""
    if how == "abs_sum":
        return attr.abs().sum(dim=1)
    if how == "abs_max":
        return attr.abs().amax(dim=1)
    raise ValueError(f"unknown aggregate '{how}'")


def model_torch_device(model: nn.Module) -> torch.device:
    """The torch device of the model's first parameter (the CPU for a model without any)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def as_targets(targets: Tensor | np.ndarray | list[int], torch_device: torch.device) -> Tensor:
    """Class targets as a long tensor on `torch_device` (from a tensor on any device, or an
    array)."""
    if isinstance(targets, Tensor):
        return targets.to(torch_device, torch.long)
    return torch.as_tensor(np.asarray(targets), dtype=torch.long, device=torch_device)


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
    ids: np.ndarray | None = None,
) -> np.ndarray:
    """Saliency maps (N, H, W) float32 for `images` (N, C, H, W) and class `targets` (N,).

    `n_samples`/`noise_std`: SmoothGrad samples and noise std (model-input units);
    `ig_steps`: Integrated-Gradients steps from an all-zeros baseline; `layer`: Grad-CAM layer
    (module or dotted name: its output; None: the input of the final global pooling, see
    `gradcam_target`); `seed`, `ids`: SmoothGrad noise of image i uses seed + ids[i] (ids
    default to 0..N-1, so a perturbed copy of an image can reuse its noise). Images are moved to
    the model's torch device; the model is put in eval mode for the call and its mode restored.
    """
    info = SALIENCY_METHODS.get(method)
    fn = info.function
    torch_device = model_torch_device(model)
    t_all = as_targets(targets, torch_device)
    ids = np.arange(images.shape[0]) if ids is None else np.asarray(ids)
    target = resolve_layer(model, layer) if info.reads_layer else None
    maps = []
    with eval_mode(model):
        for start in range(0, images.shape[0], batch_size):
            x = images[start:start + batch_size].detach().to(torch_device, torch.float32).clone()
            t = t_all[start:start + batch_size]
            seeds = [seed + int(i) for i in ids[start:start + batch_size]]
            attr = fn(
                model, x.requires_grad_(), t, n_samples=n_samples, noise_std=noise_std,
                ig_steps=ig_steps, layer=target, batch_size=batch_size, seeds=seeds,
            )
            maps.append(aggregate_channels(attr.detach(), aggregate).cpu().numpy())
    return np.concatenate(maps).astype(np.float32)
