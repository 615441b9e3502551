"""The robustness stage's cost a cell, for `bench run --dry-run`'s estimate.

Per evaluated image (n = min(n_images, test images)): one clean and C x S corrupted forward
passes of the torch model, and as many through ONNX Runtime when `onnx` is set (timed on the
file the deploy stage exports for a probe model; counted whether or not the grid deploys, an
upper bound), plus making the C x S corrupted copies, timed per corruption and severity and
charged once per data set (test-split size and image size) and settings, to the first cell of
the estimate that needs them: every other cell reads them from the cache. With
`saliency_images`, each of them gets 1 + C x S maps of `saliency_method` (its declared gradient
passes each, bench/saliency/methods.py). Statistics and the result file are not counted.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from bench.robustness.corruptions import corrupt_batch
from bench.robustness.settings import STAGE, RobustnessSettings
from bench.runner.estimate.costs import CellShape
from bench.runner.estimate.stage_costs import ModelProbe, register_stage_cost

PROBE_BATCH = 4


def evaluated(settings: RobustnessSettings, n_test: int) -> int:
    return n_test if settings.n_images is None else min(settings.n_images, n_test)


@register_stage_cost(STAGE)
def robustness_cost(settings: RobustnessSettings, shape: CellShape, probe: ModelProbe) -> float:
    n = evaluated(settings, shape.n_test)
    passes = n * (1 + len(settings.corruptions) * len(settings.severities))
    seconds = passes * probe.forward_image_s(settings.batch_size)

    def corrupt_s() -> float:
        def one(name: str, severity: int) -> Callable[[torch.Tensor], object]:
            def run(images: torch.Tensor) -> object:
                return corrupt_batch(images.numpy(), name, severity, settings.seed,
                                     np.arange(len(images)))
            return run
        return sum(probe.per_image_s(one(c, s), PROBE_BATCH)
                   for c in settings.corruptions for s in settings.severities)

    sets = (tuple(settings.corruptions), tuple(settings.severities), settings.seed)
    charged = probe.shared((STAGE, "made", shape.n_test, shape.image_size, n, *sets),
                           lambda: {"done": False})
    if not charged["done"]:
        charged["done"] = True
        seconds += n * probe.shared((STAGE, "corrupt", probe.image_size, *sets), corrupt_s)
    if settings.saliency_images:
        from bench.saliency.methods import SALIENCY_METHODS
        from bench.saliency.suite import SaliencyConfig

        scfg = SaliencyConfig(methods=[settings.saliency_method])
        k = min(settings.saliency_images, shape.n_test)
        maps = k * (1 + len(settings.corruptions) * len(settings.severities))
        seconds += (maps * SALIENCY_METHODS.get(settings.saliency_method).passes(scfg)
                    * probe.gradient_image_s(scfg.batch_size))
    if settings.onnx:
        from bench.deploy.cost import OnnxRunner
        from bench.deploy.settings import DeploySettings
        from bench.deploy.stage import ONNX_FILE
        from bench.store.deploy import DEPLOY_STAGE

        def onnx_s() -> float:
            _, folder = probe.stage_seconds(DEPLOY_STAGE, DeploySettings(), 2)
            return probe.per_image_s(OnnxRunner(folder / ONNX_FILE), settings.batch_size)

        seconds += passes * probe.shared((STAGE, "onnx", probe.backbone, probe.image_size,
                                          probe.quantized), onnx_s)
    return seconds
