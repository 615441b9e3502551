"""Sanity check of the saliency methods: cascading model-parameter randomisation.

Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018: a saliency method whose maps
barely change when the model's weights are replaced by random ones does not explain the model
(it shows the input's structure, an edge detector would do as well), so its stability under
quantisation says nothing about the model either. On any cell (FP32, float or fake-quant: a
quantised model's Brevitas layers are re-initialised under their trained quantisers, and its maps
are straight-through-gradient maps), the layers are re-initialised from the top (the classifier)
down, cumulatively; at `checkpoints` points of the cascade (after the top layer, then evenly
spaced, the last after every layer) the maps of the randomised model
are compared with the trained model's maps of the same images by Spearman rank correlation (and
SSIM). A method fails when its mean Spearman after the whole model is randomised is at least
`threshold` (default 0.5); the figure and the threshold are stored with the verdict.

Randomisation follows Quantus' `MPRT` (`get_random_layer_generator`, order "top_down"): the
layers are the modules with a `reset_parameters` method (convolutions, linear layers, batch norm,
which also resets its running statistics) in reverse `named_modules` order, each reset after
`torch.manual_seed(seed + 1)`; the global RNG is restored afterwards. The cost is bounded: the
first `images` evaluated images and `checkpoints` sets of maps per method.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bench.saliency import metrics as M
from bench.saliency.columns import describe, json_float

Explain = Callable[[nn.Module, str, Tensor, Tensor], np.ndarray]
"""(model, saliency method, images, targets) -> maps (N, H, W)."""


def randomisable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layers the cascade re-initialises, top first (Quantus' order)."""
    return [(name, m) for name, m in model.named_modules() if hasattr(m, "reset_parameters")][::-1]


def checkpoint_steps(n_layers: int, checkpoints: int) -> list[int]:
    """Cascade positions (number of layers randomised, 1..n_layers) at which maps are compared:
    the top layer alone, evenly spaced steps, and every layer."""
    if n_layers < 1:
        raise ValueError("the model has no layer with reset_parameters to randomise")
    steps = np.linspace(1, n_layers, num=min(max(checkpoints, 1), n_layers))
    return sorted({int(s) for s in np.rint(steps)} | {n_layers})


def cascade(model: nn.Module, seed: int, steps: list[int]) -> Iterator[tuple[str, nn.Module]]:
    """A randomised copy of `model` at each step of `steps`: (name of the last layer reset, the
    copy with that many top layers re-initialised). The copy is reused between steps."""
    randomised = copy.deepcopy(model)
    layers = randomisable_layers(randomised)
    wanted = set(steps)
    with torch.random.fork_rng(devices=[]):
        for done, (name, layer) in enumerate(layers, start=1):
            torch.manual_seed(seed + 1)
            layer.reset_parameters()
            if done in wanted:
                yield name, randomised


@dataclass(frozen=True)
class SanityResult:
    """Per saliency method: mean Spearman and SSIM at each checkpoint, per-image Spearman after
    full randomisation, and the verdict."""

    layers: list[str]
    steps: list[int]
    n_layers: int
    spearman: dict[str, list[float | None]]
    ssim: dict[str, list[float | None]]
    final: dict[str, np.ndarray]
    threshold: float

    def verdict(self, method: str) -> tuple[bool | None, str | None]:
        """(passed, reason it failed or could not be judged)."""
        final = self.spearman[method][-1]
        if final is None:
            return None, "maps of the randomised model are constant: Spearman undefined"
        if final >= self.threshold:
            return False, (f"maps survive model-parameter randomisation: Spearman {final:.2f} "
                           f">= {self.threshold} between the trained and the fully randomised "
                           "model (Adebayo et al. 2018)")
        return True, None

    def describe(self, images: list[int]) -> dict[str, Any]:
        methods = {}
        for method in self.spearman:
            passed, reason = self.verdict(method)
            methods[method] = {"spearman": self.spearman[method], "ssim": self.ssim[method],
                               "final_spearman": describe(self.final[method]),
                               "passed": passed, "reason": reason}
        return {"test": "cascading model-parameter randomisation (Adebayo et al. 2018)",
                "statistic": "spearman", "threshold": self.threshold, "images": images,
                "n_layers": self.n_layers, "steps": self.steps, "layers": self.layers,
                "methods": methods}


def _mean(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return json_float(finite.mean()) if finite.size else None


def randomisation_check(model: nn.Module, methods: list[str], images: Tensor, targets: Tensor,
                        trained_maps: dict[str, np.ndarray], explain: Explain, *,
                        checkpoints: int = 4, threshold: float = 0.5, seed: int = 0
                        ) -> SanityResult:
    """Cascading randomisation of `model` (left untouched) against `trained_maps` (the trained
    model's maps of `images`, per method)."""
    steps = checkpoint_steps(len(randomisable_layers(model)), checkpoints)
    spearman: dict[str, list[float | None]] = {m: [] for m in methods}
    ssim: dict[str, list[float | None]] = {m: [] for m in methods}
    final: dict[str, np.ndarray] = {}
    layers = []
    for name, randomised in cascade(model, seed, steps):
        layers.append(name)
        for method in methods:
            maps = explain(randomised, method, images, targets)
            rho = M.spearman(trained_maps[method], maps)
            spearman[method].append(_mean(rho))
            ssim[method].append(_mean(M.ssim(trained_maps[method], maps)))
            final[method] = rho
    return SanityResult(layers, steps, len(randomisable_layers(model)), spearman, ssim, final,
                        threshold)
