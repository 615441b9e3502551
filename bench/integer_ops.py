"""Quantised SiLU and products whose every node ONNX Runtime runs on an integer kernel.

ONNX Runtime fuses DQ -> Sigmoid -> Q into QLinearSigmoid and DQ, DQ -> Mul -> Q into QLinearMul
(its QDQ selectors, onnxruntime/core/optimizer/qdq_transformer/selectors_actions); a Sigmoid or a
Mul without a quantised input and output runs in float. A float SiLU exports as Sigmoid and Mul
on the dequantised input, and a product of two tensors (a squeeze-excitation's gate times its
feature map) as a Mul whose output nothing quantises until the next layer's input: in a W8A8
EfficientNet-B0 that left 49 Sigmoid and 65 Mul nodes (and the pools that read them) in float.

- ``IntegerSiLU`` computes x * q(sigmoid(q(x))) and quantises the product: its input, its gate
  (unsigned) and its output each have a quantiser, so it exports as QLinearSigmoid + QLinearMul.
- ``IntegerMul`` multiplies two (quantised) tensors and quantises the product: QLinearMul.

Both are Brevitas ``QuantIdentity`` layers whose ``act_quant`` quantises their output, so
Brevitas' graph quantisation treats their output as quantised (the next layer gets no second
input quantiser) and the observers, PACT and LSQ initialisation of ``bench.quant`` see that
quantiser like any other. In float (quantisation disabled) ``IntegerSiLU`` is SiLU exactly.
"""

from __future__ import annotations

from typing import Any

import brevitas.nn as qnn
import torch
from brevitas.quant_tensor import _unpack_quant_tensor


class IntegerSiLU(qnn.QuantIdentity):
    """SiLU with a quantised input, a quantised sigmoid gate and a quantised output."""

    def __init__(self, act_quant: Any, input_quant: Any, gate_quant: Any,
                 return_quant_tensor: bool = True, **kwargs: Any) -> None:
        super().__init__(act_quant=act_quant, return_quant_tensor=return_quant_tensor, **kwargs)
        self.input = qnn.QuantIdentity(act_quant=input_quant, return_quant_tensor=True)
        self.gate = qnn.QuantSigmoid(act_quant=gate_quant, return_quant_tensor=True)

    def forward(self, x: Any) -> Any:
        x = self.input(x)
        return super().forward(_unpack_quant_tensor(x) * _unpack_quant_tensor(self.gate(x)))


class IntegerMul(qnn.QuantIdentity):
    """The product of two tensors, each on its own scale, quantised at the output."""

    def forward(self, x: Any, y: Any) -> Any:  # type: ignore[override]
        product: torch.Tensor = _unpack_quant_tensor(x) * _unpack_quant_tensor(y)
        return super().forward(product)
