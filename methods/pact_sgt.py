"""PACT+SGT: the PACT quantisation scheme trained with the saliency-guided objective."""

from __future__ import annotations

from typing import TYPE_CHECKING

from methods.base import MethodParams, register
from methods.pact import PACT, PACTParams
from methods.sgt import SaliencyObjectiveParams, saliency_objective

if TYPE_CHECKING:
    from bench.objectives import Objective


class PACTSGTParams(PACTParams, SaliencyObjectiveParams):
    pass


@register
class PACTSGT(PACT):
    name = "pact_sgt"
    description = "PACT quantisation trained with the SGT objective"
    Params = PACTSGTParams
    float_control = "sgt_ft"

    def objective(self, params: MethodParams) -> Objective:
        return saliency_objective(params)
