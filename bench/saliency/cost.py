"""What the `saliency` stage costs a cell, counted in images through the model.

Counts follow bench.saliency.suite, .null and .sanity exactly: per evaluated image, one
explanation costs `EXPLAIN_PASSES` forward+backward passes (Integrated Gradients `ig_steps`,
SmoothGrad `smoothgrad_samples`, gradient and Grad-CAM one); max-sensitivity explains
`sensitivity_samples` perturbed copies; the deletion and insertion curves are forward-only,
`deletion_steps + 1` points each for every method and for the random order, plus one forward for
p(target | x); the null control (quantised cells) explains the images once more through the
quantised graph; the sanity check (FP32 cells) explains `sanity_images` images at up to
`sanity_checkpoints` points of the cascade. A dry run turns the counts into time with the per-image
cost of the cell's timed training step (`seconds`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.saliency.suite import SaliencyConfig

FORWARD_SHARE = 1 / 3
"""A forward pass as a share of a forward+backward pass (the backward costs about twice the
forward), for turning forward-only passes into training-step units."""


@dataclass(frozen=True)
class SaliencyCost:
    """Images through the model for one cell: with an input backward, and forward only."""

    forward_backward: int
    forward: int

    def seconds(self, per_image_step: float) -> float:
        """Time at `per_image_step` seconds per image of a training step (forward+backward)."""
        return (self.forward_backward + FORWARD_SHARE * self.forward) * per_image_step


def explain_passes(cfg: SaliencyConfig, method: str) -> int:
    """Forward+backward passes per image of one explanation."""
    return {"integrated_gradients": cfg.ig_steps,
            "smoothgrad": cfg.smoothgrad_samples}.get(method, 1)


def stage_cost(settings: SaliencyConfig | dict[str, Any], *, n_test: int, quantized: bool,
               fp32: bool) -> SaliencyCost:
    """The stage's passes for a cell with `n_test` test images (null control when `quantized`,
    sanity check when `fp32`)."""
    cfg = settings if isinstance(settings, SaliencyConfig) else SaliencyConfig(**settings)
    n = min(cfg.n_samples, n_test)
    explain = sum(explain_passes(cfg, m) for m in cfg.methods)
    backward = n * explain * (1 + cfg.sensitivity_samples)
    if quantized:
        backward += n * explain
    if fp32:
        backward += min(cfg.sanity_images, n) * max(cfg.sanity_checkpoints, 2) * explain
    curves = 2 * (cfg.deletion_steps + 1) * (len(cfg.methods) + 1)
    return SaliencyCost(backward, n * (curves + 1))


def plan_cost(plan: Any, todo: set[str], rows: list[Any]) -> tuple[float, int]:
    """(seconds, images through the model) of the saliency stage of the cells `todo` of a
    bench.runner.plan.Plan, timed with the estimate rows' training steps (EstimateRow)."""
    from bench.runner.plan import MissingData

    step = {(r.backbone, r.method, r.image_size): r.step_seconds for r in rows}
    seconds, images = 0.0, 0
    for cell in plan.cells:
        cfg = cell.config
        settings = cfg.stages.get("saliency")
        if cell.cell_id not in todo or settings is None:
            continue
        data = plan.data[cell.data_key]
        n_test = (round((data.num_images or 0) * cfg.dataset.split.test)
                  if isinstance(data, MissingData) else len(data.split.test))
        cost = stage_cost(settings, n_test=n_test, quantized=cfg.w_bits < 32,
                          fp32=cfg.method == "fp32")
        per_image = step.get((cfg.backbone.name, cfg.method, cfg.dataset.image_size), 0.0)
        seconds += cost.seconds(per_image / cfg.train.batch_size)
        images += cost.forward_backward + cost.forward
    return seconds, images
