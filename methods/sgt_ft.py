"""SGT+FT: the FP32 parent fine-tuned in float with the SGT objective for the `finetune` epochs.

The float twin of PACT+SGT: the same parent, epochs and objective, no quantisation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from methods.base import Method, MethodParams, register
from methods.sgt import SaliencyObjectiveParams, saliency_objective

if TYPE_CHECKING:
    from bench.objectives import Objective


@register
class SGTFineTuned(Method):
    name = "sgt_ft"
    description = "FP32 parent fine-tuned in float with the SGT objective (control of PACT+SGT)"
    Params = SaliencyObjectiveParams
    control_role = ("the equal-budget float control of PACT+SGT: the FP32 parent in its own "
                    "graph, fine-tuned with the SGT objective")

    def starts_from_parent(self, params: MethodParams) -> bool:
        return True

    def objective(self, params: MethodParams) -> Objective:
        return saliency_objective(params)
