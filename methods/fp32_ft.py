"""FP32+FT: the FP32 parent fine-tuned in float with cross-entropy for the `finetune` epochs.

The equal-budget control of QAT, PACT and LSQ: the same parent, epochs and objective, no
quantisation, so a quantised method beating FP32 can be told apart from the extra training.
"""

from methods.base import Method, MethodParams, register


@register
class FP32FineTuned(Method):
    name = "fp32_ft"
    description = "FP32 parent fine-tuned in float with cross-entropy (control of QAT/PACT/LSQ)"

    def starts_from_parent(self, params: MethodParams) -> bool:
        return True
