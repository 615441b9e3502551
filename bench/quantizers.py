"""The quantisers behind `bench.quant`'s schemes, as Brevitas-compatible core modules.

Brevitas builds a quantiser from an injector; these classes replace its scaling (and, for
PACT, its integer quantiser) so that each scheme is the method its name says:

- ``stats`` (PTQ and QAT): :class:`ObservedRangeScaling`. The range is an observed statistic
  (the 99.999th percentile of |x|), averaged over the calibration batches, then tracked as an
  exponential moving average during fine-tuning and frozen in eval mode, like PyTorch's
  ``MovingAverageMinMaxObserver`` and TensorFlow's QAT ranges. It is a buffer: no gradient.
- ``pact`` (Choi et al., "PACT: Parameterized Clipping Activation for Quantized Neural
  Networks", arXiv:1805.06085, 2018): :class:`PACTClip` holds the learned clip alpha and
  :class:`PACTIntQuant` quantises clip(x, 0, alpha) to 2^a levels with PACT's gradients:
  dy/dx = 1 inside [0, alpha) (straight-through), 0 outside; dy/dalpha = 1 where x >= alpha,
  0 elsewhere (eq. 2-3 of the paper). Signed inputs (after SiLU/Hardswish) use the symmetric
  form clip(x, -alpha, alpha), with dy/dalpha = -1 where x <= -alpha.
- ``lsq`` (Esser et al., "Learned Step Size Quantization", ICLR 2020): :class:`LSQStep`, a
  learned step size s for weights and activations, and :class:`LSQIntQuant`, which gives it the
  paper's gradient (dv_hat/ds = round(v/s) - v/s inside the range, -Q_N or Q_P where clipped,
  eq. 3), scaled by g = 1/sqrt(N * Q_P), N the number of weights per step (per output channel
  with per-channel steps) or of activation features per sample; initialised to
  2 * mean(|v|) / sqrt(Q_P) (section 2.1 of the paper).
"""

from __future__ import annotations

import math

import torch
from brevitas import config
from brevitas.core.quant.int_base import IntQuant
from brevitas.nn.quant_layer import QuantNonLinearActLayer
from brevitas.quant import Int8ActPerTensorFloat, Uint8ActPerTensorFloat
from torch import Tensor, nn

from bench.config import DEFAULT_RANGE_MOMENTUM

RANGE_PERCENTILE = 99.999
"""Percentile of |x| a batch contributes to an observed range (Brevitas' activation default)."""
MIN_RANGE = 1e-8
MIN_ALPHA = 1e-3
MIN_STEP = 1e-8
RELU6_MAX = 6.0
"""The largest value a ReLU6 quantiser represents (its range is capped there, see QuantReLU6)."""


def abs_percentile(x: Tensor, q: float = RANGE_PERCENTILE) -> Tensor:
    """The q-th percentile of |x| over all its elements (k-th smallest, k = round(n q / 100))."""
    flat = x.detach().abs().flatten().float()
    k = max(1, min(flat.numel(), round(flat.numel() * q / 100.0)))
    return flat.kthvalue(k).values


class _QuantiserState(nn.Module):
    """Its state may be missing when Brevitas loads a float module's state into the quantised
    one (``brevitas.config.IGNORE_MISSING_KEYS``), as for Brevitas' own scaling modules."""

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if config.IGNORE_MISSING_KEYS:
            own = [k for k in missing_keys if k.startswith(prefix) and "." not in k[len(prefix):]]
            for key in own:
                missing_keys.remove(key)


class ObservedRangeScaling(_QuantiserState):
    """Activation range from observed statistics; ``scale = range / int_threshold``.

    In training mode every forward observes ``abs_percentile(x)``: during Brevitas'
    ``calibration_mode`` (which sets ``momentum`` to None) the range is the plain mean over the
    calibration batches; afterwards it is an exponential moving average with weight
    ``range_momentum`` (0 keeps the calibrated range). Eval mode uses the stored range. The range
    is a buffer and the returned scale is detached: no gradient reaches it.
    """

    def __init__(self, range_momentum: float = DEFAULT_RANGE_MOMENTUM,
                 high_percentile_q: float = RANGE_PERCENTILE,
                 device: torch.device | None = None) -> None:
        super().__init__()
        self.range_momentum = range_momentum
        self.momentum: float | None = range_momentum
        self.collect_stats_steps = 0  # marks the module for Brevitas' calibration_mode
        self.percentile = high_percentile_q
        self.register_buffer("observed_range", torch.ones((), device=device))
        self.register_buffer("observations", torch.zeros((), dtype=torch.long, device=device))

    @torch.no_grad()
    def observe(self, x: Tensor) -> None:
        stat = abs_percentile(x, self.percentile).to(self.observed_range)
        n = int(self.observations)
        if n == 0:
            self.observed_range.copy_(stat)
        elif self.momentum is None:
            self.observed_range.mul_(n / (n + 1)).add_(stat / (n + 1))
        else:
            self.observed_range.lerp_(stat, self.momentum)
        self.observations += 1

    def init_scale(self) -> None:
        """End of calibration (called by Brevitas): moving average from now on."""
        self.momentum = self.range_momentum

    def forward(self, x: Tensor, threshold: Tensor | None = None) -> Tensor:
        if self.training and (self.momentum is None or self.momentum > 0):
            self.observe(x)
        value = self.observed_range.clamp_min(MIN_RANGE)
        if threshold is not None:
            value = value / threshold
        return value.detach()


class PACTClip(_QuantiserState):
    """PACT's learned clip ``alpha`` (a parameter); ``scale = alpha / int_threshold``. With
    ``pact_max_alpha`` (a ReLU6's 6) the alpha in use is capped there."""

    def __init__(self, pact_init_alpha: float = 6.0, pact_max_alpha: float | None = None,
                 device: torch.device | None = None) -> None:
        super().__init__()
        self.max_alpha = pact_max_alpha
        self.alpha = nn.Parameter(torch.tensor(float(pact_init_alpha), device=device))

    def clipped_alpha(self) -> Tensor:
        """The alpha the quantiser uses: the parameter within [MIN_ALPHA, max_alpha]."""
        return self.alpha.clamp(MIN_ALPHA, self.max_alpha)

    def forward(self, x: Tensor, threshold: Tensor | None = None) -> Tensor:
        alpha = self.clipped_alpha()
        return alpha if threshold is None else alpha / threshold


class _ClippedQuantize(torch.autograd.Function):
    """y = scale * round(clamp(x / scale, low, high)), with the gradients of PACT or LSQ.

    Where x / scale is clipped (<= low or >= high): dy/dx = 0 and dy/dscale = low or high.
    Inside: dy/dx = 1 (straight-through) and dy/dscale = round(x/s) - x/s for LSQ
    (``lsq=True``, Esser et al. eq. 3), 0 for PACT (Choi et al. eq. 3, where the clip value is
    alpha = high * scale, so dy/dalpha = 1 above the clip and 0 inside). The clip comes before
    the rounding, as in both papers (Brevitas rounds first, which treats values within half a
    step outside the range as inside).
    """

    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor, low: Tensor, high: Tensor, lsq: bool) -> Tensor:
        u = x / scale
        ctx.save_for_backward(u, low, high)
        ctx.scale_shape, ctx.lsq = scale.shape, lsq
        return torch.round(torch.clamp(u, low, high)) * scale

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None, None, None]:
        u, low, high = ctx.saved_tensors
        above, below = u >= high, u <= low
        inside = ~(above | below)
        grad_x = grad * inside
        d_scale = above * high + below * low
        if ctx.lsq:
            d_scale = d_scale + inside * (torch.round(u) - u)
        grad_scale = grad * d_scale
        dims = [d for d in range(grad.dim()) if d >= len(ctx.scale_shape)
                or ctx.scale_shape[d] == 1]
        grad_scale = grad_scale.sum(dim=dims, keepdim=True) if dims else grad_scale
        return grad_x, grad_scale.reshape(ctx.scale_shape), None, None, None


class _ClippedIntQuant(IntQuant):
    """Brevitas' integer quantiser (zero point 0) computed by ``_ClippedQuantize``; the export
    reads only its range, so it exports like Brevitas' own."""

    lsq: bool = False

    def forward(self, scale: Tensor, zero_point: Tensor, bit_width: Tensor, x: Tensor
                ) -> Tensor:
        x = self.input_view_impl(x)
        return _ClippedQuantize.apply(x, scale, self.min_int(bit_width).to(x),
                                      self.max_int(bit_width).to(x), self.lsq)


class PACTIntQuant(_ClippedIntQuant):
    """PACT's quantiser: no gradient into the scale from inside the clip range."""


class LSQIntQuant(_ClippedIntQuant):
    """LSQ's quantiser: the step gradient of Esser et al. (2020), eq. 3."""

    lsq = True


def _grad_scaled(value: Tensor, g: float) -> Tensor:
    """``value`` in the forward pass, its gradient times ``g`` in the backward pass."""
    return (value - value * g).detach() + value * g


class LSQStep(_QuantiserState):
    """LSQ's learned step size (the scale itself), with the paper's gradient scale.

    ``per_sample``: N counts the features of one sample (activations); otherwise N is the number
    of elements per step (weights). Q_P comes from the quantiser's bit width and sign. With
    ``lsq_max_range`` (a ReLU6's 6) the step in use is capped at ``lsq_max_range / Q_P``.
    """

    def __init__(self, bit_width: int, signed: bool, lsq_per_sample: bool,
                 scaling_shape: tuple[int, ...] = (), lsq_max_range: float | None = None,
                 device: torch.device | None = None) -> None:
        super().__init__()
        self.q_p = lsq_q_p(bit_width, signed)
        self.per_sample = lsq_per_sample
        self.max_step = None if lsq_max_range is None else lsq_max_range / self.q_p
        self.step = nn.Parameter(torch.ones(scaling_shape, device=device))

    def grad_scale(self, x: Tensor) -> float:
        n = x[0].numel() if self.per_sample and x.dim() > 1 else x.numel() // self.step.numel()
        return 1.0 / math.sqrt(max(n, 1) * self.q_p)

    def forward(self, x: Tensor, threshold: Tensor | None = None) -> Tensor:
        return _grad_scaled(self.step.clamp(MIN_STEP, self.max_step), self.grad_scale(x))

    @torch.no_grad()
    def init_from(self, mean_abs: Tensor | float) -> None:
        """The paper's initialisation 2 * mean(|v|) / sqrt(Q_P)."""
        value = 2.0 * torch.as_tensor(mean_abs, dtype=self.step.dtype) / math.sqrt(self.q_p)
        self.step.copy_(value.to(self.step).clamp(MIN_STEP, self.max_step).expand_as(self.step))


def lsq_q_p(bits: int, signed: bool) -> int:
    """LSQ's Q_P: the largest integer level, 2^(b-1) - 1 signed, 2^b - 1 unsigned."""
    return 2 ** (bits - 1) - 1 if signed else 2**bits - 1


class ReLU6(nn.Module):
    """min(max(x, 0), 6), like ``nn.ReLU6`` but not a subclass of ``nn.Hardtanh``: Brevitas
    drops a Hardtanh activation in front of an enabled quantiser and leaves the clipping to
    the quantiser's range, which for an observed or learned range can pass 6 (and with
    quantisation disabled nothing clips at all)."""

    def __init__(self) -> None:  # an explicit signature for Brevitas' injector
        super().__init__()

    def forward(self, x: Tensor) -> Tensor:
        return torch.clamp(x, 0.0, 6.0)


class QuantReLU6(QuantNonLinearActLayer):
    """ReLU6 whose output is quantised (unsigned): it clips at 6 whatever range its quantiser
    observes or learns, and with quantisation disabled it is a ReLU6 (Brevitas' graph
    quantisation turns ReLU6 into a ReLU). It commutes with the requantisation like a ReLU,
    so it is a passthrough activation as Brevitas' ``QuantReLU`` is. `bench.quant` also caps
    its quantiser's range at ``RELU6_MAX`` (an observed range of ReLU6 outputs is capped
    already), so that the exported Clip(0, 6) is redundant and ONNX Runtime fuses it away:
    a range above 6 keeps the Clip, which turns the convolution before it into a float
    FusedConv."""

    def __init__(self, act_quant: object = Uint8ActPerTensorFloat, input_quant: object = None,
                 return_quant_tensor: bool = True, **kwargs: object) -> None:
        super().__init__(act_impl=ReLU6, passthrough_act=True, input_quant=input_quant,
                         act_quant=act_quant, return_quant_tensor=return_quant_tensor, **kwargs)


class QuantSiLU(QuantNonLinearActLayer):
    """SiLU whose output is quantised (PACT cells: a signed learned clip after SiLU).

    ``input_quant`` requantises the input, so that the layer before it ends in a quantiser
    and ONNX Runtime runs it on an integer kernel (without it, that layer runs in float)."""

    def __init__(self, act_quant: object = Int8ActPerTensorFloat, input_quant: object = None,
                 return_quant_tensor: bool = True, **kwargs: object) -> None:
        super().__init__(act_impl=nn.SiLU, passthrough_act=False, input_quant=input_quant,
                         act_quant=act_quant, return_quant_tensor=return_quant_tensor, **kwargs)


class QuantHardswish(QuantNonLinearActLayer):
    """Hardswish whose output is quantised (PACT cells: a signed learned clip after it);
    ``input_quant`` as for :class:`QuantSiLU`."""

    def __init__(self, act_quant: object = Int8ActPerTensorFloat, input_quant: object = None,
                 return_quant_tensor: bool = True, **kwargs: object) -> None:
        super().__init__(act_impl=nn.Hardswish, passthrough_act=False, input_quant=input_quant,
                         act_quant=act_quant, return_quant_tensor=return_quant_tensor,
                         **kwargs)


def observed_range_act(bits: int, signed: bool, range_momentum: float) -> object:
    """An activation quantiser whose range is observed (PTQ calibration, QAT moving average)."""
    base = Int8ActPerTensorFloat if signed else Uint8ActPerTensorFloat
    return base.let(bit_width=bits, scaling_impl=ObservedRangeScaling,
                    range_momentum=range_momentum, update_state_dict_impl=None)


def pact_act(bits: int, signed: bool) -> object:
    """PACT's activation quantiser: unsigned [0, alpha] (ReLU) or symmetric [-alpha, alpha]."""
    base = Int8ActPerTensorFloat.let(narrow_range=True) if signed else Uint8ActPerTensorFloat
    return base.let(bit_width=bits, scaling_impl=PACTClip, int_quant=PACTIntQuant,
                    update_state_dict_impl=None)


def lsq_act(bits: int, signed: bool) -> object:
    """LSQ's activation quantiser: a learned per-tensor step, Q_N..Q_P of the paper."""
    base = Int8ActPerTensorFloat if signed else Uint8ActPerTensorFloat
    return base.let(bit_width=bits, scaling_impl=LSQStep, int_quant=LSQIntQuant,
                    lsq_per_sample=True, update_state_dict_impl=None)


def lsq_weight(base: object) -> object:
    """LSQ's weight quantiser from a Brevitas weight quantiser (its bits and granularity):
    full signed range [-2^(b-1), 2^(b-1) - 1] as in the paper, learned steps."""
    return base.let(narrow_range=False, scaling_impl=LSQStep, int_quant=LSQIntQuant,
                    lsq_per_sample=False)
