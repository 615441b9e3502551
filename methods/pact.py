"""PACT (Choi et al. 2018): QAT with a learned clipping value alpha per activation quantiser.

Alphas start from calibration statistics (a high percentile of each activation; with a large
initial alpha on unclipped data the clipping gradient is almost zero) and are trained with an
L2 penalty. The learned alphas are stored with the cell.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field

from methods.base import MethodParams, Penalty, register
from methods.ptq import QuantParams
from methods.qat import QAT

if TYPE_CHECKING:
    from torch import nn


class PACTParams(QuantParams):
    alpha_l2: float = Field(2e-4, ge=0, description="weight of the L2 penalty on the alphas")


@register
class PACT(QAT):
    name = "pact"
    description = "PACT: QAT with learned activation clipping (alpha), L2-regularised"
    Params = PACTParams
    learned_clip = True

    def penalty(self, params: MethodParams) -> Penalty | None:
        from bench.quant import clip_penalty

        weight = params.alpha_l2
        return lambda model: weight * clip_penalty(model)

    def extras(self, model: nn.Module, params: MethodParams) -> dict[str, Any]:
        from bench.quant import clip_values

        return {**super().extras(model, params), "pact_alphas": clip_values(model)}
