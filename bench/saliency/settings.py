"""The `saliency` stage's grid settings, declared without torch (grids are planned, and cell
ids computed, from them); the stage itself is bench/saliency/stage.py, the suite it runs
bench/saliency/suite.py."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from bench.runner.stages import register_stage

SALIENCY_METHODS = ("gradient", "integrated_gradients", "smoothgrad", "gradcam")
"""The saliency methods a grid may name: the keys of bench/saliency/maps.py's METHODS (a test
checks that they agree)."""


class SaliencyConfig(BaseModel):
    """Saliency-stability settings; defaults are sized for a fast smoke run.

    n_samples: images evaluated per cell (the suite takes the first n_samples; the `saliency`
    stage draws them from the test split with `seed`); noise_std/noise_samples: Gaussian input
    noise (model-input units) and draws for max-sensitivity; smoothgrad_std/smoothgrad_samples:
    SmoothGrad noise; ig_steps: Integrated-Gradients steps; gradcam_layer: dotted module name,
    None = last Conv2d; deletion_steps: pixel-flipping steps; overlays: PNG overlays the stage
    writes (first method, first images); threads: torch intra-op threads while the stage runs
    (None: unchanged; 1 avoids thread-barrier stalls on small batches on a busy CPU); seed:
    image subset, SmoothGrad and sensitivity noise.
    """

    model_config = ConfigDict(extra="forbid")

    methods: list[str] = Field(default_factory=lambda: ["gradient", "integrated_gradients",
                                                        "smoothgrad", "gradcam"], min_length=1)
    n_samples: int = Field(64, ge=1)
    topk: float = Field(0.1, gt=0.0, le=1.0)
    noise_std: float = Field(0.05, ge=0.0)
    noise_samples: int = Field(4, ge=1)
    ig_steps: int = Field(16, ge=1)
    smoothgrad_samples: int = Field(8, ge=1)
    smoothgrad_std: float = Field(0.15, ge=0.0)
    gradcam_layer: str | None = None
    deletion_steps: int = Field(16, ge=1)
    batch_size: int = Field(32, ge=1)
    overlays: int = Field(3, ge=0)
    threads: int | None = Field(None, ge=1)
    seed: int = 0

    def model_post_init(self, _: object) -> None:
        unknown = [m for m in self.methods if m not in SALIENCY_METHODS]
        if unknown:
            raise ValueError(f"unknown saliency methods {unknown}; known: "
                             f"{list(SALIENCY_METHODS)}")


register_stage("saliency", SaliencyConfig, runs="bench.saliency.stage:saliency_stage")
