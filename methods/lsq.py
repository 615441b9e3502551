"""LSQ (Esser, McKinstry, Bablani, Appuswamy and Modha, "Learned Step Size Quantization",
ICLR 2020): QAT with a learned step size for every weight and activation quantiser.

The step s of each quantiser is a parameter trained with the paper's gradient, scaled by
1 / sqrt(N * Q_P), and initialised to 2 * mean(|v|) / sqrt(Q_P) (weights from the FP32 parent,
activations, wherever their quantiser sits (layer outputs, layer and Sigmoid inputs), from the
calibration batches); see `bench.quantizers`. Steps get no weight decay. The activation steps
are stored with the cell.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from methods.base import MethodParams, register
from methods.ptq import QuantParams
from methods.qat import QAT

if TYPE_CHECKING:
    from torch import nn


@register
class LSQ(QAT):
    name = "lsq"
    description = "LSQ: QAT with learned step sizes for weights and activations"
    Params = QuantParams
    scheme = "lsq"

    def extras(self, model: nn.Module, params: MethodParams) -> dict[str, Any]:
        from bench.quant import lsq_steps

        steps = {name: float(step.detach()) for name, step in lsq_steps(model).items()
                 if step.numel() == 1 and "weight_quant" not in name}
        return {**super().extras(model, params), "lsq_activation_steps": steps}
