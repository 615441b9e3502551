"""FP32+FT: the FP32 parent fine-tuned in float with cross-entropy for the `finetune` epochs.

The training-budget control of QAT, PACT and LSQ: the same parent, epochs and objective, no
quantisation, so a quantised method beating FP32 can be told apart from the extra training.
It fine-tunes the parent's own graph (live BatchNorm); the control of the effect of
quantisation, in the quantised methods' graph, is `fp32_fold_ft`.
"""

from methods.base import Method, MethodParams, register


@register
class FP32FineTuned(Method):
    name = "fp32_ft"
    description = "FP32 parent fine-tuned in float with cross-entropy (training-budget " \
                  "control of QAT/PACT/LSQ)"
    control_role = ("the training-budget control: the FP32 parent in its own graph (live "
                    "BatchNorm), fine-tuned like the quantised methods")

    def starts_from_parent(self, params: MethodParams) -> bool:
        return True
