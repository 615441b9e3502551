"""The deploy stage's cost a cell, for `bench run --dry-run`'s estimate.

Its fixed part (export, ONNX checks, kernel count, packing, MACs) is timed by running the stage
itself on a probe model with a test split of PROBE_IMAGES images; ONNX Runtime's seconds per
image, timed on the file that run exported, cost each further test image (twice over for a
quantised model on a CPU whose U8S8 kernels saturate, where the stage evaluates it with fast
kernels too). Export does not
depend on the method's objective, so one timing serves every method of the same backbone,
image size and precision (float or quantised).
"""

from __future__ import annotations

import functools
from pathlib import Path

import onnxruntime as ort
import torch

from bench.data import normalize
from bench.deploy.runtime import session_config, u8s8_saturates
from bench.deploy.settings import DeploySettings
from bench.deploy.stage import ONNX_FILE, deployed_session
from bench.runner.estimate.costs import CellShape
from bench.runner.estimate.stage_costs import ModelProbe, register_stage_cost
from bench.store.deploy import DEPLOY_STAGE

PROBE_IMAGES = 2


class OnnxRunner:
    """Runs the ONNX file on uint8 images as the stage's onnx_logits does, with its session
    settings (the session opens on the first call, which a probe's warm-up takes)."""

    def __init__(self, path: Path, config: dict[str, str] | None = None) -> None:
        self.path = path
        self.config = config

    @functools.cached_property
    def session(self) -> ort.InferenceSession:
        return deployed_session(self.path, self.config)

    def __call__(self, images: torch.Tensor) -> object:
        name = self.session.get_inputs()[0].name
        return self.session.run(None, {name: normalize(images).numpy()})


@register_stage_cost(DEPLOY_STAGE)
def deploy_cost(settings: DeploySettings, shape: CellShape, probe: ModelProbe) -> float:
    def measure() -> tuple[float, float]:
        fixed, folder = probe.stage_seconds(DEPLOY_STAGE, settings, PROBE_IMAGES)
        configs = [None]
        if probe.quantized and u8s8_saturates():
            configs.append(session_config("fast"))
        return fixed, sum(probe.per_image_s(OnnxRunner(folder / ONNX_FILE, config),
                                            settings.eval_batch_size) for config in configs)

    key = (DEPLOY_STAGE, probe.backbone, probe.image_size, probe.quantized,
           settings.model_dump_json())
    fixed, per_image = probe.shared(key, measure)
    return fixed + max(shape.n_test - PROBE_IMAGES, 0) * per_image
