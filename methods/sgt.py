"""SGT: saliency-guided training (Ismail, Corrada Bravo and Feizi, NeurIPS 2021), in float.

Each step masks the lowest-saliency input features with random values and adds
kl_weight * KL(f(x) || f(x_masked)) to the cross-entropy (see bench.objectives.SaliencyGuided
for the defaults and their sources). Trains from scratch, or fine-tunes the FP32 parent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from bench.config import MaskValues
from methods.base import Method, MethodParams, register

if TYPE_CHECKING:
    from bench.objectives import Objective


class SaliencyObjectiveParams(MethodParams):
    mask_fraction: float = Field(0.1, ge=0.0, le=1.0)
    kl_weight: float = Field(1.0, ge=0.0)
    mask_values: MaskValues = "uniform"


class SGTParams(SaliencyObjectiveParams):
    init: Literal["scratch", "finetune"] = "scratch"


def saliency_objective(params: SaliencyObjectiveParams) -> Objective:
    from bench.objectives import SaliencyGuided

    return SaliencyGuided(mask_fraction=params.mask_fraction, kl_weight=params.kl_weight,
                          mask_values=params.mask_values)


@register
class SGT(Method):
    name = "sgt"
    description = "Saliency-guided training in FP32 (from scratch or fine-tuned from FP32)"
    Params = SGTParams

    def starts_from_parent(self, params: MethodParams) -> bool:
        return params.init == "finetune"

    def objective(self, params: MethodParams) -> Objective:
        return saliency_objective(params)
