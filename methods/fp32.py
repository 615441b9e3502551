"""FP32: the float baseline, trained from scratch with cross-entropy; quantised cells start here."""

from methods import base
from methods.base import Method, register


@register
class FP32(Method):
    name = base.FP32
    description = "Float32 training from scratch with cross-entropy (the baseline and FP32 parent)"
