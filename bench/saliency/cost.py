"""The saliency stage's cost a cell, for `bench run --dry-run`'s estimate: the model passes its
settings ask for, each at the cost a probe measures for the cell's model on the cell's device
(where the stage runs it).

Counts follow bench.saliency.suite, .null and .sanity exactly. Per image evaluated
(n = min(n_samples, test images)) and per method, one map costs the method's declared `passes`
(bench/saliency/methods.py) gradient passes (a
forward and a backward to the input); max-sensitivity explains `sensitivity_samples` perturbed
copies (the unperturbed map is the one already computed) of the images `sensitivity_images`
gives the method (all n by default). The deletion and insertion curves share their end points:
p(target | x), p(target | zeros) and p(target | blurred x), 3 forward passes an image, then
2 * (deletion_steps - 1) forward passes an image for every method and for the random pixel
order. Beside that, the null control of a quantised cell explains the evaluated images once more
through the quantised graph, and the sanity check of every cell explains `sanity_images`
images at up to max(sanity_checkpoints, 2) points of the randomisation cascade. Metrics on the
maps and the overlays are not counted. Whoever changes what the stage computes changes these
counts with it (tests count them with a hook).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.runner.estimate.costs import CellShape
from bench.runner.estimate.stage_costs import ModelProbe, register_stage_cost
from bench.saliency.methods import SALIENCY_METHODS
from bench.saliency.settings import SaliencyConfig

STAGE = "saliency"

@dataclass(frozen=True)
class SaliencyCost:
    """Images through the model for one cell: with a backward to the input, and forward only."""

    gradient: int
    forward: int

    @property
    def images(self) -> int:
        return self.gradient + self.forward


def map_passes(cfg: SaliencyConfig) -> int:
    """Gradient passes of one image's maps, all methods."""
    return sum(SALIENCY_METHODS.get(m).passes(cfg) for m in cfg.methods)


def curve_passes(cfg: SaliencyConfig) -> int:
    """Forward passes of one image's deletion and insertion curves, every method and the
    random order: 3 shared end points, then the steps between for each order."""
    return 3 + 2 * (cfg.deletion_steps - 1) * (len(cfg.methods) + 1)


def sensitivity_passes(cfg: SaliencyConfig, n: int) -> int:
    """Gradient passes of max-sensitivity on n evaluated images, every method on its images."""
    return sum(cfg.sensitivity_count(m, n) * SALIENCY_METHODS.get(m).passes(cfg)
               * cfg.sensitivity_samples for m in cfg.methods)


def passes(cfg: SaliencyConfig, n: int = 1) -> tuple[int, int]:
    """(gradient passes, forward passes) of the stability suite on n evaluated images."""
    return n * map_passes(cfg) + sensitivity_passes(cfg, n), n * curve_passes(cfg)


def stage_cost(settings: SaliencyConfig | dict[str, Any], *, n_test: int, quantized: bool,
               sanity: bool = True) -> SaliencyCost:
    """The stage's passes for a cell with `n_test` test images (null control when `quantized`,
    the sanity check, which the stage runs on every cell, unless `sanity` is False)."""
    cfg = settings if isinstance(settings, SaliencyConfig) else SaliencyConfig(**settings)
    n = min(cfg.n_samples, n_test)
    gradient, forward = passes(cfg, n)
    if quantized:
        gradient += n * map_passes(cfg)
    if sanity:
        gradient += min(cfg.sanity_images, n) * max(cfg.sanity_checkpoints, 2) * map_passes(cfg)
    return SaliencyCost(gradient, forward)


@register_stage_cost(STAGE)
def saliency_cost(cfg: SaliencyConfig, shape: CellShape, probe: ModelProbe) -> float:
    n = min(cfg.n_samples, shape.n_test)
    if n == 0:
        return 0.0
    batch = min(cfg.batch_size, n)
    cost = stage_cost(cfg, n_test=shape.n_test, quantized=shape.quantized)
    return (cost.gradient * probe.gradient_image_s(batch)
            + cost.forward * probe.forward_image_s(batch))
