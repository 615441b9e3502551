"""PACT (Choi et al., "PACT: Parameterized Clipping Activation for Quantized Neural Networks",
arXiv:1805.06085, 2018): QAT with a learned clipping value alpha per activation quantiser.

Every ReLU output is clip(x, 0, alpha) quantised to 2^a unsigned levels; alpha gets PACT's
gradient (1 where x >= alpha, 0 elsewhere; straight-through inside the range), an L2 penalty
``alpha_l2 * alpha^2`` and no weight decay. SiLU and Hardswish outputs get the symmetric form
clip(x, -alpha, alpha) (an extension: the paper clips ReLUs). Alphas start from calibration
statistics (a high percentile of each activation; with a large initial alpha on unclipped data
the clipping gradient is almost zero). Other activations (the input, residual sums) keep
observed ranges as in QAT. The learned alphas are stored with the cell.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field

from methods.base import MethodParams, Penalty, register
from methods.qat import QAT, QATParams

if TYPE_CHECKING:
    from torch import nn


class PACTParams(QATParams):
    alpha_l2: float = Field(2e-4, ge=0, description="weight of the L2 penalty on the alphas")


@register
class PACT(QAT):
    name = "pact"
    description = "PACT: QAT with learned activation clipping (alpha), L2-regularised"
    Params = PACTParams
    scheme = "pact"

    def penalty(self, params: MethodParams) -> Penalty | None:
        from bench.quant import clip_penalty

        weight = params.alpha_l2
        return lambda model: weight * clip_penalty(model)

    def extras(self, model: nn.Module, params: MethodParams) -> dict[str, Any]:
        from bench.quant import clip_values

        return {**super().extras(model, params), "pact_alphas": clip_values(model)}
