"""FP32+fold+FT: the FP32 parent in the quantised methods' graph, fine-tuned in float.

The control of the effect of quantisation in QAT, PACT and LSQ. The parent is converted exactly
as they convert it (`bench.quant.fold`: Brevitas' graph preprocessing, BatchNorm folded into
the convolutions, ReLU6 kept), which is their graph with quantisation disabled, and is
fine-tuned with the same `finetune` config and cross-entropy; nothing is quantised. So a
quantised method differs from it by quantisation alone, while `fp32_ft` (fine-tuned with live
BatchNorm) stays the training-budget control, and fp32_fold_ft against fp32_ft is what
folding BatchNorm does to fine-tuning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from methods.base import Method, MethodContext, MethodParams, register

if TYPE_CHECKING:
    import torch
    from torch import nn


@register
class FP32FoldFineTuned(Method):
    name = "fp32_fold_ft"
    description = ("FP32 parent in the quantised graph (BN folded), fine-tuned in float "
                   "(quantisation control of QAT/PACT/LSQ)")
    control_role = ("the float control of the effect of quantisation: the FP32 parent in the "
                    "quantised methods' graph (BatchNorm folded), fine-tuned like them, "
                    "nothing quantised")

    def starts_from_parent(self, params: MethodParams) -> bool:
        return True

    def rebuild(self, model: nn.Module, w_bits: int, a_bits: int, params: MethodParams,
                example_input: torch.Tensor) -> nn.Module:
        from bench.quant import fold

        return fold(model)

    def prepare(self, model: nn.Module, ctx: MethodContext, params: MethodParams) -> nn.Module:
        from bench.quant import fold

        return fold(model).train(model.training)
