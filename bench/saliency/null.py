"""The null control of the quantisation-stability statistics ("pipeline self-agreement").

A quantised cell's maps differ from its FP32 parent's for two kinds of reasons: quantisation
(and the fine-tuning it needs), which the statistics are meant to measure, and everything else
the quantisation pipeline changes on the way (graph tracing, batch norm folded into the convs,
saliency read through Brevitas modules). The null control isolates the second kind: the cell's
method builds its quantised graph (`Method.build_quantized`) from the cell's FP32 parent, and
that graph, run with quantisation disabled, is explained with the same settings and images and
compared with the parent's stored maps by the same statistics. It should give ~1.0 (>= 0.999
Spearman and SSIM); anything less is an artefact of the pipeline, and it is shown beside every
stability figure.

Why the graph is built from the parent and not taken from the cell: a fine-tuned cell (QAT,
PACT, PACT+SGT, LSQ) no longer has its parent's weights, so its own graph with quantisation
disabled differs from FP32 by the fine-tuning as well, which is neither a pipeline artefact nor
quantisation (the float control `float_control` measures that drift: for QAT, LSQ
and PACT `fp32_fold_ft`, the same graph of the parent fine-tuned the same way, nothing
quantised). For PTQ without bias correction the two graphs have the same weights. Calibration
is skipped: with quantisation disabled no quantiser (and no PACT clip) takes part in the
forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor, nn

from bench.quant import quantization_disabled
from bench.saliency import metrics as M
from bench.saliency.columns import describe
from bench.saliency.suite import SaliencyConfig, maps_for


@dataclass(frozen=True)
class NullControl:
    """Per saliency method and statistic, the per-image values of the null control, or why
    there is none (`skipped`)."""

    values: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    built_from: str | None = None
    skipped: str | None = None

    def describe(self) -> dict[str, Any]:
        if self.skipped is not None:
            return {"skipped": self.skipped}
        return {"built_from": self.built_from, "quantization": "disabled",
                "graph": "the cell's method's quantised graph of its FP32 parent",
                "stats": {m: {k: describe(v) for k, v in res.items()}
                          for m, res in self.values.items()}}


def compare_with_reference(maps: np.ndarray, reference: np.ndarray, topk: float
                           ) -> dict[str, np.ndarray]:
    """The FP32-comparison statistics of `maps` against the reference maps of the same images."""
    return {"spearman_fp32": M.spearman(maps, reference), "ssim_fp32": M.ssim(maps, reference),
            "topk_iou_fp32": M.topk_iou(maps, reference, topk)}


def null_control(null_model: nn.Module, images: Tensor, targets: Tensor,
                 reference_maps: dict[str, np.ndarray], cfg: SaliencyConfig,
                 built_from: str) -> NullControl:
    """Explain `images` with the quantised graph `null_model` with quantisation disabled and
    compare with `reference_maps` (the parent's stored maps of the same images)."""
    values = {}
    with quantization_disabled(null_model):
        for method in cfg.methods:
            ref = reference_maps.get(method)
            if ref is None:
                continue
            maps = maps_for(null_model, method, cfg)(images, targets, np.arange(len(images)))
            values[method] = compare_with_reference(maps, np.asarray(ref), cfg.topk)
    if not values:
        return NullControl(skipped="the reference cell has none of these saliency methods' maps")
    return NullControl(values, built_from)


def null_graph(method: Any, parent: nn.Module, w_bits: int, a_bits: int, params: Any,
               example_input: Tensor) -> nn.Module:
    """`method`'s quantised graph of the FP32 `parent` (uncalibrated), in eval mode."""
    return method.build_quantized(parent.eval(), w_bits, a_bits, params, example_input).eval()
