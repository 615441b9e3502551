"""Training objectives, independent of quantisation: cross-entropy and saliency-guided training.

A method is a quantisation scheme x an objective (PACT+SGT = PACT fake-quant model trained with
`SaliencyGuided`). An objective maps (model, x, y) to the scalar loss to backpropagate and the
detached logits of the unmasked input, for metrics.

SGT reference: Ismail, Corrada Bravo, Feizi, "Improving Deep Learning Interpretability by
Saliency Guided Training", NeurIPS 2021; code github.com/ayaabdelsalam91/saliency_guided_training
(`Scripts/interpretable.py` `train`, `Scripts/Helper.py`, `Scripts/train_CIFAR.py`), cited below
as "the reference code".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.config import Granularity, MaskValues, SaliencyPass


class Objective(Protocol):
    """A training objective: `loss` returns (scalar loss to backprop, detached clean logits)."""

    @property
    def name(self) -> str: ...

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]: ...


@dataclass(frozen=True)
class CrossEntropy:
    """Plain cross-entropy on the model's logits."""

    name: str = field(default="ce", init=False)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        logits = model(x)
        return F.cross_entropy(logits, y), logits.detach()


def _target_logit_grad(logits: Tensor, x: Tensor, y: Tensor, retain_graph: bool) -> Tensor:
    """d(sum_i logits[i, y_i]) / dx, computed for x only (parameter .grad is not touched)."""
    target = logits.gather(1, y.unsqueeze(1)).sum()
    (grad,) = torch.autograd.grad(target, x, retain_graph=retain_graph)
    return grad


def input_gradient(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """d logit_y / d x per input feature (shape of x), in the model's current train/eval mode.

    One forward and one input-only backward; parameter gradients are neither computed nor
    accumulated. As in captum's `Saliency`, the gradient is that of the summed target logits,
    which is the per-sample gradient whenever samples do not interact (eval-mode BatchNorm).
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        return _target_logit_grad(model(x), x, y, retain_graph=False)


def input_saliency(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """|d logit_y / d x| per input feature (see `input_gradient`)."""
    return input_gradient(model, x, y).abs()


def pixel_saliency(gradient: Tensor) -> Tensor:
    """Per-pixel saliency (N, 1, H, W): |mean over channels of the signed input gradient|, the
    reference code's `.mean(1)` followed by its `--abs`."""
    return gradient.mean(dim=1, keepdim=True).abs()


def masked_count(fraction: float, n: int) -> int:
    """How many of n features are masked: none at fraction 0, else max(1, int(fraction * n)),
    the reference code's `get_SingleMask` count (floor, at least one)."""
    return 0 if fraction == 0 else max(1, int(fraction * n))


def _uniform_fill(x: Tensor, mode: MaskValues, generator: torch.Generator | None) -> Tensor:
    """Values drawn uniformly from each sample's [min, max] ("uniform") or per channel."""
    groups = x.reshape(x.shape[0], -1) if mode == "uniform" else x.reshape(*x.shape[:2], -1)
    lo, hi = torch.aminmax(groups, dim=-1)
    view = groups.shape[:-1] + (1,) * (x.dim() + 1 - groups.dim())
    lo, hi = lo.reshape(view), hi.reshape(view)
    values = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return values.mul_(hi - lo).add_(lo).clamp_(min=lo, max=hi)


def _broadcasts_per_sample(saliency: Tensor, x: Tensor) -> bool:
    """True if saliency has x's rank and batch size and each other dim equals x's or is 1."""
    return (saliency.dim() == x.dim() and saliency.shape[0] == x.shape[0]
            and all(s in (1, d) for s, d in zip(saliency.shape[1:], x.shape[1:], strict=True)))


def mask_lowest_saliency(
    x: Tensor,
    saliency: Tensor,
    fraction: float,
    generator: torch.Generator | None = None,
    mask_values: MaskValues = "uniform_per_channel",
) -> tuple[Tensor, Tensor]:
    """Replace each sample's `masked_count(fraction, n)` lowest-saliency features by random
    values.

    `saliency` has x's batch size and a shape broadcastable to x; its elements per sample are
    the n features ranked (a (N, 1, H, W) saliency masks whole pixels across channels). Ties
    are broken by `torch.topk`. Replacement values come from `_uniform_fill` with `generator`,
    so the result is deterministic under a seeded generator. Returns (masked x, detached; bool
    mask of replaced elements, shape of x).
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    if not _broadcasts_per_sample(saliency, x):
        raise ValueError(f"saliency shape {tuple(saliency.shape)} does not broadcast to "
                         f"x shape {tuple(x.shape)} with the same batch size")
    flat = saliency.detach().reshape(saliency.shape[0], -1)
    k = masked_count(fraction, flat.shape[1])
    idx = torch.topk(flat, k, dim=1, largest=False, sorted=False).indices
    low = torch.zeros(flat.shape, dtype=torch.bool, device=x.device).scatter_(1, idx, True)
    mask = low.reshape(saliency.shape).expand(x.shape).contiguous()
    x = x.detach()
    return torch.where(mask, _uniform_fill(x, mask_values, generator), x), mask


def kl_divergence(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    """KL(softmax(p) || softmax(q)), averaged over the batch; differentiable in both arguments."""
    return F.kl_div(F.log_softmax(logits_q, dim=1), F.log_softmax(logits_p, dim=1),
                    reduction="batchmean", log_target=True)


@dataclass(frozen=True)
class SaliencyGuided:
    """Saliency-guided training (SGT): CE(f(x), y) + kl_weight * KL(f(x) || f(x_masked)).

    x_masked replaces the `mask_fraction` lowest-saliency features of x by random values. One
    step of the reference code's image branch (`Scripts/interpretable.py` `train` with
    `isMNIST` off, `--RandomMasking --abs`; `Helper.get_SingleMask`, `Helper.fill_SingleMask`)
    is reproduced exactly with the defaults (tests/test_objectives.py checks the masked set and
    the loss against a direct re-implementation):

    - saliency_pass="eval": the saliency comes from a separate pass with the model in eval mode
      (running BatchNorm statistics, no dropout), as the reference does (`model.eval()`,
      captum `Saliency`, `model.train()`); then f(x) and f(x_masked) in the model's own mode.
      "shared" reuses the loss's forward of x instead (an input-only gradient with the graph
      retained), which saves one forward and one input backward per step but is exact only for
      models whose train mode computes the same function as eval mode: with train-mode batch
      norm the saliency uses batch statistics and the summed-logit gradient picks up
      O(1/batch) cross-sample terms, so the masked set differs. Every backbone here has batch
      norm.
    - granularity="pixel": pixels ranked by |mean over channels of d logit_y / d x| (the
      reference's `.mean(1)` then `--abs`) and masked in every channel; "feature" ranks and
      masks each (c, h, w) element by |d logit_y / d x|. Without `--abs` the reference ranks
      the signed mean, masking the most negative gradients rather than the smallest; that
      variant is not offered.
    - the count: `masked_count`, max(1, int(mask_fraction * H * W)) pixels (floor, as the
      reference); ties by `torch.topk`, as the reference.
    - mask_values="uniform_per_channel": each masked pixel of channel c gets U(min_c, max_c) of
      the image's channel c (reference `fill_SingleMask` "randomMask"); "uniform" draws from the
      image's range over all channels (the reference's MNIST branch). Values come from
      `generator` (the reference uses NumPy's global RNG: same distribution, other numbers).
    - mask_fraction=0.1: `--featuresDroped` default of the reference's `train_CIFAR.py`
      and `train_MNIST.py` (its README runs MNIST with 0.5).
    - kl_weight=1.0 and KL(f(x) || f(x_masked)), 'batchmean', gradients through both outputs:
      the reference's `loss = Modelloss + KLloss` with `KLDivLoss(log_softmax(masked),
      softmax(clean))` in `train_CIFAR.py`.

    Not reproduced: the reference's MNIST branch (`isMNIST`, which counts int(k * C * H * W)
    features and masks only the first channel's plane when C > 1), its data loading, optimiser
    and schedule (the grid's `train` settings apply), and its NumPy random numbers.

    generator: a seeded torch.Generator on x's device makes the masking values reproducible
    (None uses the global RNG). It is stateful and advances every step.
    """

    mask_fraction: float = 0.1
    kl_weight: float = 1.0
    mask_values: MaskValues = "uniform_per_channel"
    granularity: Granularity = "pixel"
    saliency_pass: SaliencyPass = "eval"
    generator: torch.Generator | None = field(default=None, compare=False, repr=False)
    name: str = field(default="sgt", init=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.mask_fraction <= 1.0:
            raise ValueError(f"mask_fraction must be in [0, 1], got {self.mask_fraction}")
        if self.kl_weight < 0.0:
            raise ValueError(f"kl_weight must be >= 0, got {self.kl_weight}")
        for value, allowed in ((self.mask_values, MaskValues), (self.granularity, Granularity),
                               (self.saliency_pass, SaliencyPass)):
            if value not in get_args(allowed):
                raise ValueError(f"{value!r} is not one of {get_args(allowed)}")

    def _logits_and_gradient(self, model: nn.Module, x: Tensor, y: Tensor
                             ) -> tuple[Tensor, Tensor]:
        if self.saliency_pass == "eval":
            was_training = model.training
            model.eval()
            try:
                gradient = input_gradient(model, x, y)
            finally:
                model.train(was_training)
            return model(x), gradient
        x_in = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(x_in)
            gradient = _target_logit_grad(logits, x_in, y, retain_graph=True)
        return logits, gradient

    def masked(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(logits f(x) with their graph, x_masked, bool mask of the replaced elements)."""
        logits, gradient = self._logits_and_gradient(model, x, y)
        saliency = pixel_saliency(gradient) if self.granularity == "pixel" else gradient.abs()
        x_masked, mask = mask_lowest_saliency(x, saliency, self.mask_fraction, self.generator,
                                              self.mask_values)
        return logits, x_masked, mask

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        logits, x_masked, _ = self.masked(model, x, y)
        kl = kl_divergence(logits, model(x_masked))
        return F.cross_entropy(logits, y) + self.kl_weight * kl, logits.detach()
