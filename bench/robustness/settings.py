"""The `robustness` stage's grid settings, declared without torch (grids are planned, and cell
ids computed, from them); the stage itself is bench/robustness/stage.py, its corruptions
bench/robustness/corruptions.py."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from bench.runner.stages import register_stage

STAGE = "robustness"
CORRUPTIONS: tuple[str, ...] = ("gaussian_noise", "motion_blur", "defocus_blur",
                                "jpeg_compression", "brightness", "contrast", "specular_glare")
"""The corruptions the stage knows, in the order the record lists them."""


class RobustnessSettings(BaseModel):
    """Robustness-stage settings.

    corruptions: names from CORRUPTIONS; severities: which of the 5 severities (1..5);
    n_images: test images evaluated (None: the whole test split; else the first n of a seeded
    draw, the same for every cell of a data set); batch_size: images a forward pass; onnx:
    evaluate the deployed ONNX model too when the `deploy` stage (listed before this one) wrote
    it; bootstrap: resamples of the images for the mCE intervals; saliency_images /
    saliency_method: saliency stability under corruption, the Spearman correlation of each
    image's clean and corrupted map (the saliency stage's map of that method with its default
    settings) on that many test images drawn as the saliency stage draws its `n_samples` (the
    same images when the two agree in number and seed; 0: not computed); seed: corruption
    noise (per image, corruption and severity), the image draws and the bootstrap.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    corruptions: list[str] = Field(default_factory=lambda: list(CORRUPTIONS), min_length=1)
    severities: list[int] = Field(default_factory=lambda: [1, 2, 3, 4, 5], min_length=1)
    n_images: int | None = Field(None, ge=1)
    batch_size: int = Field(256, ge=1)
    onnx: bool = True
    bootstrap: int = Field(1000, ge=0)
    saliency_images: int = Field(0, ge=0)
    saliency_method: str = "gradient"
    seed: int = 0

    def model_post_init(self, _: object) -> None:
        unknown = [c for c in self.corruptions if c not in CORRUPTIONS]
        if unknown:
            raise ValueError(f"unknown corruptions {unknown}; known: {list(CORRUPTIONS)}")
        bad = [s for s in self.severities if not 1 <= s <= 5]
        if bad:
            raise ValueError(f"severities must be 1..5, got {bad}")
        if len(set(self.corruptions)) != len(self.corruptions) or \
                len(set(self.severities)) != len(self.severities):
            raise ValueError("corruptions and severities must not repeat")
        from bench.saliency.methods import SALIENCY_METHODS

        if self.saliency_method not in SALIENCY_METHODS:
            raise ValueError(f"unknown saliency_method {self.saliency_method!r}; known: "
                             f"{SALIENCY_METHODS.names()}")


def declared_columns(settings: RobustnessSettings) -> list[str]:
    """The `robustness_*` columns a result with these settings holds."""
    return (["robustness_mce", "robustness_relative_mce", "robustness_onnx_mce",
             "robustness_onnx_relative_mce", "robustness_saliency_spearman"]
            + [f"robustness_acc_{c}" for c in settings.corruptions])


register_stage(STAGE, RobustnessSettings, runs="bench.robustness.stage:robustness_stage",
               columns="bench.robustness.settings:declared_columns")
