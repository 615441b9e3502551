"""The saliency stage's cost a cell, for `bench run --dry-run`'s estimate: the model passes its
settings ask for, each at the cost a probe measures for the cell's model.

Per image evaluated (min(n_samples, test images)) and per method: its map costs `map_passes`
gradient passes (a forward and a backward to the input); max-sensitivity explains the image
again and once per noise draw, so a method costs (2 + noise_samples) maps; the deletion and
insertion curves cost deletion_steps + 1 forward passes each. With the default settings that
is 156 gradient and 136 forward passes, the 292 images through the model per image evaluated
that issue 16 counted with a forward hook. Metrics on the maps and the overlays are not
counted. Whoever changes what the stage computes changes these counts with it.
"""

from __future__ import annotations

from collections.abc import Callable

from bench.runner.estimate.costs import CellShape
from bench.runner.estimate.stage_costs import ModelProbe, register_stage_cost
from bench.saliency.suite import SaliencyConfig

STAGE = "saliency"
STAGE_DEVICE = "cpu"
"""Where the stage runs the model (stage.py moves it to the CPU)."""

MAP_PASSES: dict[str, Callable[[SaliencyConfig], int]] = {
    "gradient": lambda cfg: 1,
    "integrated_gradients": lambda cfg: cfg.ig_steps,
    "smoothgrad": lambda cfg: cfg.smoothgrad_samples,
    "gradcam": lambda cfg: 1,
}
"""Gradient passes of one image's map, by saliency method."""


def passes(cfg: SaliencyConfig) -> tuple[int, int]:
    """(gradient passes, forward passes) per image evaluated."""
    maps_per_method = 2 + cfg.noise_samples
    gradient = sum(MAP_PASSES[m](cfg) for m in cfg.methods) * maps_per_method
    forward = len(cfg.methods) * 2 * (cfg.deletion_steps + 1)
    return gradient, forward


@register_stage_cost(STAGE)
def saliency_cost(cfg: SaliencyConfig, shape: CellShape, probe: ModelProbe) -> float:
    n = min(cfg.n_samples, shape.n_test)
    if n == 0:
        return 0.0
    batch = min(cfg.batch_size, n)
    gradient, forward = passes(cfg)
    return n * (gradient * probe.gradient_image_s(batch, STAGE_DEVICE)
                + forward * probe.forward_image_s(batch, STAGE_DEVICE))
