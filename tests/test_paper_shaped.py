"""The report's saliency and significance sections on a paper-shaped store: the paper grid with
its two backbones' shape (small CNN and ResNet-18), every method, 3 seeds and the saliency
stage with all four saliency methods, shrunk to synthetic 16x16 images and one epoch.

Its 60 cells (its 54 before fp32_fold_ft took about 10 minutes on a loaded 2-core machine), so
it runs only with `make test-slow` (MEDQ_SLOW=1). `make test` covers the same code paths on
smaller stores: the per-image tests at 3 seeds and the refusals of the seed-level ones
(`tests/test_report.py`), the stage with null control and sanity check on quantised and FP32 cells
(`tests/test_saliency_stage.py`), the shipped grids' saliency settings and their dry-run
cost (the one test here that needs no run)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from bench.cli import app
from bench.config import load_grid
from bench.report import build_report, report_context
from bench.runner.estimate import cell_shape
from bench.runner.plan import build_plan
from bench.saliency.columns import column_name
from bench.saliency.cost import map_passes, saliency_cost, stage_cost
from bench.saliency.suite import SaliencyConfig
from bench.store import ResultsStore

paper_run = pytest.mark.skipif(os.environ.get("MEDQ_SLOW") != "1",
                               reason="reads the 60-cell paper-shaped run: `make test-slow`")
"""Marks a test that reads the run (only with MEDQ_SLOW=1)."""

SALIENCY = {"n_samples": 3, "ig_steps": 2, "smoothgrad_samples": 2, "sensitivity_samples": 1,
            "deletion_steps": 2, "sanity_images": 2, "sanity_checkpoints": 2, "overlays": 1,
            "batch_size": 64}
"""The cheapest settings that exercise every part of the stage: a Brevitas ResNet-18 forward
costs ~0.25 s even at 16x16 (weight quantisation in every pass), and the stage's cost is its
number of forward passes."""


def paper_shaped() -> dict[str, Any]:
    paper = load_grid("paper").model_dump(mode="json")
    assert paper["stages"]["saliency"]["methods"] == [
        "gradient", "integrated_gradients", "smoothgrad", "gradcam"]
    assert paper["stages"]["saliency"]["n_samples"] >= 64 and len(paper["seeds"]) == 3
    methods = [{**m, "bits": [[4, 4]]} for m in paper["methods"]]
    return {**paper, "name": "paper-shaped",
            "datasets": [{"name": "synthetic", "image_size": 16,
                          "options": {"num_classes": 3, "num_images": 60}}],
            "backbones": [{"name": "smallcnn"}, {"name": "resnet18"}], "methods": methods,
            "train": {"epochs": 1, "batch_size": 32, "lr": 0.003},
            "finetune": {"epochs": 1, "batch_size": 32, "lr": 0.0005}, "calibration_batches": 1,
            "stages": {"saliency": {**paper["stages"]["saliency"], **SALIENCY}}}


@pytest.fixture(scope="module")
def paper(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("paper")
    grid = tmp / "paper-shaped.yaml"
    grid.write_text(yaml.safe_dump(paper_shaped()))
    result = CliRunner().invoke(app, ["run", "--grid", str(grid), "--store", str(tmp / "s"),
                                      "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    store = ResultsStore(tmp / "s")
    html = build_report(store, tmp / "index.html").read_text()
    return {"store": store, "output": result.output, "context": report_context(store),
            "html": html, "grid": grid}


@paper_run
def test_every_cell_ran_with_saliency(paper: dict[str, Any]) -> None:
    assert "60 ran, 0 cached, 0 failed" in paper["output"]
    for record in paper["store"].records():
        result = record.metrics["saliency"]
        assert set(result["stats"]) == {"gradient", "integrated_gradients", "smoothgrad",
                                        "gradcam"}
        if record.w_bits != 32:
            assert result["null"]["stats"]["gradient"]["spearman_fp32"]["mean"] >= 0.999
        assert set(result["sanity"]["methods"]) == set(result["stats"])   # every cell's own


@paper_run
def test_saliency_section_on_the_paper_shaped_store(paper: dict[str, Any]) -> None:
    table = paper["context"]["saliency"]["table"]
    assert [b.name for b in table.blocks] == ["synthetic / resnet18", "synthetic / smallcnn"]
    for block in table.blocks:
        configs = {r["config"] for r in block.rows}
        assert configs == {"fp32", "fp32_ft", "fp32_fold_ft", "sgt", "sgt_ft", "ptq W4A4",
                           "qat W4A4",
                           "lsq W4A4", "pact W4A4", "pact_sgt W4A4"}
        assert all(r["seeds"] == 3 for r in block.rows)
        assert len(block.rows) == 10 * 4
        for row in block.rows:
            assert "sanity" in row
            if row["config"].endswith("W4A4"):
                assert row["null_ssim_fp32"] >= 0.999
    assert 'id="saliency-table"' in paper["html"]


@paper_run
def test_significance_sections_give_per_image_p_values_at_three_seeds(
        paper: dict[str, Any]) -> None:
    for tests in paper["context"]["significance"]:
        seed_level = next(f for f in tests.families
                          if f.title == "accuracy: each configuration vs FP32")
        assert all(r.p_value is None and "Wilcoxon needs" in r.reason
                   for r in seed_level.results)
        by_title = {f.title: f for f in tests.image_families}
        clustered = by_title["accuracy per image: each configuration vs FP32"]
        assert len(clustered.results) == 9 and all(r.n_seeds == 3 for r in clustered.results)
        assert any(r.p_value is not None for r in clustered.results)
        control = by_title["accuracy per image: each quantised configuration vs its "
                           "float control"]
        # qat, lsq and pact vs fp32_fold_ft, pact_sgt vs sgt_ft
        assert len(control.results) == 4 and not control.skipped
        assert all(r.p_value is not None for r in control.results)
        flips = by_title["spearman_fp32 per image: pairs at W4A4"]
        assert len(flips.results) == 10
        assert all(r.p_value is not None and r.n_seeds == 3 for r in flips.results)
        assert tests.cd is None and tests.cd_note
    assert "per image: each configuration vs FP32" in paper["html"]


def test_paper_and_full_grids_have_the_stage_and_dry_run_counts_its_cost(
        tmp_path: Path) -> None:
    """The dry run's saliency term (bench.saliency.cost.saliency_cost) for every cell of the
    paper-shaped plan: the stage's passes, the null control's on quantised cells and the sanity
    check's on every cell, at the probe's gradient and forward cost."""
    full = load_grid("full").model_dump(mode="json")["stages"]["saliency"]
    assert len(full["methods"]) == 4
    grid = tmp_path / "paper-shaped.yaml"
    grid.write_text(yaml.safe_dump(paper_shaped()))
    plan = build_plan(load_grid(str(grid)))
    cfg = SaliencyConfig(**plan.cells[0].config.stages["saliency"])
    probe = UnitProbe()
    kinds = set()
    for cell in plan.cells:
        shape = cell_shape(plan, cell)
        quantized, fp32 = cell.config.w_bits < 32, cell.config.method == "fp32"
        kinds.add((quantized, fp32))
        cost = stage_cost(cfg, n_test=shape.n_test, quantized=quantized)
        assert saliency_cost(cfg, shape, probe) == pytest.approx(cost.gradient + 0.25
                                                                 * cost.forward)
    assert kinds == {(True, False), (False, True), (False, False)}   # quantised, FP32, SGT
    n = min(cfg.n_samples, cell_shape(plan, plan.cells[0]).n_test)
    quantised = stage_cost(cfg, n_test=n, quantized=True)
    float_cell = stage_cost(cfg, n_test=n, quantized=False)
    no_sanity = stage_cost(cfg, n_test=n, quantized=False, sanity=False)
    assert quantised.gradient > float_cell.gradient > no_sanity.gradient
    assert float_cell.gradient - no_sanity.gradient == (
        min(cfg.sanity_images, n) * max(cfg.sanity_checkpoints, 2) * map_passes(cfg))
    assert quantised.forward == float_cell.forward == no_sanity.forward


class UnitProbe:
    """A gradient pass costs 1 s, a forward pass 0.25 s."""

    def gradient_image_s(self, batch: int, device: str | None = None) -> float:
        return 1.0

    def forward_image_s(self, batch: int, device: str | None = None) -> float:
        return 0.25


@paper_run
def test_columns_for_every_method_in_bench_results(paper: dict[str, Any]) -> None:
    rows = paper["store"].rows()
    for row in rows:
        for method in ("gradient", "gradcam"):
            assert column_name("deletion_gain", method) in row
            assert column_name("null_spearman_fp32", method) in row
            assert column_name("sanity_spearman", method) in row
    fp32 = [r for r in rows if r["method"] == "fp32"]
    assert all(np.isfinite(r[column_name("sanity_spearman", "gradient")]) for r in fp32)


RESNET18_224 = {"gradient": 0.8, "forward": 0.4, "sgt_step": 2.0}
"""Seconds per image of a saliency gradient pass and of a forward pass, and of an SGT training
step, in units of a plain training step's image (ResNet-18 at 224, one thread). Measured here
(loaded, in one run): 0.76, 0.31 and 2.23; the issue's quiet figures give 0.36 for the forward
pass. Rounded against the saliency stage: passes up, SGT down. tests/benchmarks/
test_bench_saliency.py measures them again and fails when a pass costs more, or SGT less."""


class RatioProbe:
    """A probe of every kind of cell with RESNET18_224's costs (1 s a plain training-step image)
    and no setup or deploy cost, so that the saliency share it gives is an upper bound."""

    def __init__(self, cell: Any, num_classes: int, *_: Any) -> None:
        from methods import get_method

        method = get_method(cell.config.method)
        objective = method.objective(method.parse_params(cell.config.params))
        self.image_step = RESNET18_224["sgt_step"] if objective.name == "sgt" else 1.0
        self.batch_size = cell.config.train.batch_size
        self.backbone, self.image_size = cell.config.backbone.name, cell.config.dataset.image_size
        self.quantized, self.device = method.quantized, "cpu"

    def timings(self) -> Any:
        from bench.runner.estimate.costs import Timings

        return Timings(setup_s=0.0, setup_images=0, step_s=self.image_step * self.batch_size,
                       forward_image_s=RESNET18_224["forward"])

    def forward_image_s(self, batch: int, device: str | None = None) -> float:
        return RESNET18_224["forward"]

    def gradient_image_s(self, batch: int, device: str | None = None) -> float:
        return RESNET18_224["gradient"]

    def per_image_s(self, fn: Any, batch: int) -> float:
        return 0.0

    def stage_seconds(self, name: str, settings: Any, n_images: int) -> tuple[float, Path]:
        return 0.0, Path("unused")

    def shared(self, key: Any, compute: Any) -> Any:
        return compute()


MAX_SALIENCY_SHARE = 0.20


@pytest.mark.parametrize("grid", ["paper", "full"])
def test_saliency_is_at_most_a_fifth_of_the_grids_compute(grid: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """By the dry run's estimate (its arithmetic, with RatioProbe's costs), the saliency stage of
    the shipped grids is at most MAX_SALIENCY_SHARE of their compute, with >= 10 max-sensitivity
    draws, the sanity check and the null control; `bench run --dry-run` prints the share."""
    from bench.runner import estimate as estimate_module

    monkeypatch.setenv("MEDQ_CACHE", str(tmp_path / "cache"))   # no other test's estimates
    monkeypatch.setattr(estimate_module, "CellModelProbe", RatioProbe)
    settings = SaliencyConfig(**load_grid(grid).model_dump(mode="json")["stages"]["saliency"])
    assert settings.sensitivity_samples >= 10 and settings.sanity_images >= 8
    assert settings.n_samples >= 64 and len(settings.methods) == 4
    result = CliRunner().invoke(app, ["run", "--grid", grid, "--store", str(tmp_path / "s"),
                                      "--dry-run", "--device", "cpu"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    share = float(out.split("saliency stage: ")[1].split("%")[0]) / 100
    assert 0.05 < share <= MAX_SALIENCY_SHARE, out[-2000:]
    assert "deploy stage: " in out
