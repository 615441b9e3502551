"""QAT: the calibrated PTQ graph fine-tuned with fake quantisation (straight-through estimator).

Weights train through the straight-through estimator; activation ranges are never trained:
they start from calibration and then follow an exponential moving average of the range each
training batch shows (weight ``range_momentum``; 0 keeps the calibrated ranges), frozen in eval
mode, as PyTorch's and TensorFlow's QAT do (Jacob et al., "Quantization and Training of Neural
Networks for Efficient Integer-Arithmetic-Only Inference", CVPR 2018, section 3).
"""

from pydantic import Field

from bench.config import DEFAULT_RANGE_MOMENTUM
from methods.base import MethodParams, register
from methods.ptq import PTQ, QuantParams


class QATParams(QuantParams):
    range_momentum: float = Field(
        DEFAULT_RANGE_MOMENTUM, ge=0.0, le=1.0,
        description="moving-average weight of each training batch's observed activation range; "
                    "0 freezes the calibrated ranges")


@register
class QAT(PTQ):
    name = "qat"
    description = "Quantisation-aware fine-tuning of the FP32 parent (fake quant, STE, " \
                  "observed activation ranges)"
    Params = QATParams
    float_control = "fp32_fold_ft"

    def trains(self, params: MethodParams) -> bool:
        return True
