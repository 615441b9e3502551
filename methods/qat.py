"""QAT: the calibrated PTQ graph fine-tuned with fake quantisation (straight-through estimator)."""

from methods.base import MethodParams, register
from methods.ptq import PTQ, QuantParams


@register
class QAT(PTQ):
    name = "qat"
    description = "Quantisation-aware fine-tuning of the FP32 parent (fake quant, STE)"
    Params = QuantParams
    float_control = "fp32_ft"

    def trains(self, params: MethodParams) -> bool:
        return True
