"""SGT: saliency-guided training (Ismail, Corrada Bravo and Feizi, NeurIPS 2021), in float.

Each step masks the lowest-saliency input pixels with random values and adds
kl_weight * KL(f(x) || f(x_masked)) to the cross-entropy; with the defaults one step is the
reference code's step (see bench.objectives.SaliencyGuided for what is and is not equivalent).
`saliency_pass` and `mask_values` are stored with the cell's params. Trains from scratch, or
fine-tunes the FP32 parent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from bench.config import MaskValues, SaliencyPass
from methods.base import Method, MethodParams, register

if TYPE_CHECKING:
    from bench.objectives import Objective


class SaliencyObjectiveParams(MethodParams):
    mask_fraction: float = Field(0.1, ge=0.0, le=1.0)
    kl_weight: float = Field(1.0, ge=0.0)
    mask_values: MaskValues = Field(
        "uniform_per_channel",
        description="random fill: per channel range (reference, RGB) or the image's range")
    saliency_pass: SaliencyPass = Field(
        "eval", description="eval: saliency from an eval-mode pass (reference); shared: from the "
                            "loss's train-mode forward (one pass cheaper, exact without BN)")


class SGTParams(SaliencyObjectiveParams):
    init: Literal["scratch", "finetune"] = "scratch"


def saliency_objective(params: SaliencyObjectiveParams) -> Objective:
    from bench.objectives import SaliencyGuided

    return SaliencyGuided(mask_fraction=params.mask_fraction, kl_weight=params.kl_weight,
                          mask_values=params.mask_values, saliency_pass=params.saliency_pass)


@register
class SGT(Method):
    name = "sgt"
    description = "Saliency-guided training in FP32 (from scratch or fine-tuned from FP32)"
    Params = SGTParams

    def starts_from_parent(self, params: MethodParams) -> bool:
        return params.init == "finetune"

    def objective(self, params: MethodParams) -> Objective:
        return saliency_objective(params)
