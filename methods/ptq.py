"""PTQ: Brevitas graph quantisation of the trained FP32 parent, calibrated on training batches.

No weight is trained. Activation ranges are observed statistics of the calibration batches
(`bench.quant`, scheme "stats"); bias correction is optional.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from bench.config import DEFAULT_RANGE_MOMENTUM
from methods.base import Method, MethodContext, MethodParams, register

if TYPE_CHECKING:
    import torch
    from torch import nn

    from bench.quant import Scheme


class QuantParams(MethodParams):
    """Options every quantised method shares."""

    per_channel: bool = True
    first_last_bits: int | None = Field(8, ge=2, le=8)


class PTQParams(QuantParams):
    bias_correction: bool = False


@register
class PTQ(Method):
    name = "ptq"
    description = "Post-training quantisation of the FP32 parent: calibrate, no training"
    Params = PTQParams
    quantized = True
    scheme: ClassVar[Scheme] = "stats"

    def starts_from_parent(self, params: MethodParams) -> bool:
        return True

    def trains(self, params: MethodParams) -> bool:
        return False

    def build_quantized(self, model: nn.Module, w_bits: int, a_bits: int, params: MethodParams,
                        example_input: torch.Tensor) -> nn.Module:
        from bench.quant import QuantSpec, quantize

        spec = QuantSpec(w_bits, a_bits, per_channel=params.per_channel,
                         first_last_bits=params.first_last_bits, scheme=self.scheme,
                         range_momentum=getattr(params, "range_momentum",
                                                DEFAULT_RANGE_MOMENTUM))
        return quantize(model, spec, example_input)

    def prepare(self, model: nn.Module, ctx: MethodContext, params: MethodParams) -> nn.Module:
        from bench.quant import calibrate

        qmodel = self.build_quantized(model, ctx.w_bits, ctx.a_bits, params, ctx.example_input)
        calibrate(qmodel, ctx.calibration_batches(),
                  bias_correction=getattr(params, "bias_correction", False))
        return qmodel

    def extras(self, model: nn.Module, params: MethodParams) -> dict[str, Any]:
        from bench.quant import integer_weight_levels

        return {"weight_levels": integer_weight_levels(model)}
