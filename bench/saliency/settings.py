"""The `saliency` stage's grid settings, declared without torch (grids are planned, and cell
ids computed, from them); the stage itself is bench/saliency/stage.py, the suite it runs
bench/saliency/suite.py."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bench.runner.stages import register_stage
from bench.saliency.methods import SALIENCY_METHODS

RENAMED = {"noise_std": "sensitivity_radius", "noise_samples": "sensitivity_samples"}
"""Settings renamed when max-sensitivity moved from Gaussian noise to the uniform L-inf ball."""


class SaliencyConfig(BaseModel):
    """Saliency-stability settings.

    methods: saliency methods, the first is the primary one; n_samples: images evaluated per
    cell (the suite takes the first n_samples; the `saliency` stage draws them from the test
    split with `seed`); topk: pixel fraction of the top-k IoUs; sensitivity_radius /
    sensitivity_samples: radius (model-input units) of the uniform L-infinity ball and number of
    draws of max-sensitivity (Yeh et al. 2019; Captum draws 10 by default); sensitivity_images:
    per saliency method, on how many of the evaluated images its max-sensitivity is computed
    (the first k of one seeded permutation of them, `detail_positions`: the same images for
    every method and cell; a method not named gets every evaluated image), as its cost is
    sensitivity_samples maps an image; smoothgrad_std /
    smoothgrad_samples: SmoothGrad noise; ig_steps: Integrated-Gradients steps; gradcam_layer:
    dotted module name whose output Grad-CAM reads, None = the input of the final global pooling;
    deletion_steps: pixel-flipping steps; sanity_images / sanity_checkpoints / sanity_threshold:
    the cascading-randomisation sanity check of every cell (bench.saliency.sanity), run on the
    first sanity_images images of the same permutation (0: not run), maps compared at
    sanity_checkpoints points of the cascade, a method fails at mean Spearman >=
    sanity_threshold after full randomisation;
    batch_size: images (or perturbed copies, curve steps) per forward pass; overlays: PNG
    overlays the stage writes (first method, first images); threads: torch intra-op threads while
    the stage runs (None: unchanged); seed: image subset, SmoothGrad and sensitivity noise,
    random pixel order, randomised weights.
    """

    model_config = ConfigDict(extra="forbid")

    methods: list[str] = Field(default_factory=lambda: ["gradient", "integrated_gradients",
                                                        "smoothgrad", "gradcam"], min_length=1)
    n_samples: int = Field(64, ge=1)
    topk: float = Field(0.1, gt=0.0, le=1.0)
    sensitivity_radius: float = Field(0.05, ge=0.0)
    sensitivity_samples: int = Field(10, ge=1)
    sensitivity_images: dict[str, Annotated[int, Field(ge=1)]] = Field(default_factory=dict)
    ig_steps: int = Field(16, ge=1)
    smoothgrad_samples: int = Field(8, ge=1)
    smoothgrad_std: float = Field(0.15, ge=0.0)
    gradcam_layer: str | None = None
    deletion_steps: int = Field(16, ge=1)
    sanity_images: int = Field(8, ge=0)
    sanity_checkpoints: int = Field(4, ge=1)
    sanity_threshold: float = Field(0.5, ge=-1.0, le=1.0)
    batch_size: int = Field(32, ge=1)
    overlays: int = Field(3, ge=0)
    threads: int | None = Field(None, ge=1)
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, raw: Any) -> Any:
        if isinstance(raw, dict):
            old = [k for k in RENAMED if k in raw]
            if old:
                raise ValueError("; ".join(
                    f"'{k}' is now '{RENAMED[k]}' (max-sensitivity draws uniformly from an "
                    "L-infinity ball, Yeh et al. 2019)" for k in old))
        return raw

    def model_post_init(self, _: object) -> None:
        unknown = [m for m in self.methods if m not in SALIENCY_METHODS]
        if unknown:
            raise ValueError(f"unknown saliency methods {unknown}; known: "
                             f"{SALIENCY_METHODS.names()}")
        stray = [m for m in self.sensitivity_images if m not in self.methods]
        if stray:
            raise ValueError(f"sensitivity_images names {stray}, which are not among methods "
                             f"{self.methods}")

    def sensitivity_count(self, method: str, n: int) -> int:
        """Images of the n evaluated whose max-sensitivity is computed for `method`."""
        return min(self.sensitivity_images.get(method, n), n)


def detail_positions(n: int, seed: int) -> list[int]:
    """A seeded permutation of the positions 0..n-1 of the evaluated images: the first k of it
    are the images of a metric computed on k of them (max-sensitivity under sensitivity_images,
    the sanity check), so smaller subsets are nested in larger ones and every cell of a data set
    uses the same images. Random, not the first k positions: the evaluated images are sorted by
    data-set index, which an image folder orders by class."""
    import numpy as np

    return [int(i) for i in np.random.default_rng([seed, DETAIL_STREAM]).permutation(n)]


DETAIL_STREAM = 16
"""Second word of the permutation's seed, so it is not the evaluation draw's stream."""


register_stage("saliency", SaliencyConfig, runs="bench.saliency.stage:saliency_stage",
               columns="bench.saliency.columns:declared_columns")
