"""The saliency methods a grid may name, declared without torch (grids are validated and their
cost estimated from these declarations); the attributions themselves are in
bench/saliency/maps.py, imported when a map is computed.

A method is a function ``(model, x, targets, **settings) -> attributions`` (see maps.py's for the
keyword arguments it is given), placed as ``"module:function"``, and the number of gradient
passes (a forward and a backward to the input) one image's map costs under a grid's settings.
A plugin adds one with `register_saliency_method` from a module named by an entry point in the
group `medq_bench.saliency_methods`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.registry import Registry


@dataclass(frozen=True)
class SaliencyMethod:
    name: str
    runs: str
    """"module:function" of the attribution function."""
    passes: Callable[[Any], int]
    """Gradient passes of one image's map, given the stage's settings (SaliencyConfig)."""
    description: str
    reads_layer: bool = False
    """Whether it explains a layer's output (the grid's `gradcam_layer`) rather than the input."""

    @property
    def function(self) -> Callable[..., Any]:
        module, _, name = self.runs.partition(":")
        return getattr(importlib.import_module(module), name)


SALIENCY_METHODS: Registry[SaliencyMethod] = Registry("saliency method", "saliency_methods")
"""Saliency methods by name: the four below and plugins'."""


def register_saliency_method(name: str, runs: str, passes: Callable[[Any], int],
                             description: str, reads_layer: bool = False) -> SaliencyMethod:
    return SALIENCY_METHODS.register(
        name, SaliencyMethod(name, runs, passes, description, reads_layer))


register_saliency_method("gradient", "bench.saliency.maps:gradient", lambda cfg: 1,
                         "vanilla gradient (Simonyan et al. 2014)")
register_saliency_method("integrated_gradients", "bench.saliency.maps:integrated_gradients",
                         lambda cfg: cfg.ig_steps,
                         "Integrated Gradients from a black baseline (Sundararajan et al. 2017)")
register_saliency_method("smoothgrad", "bench.saliency.maps:smoothgrad",
                         lambda cfg: cfg.smoothgrad_samples,
                         "SmoothGrad, mean gradient of noisy copies (Smilkov et al. 2017)")
register_saliency_method("gradcam", "bench.saliency.maps:gradcam", lambda cfg: 1,
                         "Grad-CAM on a layer's output (Selvaraju et al. 2017)", reads_layer=True)
