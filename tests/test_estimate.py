"""The dry-run estimate's arithmetic (fake timings in, expected seconds out): cell terms, stage
terms, the schedule on several workers, the parallelism assumed, the batch a probe times at;
and the saliency stage's pass count against a forward hook. No timing is asserted."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from bench.config import BackboneConfig
from bench.deploy.cost import PROBE_IMAGES, deploy_cost
from bench.deploy.stage import DeploySettings
from bench.models import build_model
from bench.runner import RunOptions, executor_for, plan_grid
from bench.runner import estimate as estimate_module
from bench.runner.estimate import cell_shape, estimate
from bench.runner.estimate import probe as probe_module
from bench.runner.estimate.costs import (
    EVALUATION,
    SETUP,
    TRAINING,
    Assumptions,
    CellCost,
    CellShape,
    Estimate,
    Timings,
    cell_terms,
    makespan,
)
from bench.runner.executors import ExecutorOptions, make_executor
from bench.runner.executors import process as process_executor
from bench.runner.executors.order import Waits
from bench.runner.executors.task import cell_threads
from bench.saliency.cost import passes, saliency_cost
from bench.saliency.suite import SaliencyConfig, stability_suite
from tests.conftest import tiny_grid_dict

SHAPE = CellShape(n_train=100, n_val=20, n_test=30, num_classes=3, image_size=16, epochs=2,
                  batch_size=32, calibration_batches=3, trains=True, quantized=True)
TIMINGS = Timings(setup_s=1.0, setup_images=4, step_s=0.5, forward_image_s=0.01)


def test_a_cells_terms_from_its_shape_and_timings():
    assert SHAPE.steps == 2 * 4   # ceil(100 / 32) steps an epoch
    assert SHAPE.calibration_images == 96 and SHAPE.predicted_images == 2 * 20 + 30
    terms = cell_terms(SHAPE, TIMINGS, {"deploy": 2.0})
    assert terms == pytest.approx({SETUP: 1.0 + (96 - 4) * 0.01, TRAINING: 8 * 0.5,
                                   EVALUATION: 70 * 0.01, "deploy": 2.0})
    assert CellCost("c", terms).seconds == pytest.approx(1.92 + 4.0 + 0.7 + 2.0)


def test_a_method_that_only_calibrates_takes_no_steps_and_predicts_only_the_test_split():
    ptq = CellShape(**{**SHAPE.__dict__, "trains": False})
    assert ptq.steps == 0 and ptq.predicted_images == 30
    float_cell = CellShape(**{**SHAPE.__dict__, "quantized": False})
    assert cell_terms(float_cell, TIMINGS, {})[SETUP] == 1.0   # nothing calibrated


def test_schedule_one_at_a_time_is_the_sum():
    seconds = {"a": 1.0, "b": 2.0, "c": 3.0}
    assert makespan(["a", "b", "c"], seconds, {}, set(), 1) == 6.0
    assert makespan(["a", "b", "c"], seconds, {}, {"b"}, 1) == 4.0   # b is cached
    with pytest.raises(ValueError):
        makespan(["a"], seconds, {}, set(), 0)


def test_schedule_on_workers_follows_the_plans_waits():
    # fp32 parent p (4 s), its children q1 q2 (2 s each), an sgt cell s (3 s) that follows p
    seconds = {"p": 4.0, "q1": 2.0, "q2": 2.0, "s": 3.0, "x": 1.0}
    order = ["p", "q1", "q2", "s", "x"]
    waits = {"q1": Waits(needs=frozenset({"p"})), "q2": Waits(needs=frozenset({"p"})),
             "s": Waits(follows=frozenset({"p"}))}
    # two workers: p and x start at 0; the rest wait for p (4 s), then q1 q2 (6 s), then s
    assert makespan(order, seconds, waits, set(), 2) == 9.0
    # three: q1, q2 and s all start at 4 s
    assert makespan(order, seconds, waits, set(), 3) == 7.0
    # many workers cannot beat the critical path p -> s
    assert makespan(order, seconds, waits, set(), 50) == 7.0
    # a cached parent: everything starts at once
    assert makespan(order, seconds, waits, {"p"}, 50) == 3.0
    # a cell that waits on a cell outside the plan that never finishes is left out
    assert makespan(["q1"], seconds, {"q1": Waits(needs=frozenset({"gone"}))}, set(), 2) == 0.0


def test_totals_and_shares():
    cells = [CellCost("a", {TRAINING: 6.0, "saliency": 2.0}),
             CellCost("b", {TRAINING: 1.0, "saliency": 1.0})]
    result = Estimate([], cells, Assumptions("cpu", 1, 2, "process"), startup_s=5.0,
                      workers_start_s=3.0, schedule_s=8.0)
    assert result.compute_s == 10.0 and result.total_s == 16.0
    assert result.term_seconds() == {TRAINING: 7.0, "saliency": 3.0}
    assert result.share("saliency") == pytest.approx(0.3)
    assert Estimate([], [], Assumptions("cpu", 1, 1, "local")).share("saliency") == 0.0


@pytest.mark.parametrize(("executor", "workers", "cores", "concurrency", "note"), [
    ("local", None, 8, 1, ""),
    ("process", 4, 8, 4, ""),
    ("process", 4, 2, 2, "4 at once share 2 cores"),
    ("process", None, 3, 3, ""),
])
def test_parallelism_assumed(monkeypatch, executor, workers, cores, concurrency, note):
    monkeypatch.setattr(estimate_module, "local_cores", lambda: cores)
    monkeypatch.setattr(process_executor, "local_cores", lambda: cores)   # its default workers
    chosen = estimate_module.assumptions(
        make_executor(executor, ExecutorOptions(workers=workers, torch_device="cpu")))
    assert (chosen.torch_device, chosen.threads_per_cell, chosen.concurrency, chosen.note) == \
        ("cpu", 1, concurrency, note)
    assert chosen.describe().startswith("device cpu, 1 torch thread a cell, ")


class FakeProbe:
    """Stage-cost inputs with fixed timings."""

    backbone, image_size, quantized, torch_device = "smallcnn", 16, True, "cpu"

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.memo: dict[Any, Any] = {}

    def forward_image_s(self, batch: int, torch_device: str | None = None) -> float:
        self.calls.append(("forward", batch, torch_device))
        return 0.01

    def gradient_image_s(self, batch: int, torch_device: str | None = None) -> float:
        self.calls.append(("gradient", batch, torch_device))
        return 0.03

    def per_image_s(self, fn: Callable[[Any], object], batch: int) -> float:
        self.calls.append(("per_image", batch))
        return 0.002

    def stage_seconds(self, name: str, settings: Any, n_images: int) -> tuple[float, Path]:
        self.calls.append(("stage", name, n_images))
        return 1.5, Path("unused")

    def shared(self, key: Any, compute: Callable[[], Any]) -> Any:
        if key not in self.memo:
            self.memo[key] = compute()
        return self.memo[key]


def test_saliency_cost_counts_the_passes_its_settings_ask_for():
    defaults = SaliencyConfig()
    # per image: 26 maps' gradient passes (1 + 16 + 8 + 1) for the image and its 10
    # max-sensitivity draws; the curves' 3 shared end points, then 2 curves of 15 inner steps
    # for the 4 methods and the random order
    assert passes(defaults) == (26 * 11, 3 + 2 * 15 * 5)
    cfg = SaliencyConfig(methods=["gradient", "integrated_gradients"], n_samples=64,
                         sensitivity_samples=2, ig_steps=5, deletion_steps=8, batch_size=16)
    assert passes(cfg) == ((1 + 5) * 3, 3 + 2 * 7 * 3)
    probe = FakeProbe()
    # 30 test images: all 30 evaluated, at batch 16, on the cell's device (device None: the
    # probe's); a quantised cell explains them once more for its null control, and every
    # cell runs the sanity check: 8 images at 4 points of the cascade
    assert saliency_cost(cfg, SHAPE, probe) == pytest.approx(
        (30 * 18 + 30 * 6 + 8 * 4 * 6) * 0.03 + 30 * 45 * 0.01)
    assert ("gradient", 16, None) in probe.calls and ("forward", 16, None) in probe.calls
    # an FP32 cell: no null control, the same sanity check
    fp32 = CellShape(**{**SHAPE.__dict__, "quantized": False, "method": "fp32"})
    assert saliency_cost(cfg, fp32, probe) == pytest.approx(
        (30 * 18 + 8 * 4 * 6) * 0.03 + 30 * 45 * 0.01)
    empty = CellShape(**{**SHAPE.__dict__, "n_test": 0})
    assert saliency_cost(cfg, empty, probe) == 0.0
    # Integrated Gradients' max-sensitivity on 4 of the 30 images: its 2 draws of 5 passes
    # each on 4 images instead of 30
    subset = cfg.model_copy(update={"sensitivity_images": {"integrated_gradients": 4}})
    assert passes(subset, 30) == (30 * 6 + 30 * 2 * 1 + 4 * 2 * 5, 30 * 45)
    assert saliency_cost(subset, SHAPE, probe) == pytest.approx(
        (30 * 6 + 30 * 2 + 4 * 10 + 30 * 6 + 8 * 4 * 6) * 0.03 + 30 * 45 * 0.01)


@pytest.mark.parametrize("subset", [{}, {"integrated_gradients": 1, "smoothgrad": 2}])
def test_saliency_pass_count_matches_the_images_the_suite_sends_through_the_model(subset):
    """Cross-check passes() against the stability suite itself: every image through the
    model, counted by a forward hook."""
    torch.manual_seed(0)
    model = build_model(BackboneConfig(name="smallcnn"), 3).eval()
    seen = [0]
    model.register_forward_hook(lambda _m, inputs, _o: seen.__setitem__(
        0, seen[0] + inputs[0].shape[0]))
    cfg = SaliencyConfig(methods=["gradient", "integrated_gradients", "smoothgrad", "gradcam"],
                         n_samples=3, sensitivity_samples=1, ig_steps=3, smoothgrad_samples=2,
                         deletion_steps=3, batch_size=2, sensitivity_images=subset)
    with cell_threads():   # one thread, as in a cell (tiny convolutions stall on more)
        stability_suite(model, None, torch.randn(3, 3, 16, 16), torch.tensor([0, 1, 2]), None,
                        cfg)
    assert seen[0] == sum(passes(cfg, 3))


@pytest.mark.parametrize("saturates", [False, True])
def test_deploy_cost_is_its_fixed_run_plus_onnx_runtime_per_further_image(saturates,
                                                                          monkeypatch):
    """Where U8S8 saturates, the stage also evaluates a quantised model with fast kernels."""
    import bench.deploy.cost as cost

    monkeypatch.setattr(cost, "u8s8_saturates", lambda: saturates)
    probe, settings = FakeProbe(), DeploySettings(eval_batch_size=64)
    evaluations = 2 if saturates else 1
    assert deploy_cost(settings, SHAPE, probe) == pytest.approx(1.5 + (30 - PROBE_IMAGES)
                                                                * 0.002 * evaluations)
    deploy_cost(settings, SHAPE, probe)   # one timing serves every cell of the same graph
    assert [c for c in probe.calls if c[0] == "stage"] == [("stage", "deploy", PROBE_IMAGES)]
    assert ("per_image", 64) in probe.calls


def test_deploy_cost_times_onnx_runtime_with_the_deploy_stages_session_settings(tmp_path):
    """The stage evaluates with exact kernels (x64 precision mode, slower U8U8 kernels for 8-bit
    layers, on x86 without VNNI), so the estimate's per-image time is taken with them too."""
    from bench.deploy import export_fp32
    from bench.deploy.cost import OnnxRunner
    from bench.deploy.runtime import session_config

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten()).eval()
    runner = OnnxRunner(export_fp32(model, torch.zeros(1, 3, 8, 8), tmp_path / "m.onnx"))
    (out,) = runner(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    assert out.shape == (2, 72)
    options = runner.session.get_session_options()
    expected = session_config()
    assert expected and all(options.get_session_config_entry(key) == value
                            for key, value in expected.items())


def test_a_probe_times_the_largest_batch_that_fits(monkeypatch):
    """Batches double while a call, scaled linearly from the last, would take at most
    PROBE_CALL_S (set to 1 s here)."""
    monkeypatch.setattr(probe_module, "PROBE_CALL_S", 1.0)
    fake = {"fixed": 0.1, "per_image": 0.005}
    monkeypatch.setattr(probe_module, "_seconds",
                        lambda call, batch, sync: fake["fixed"] + fake["per_image"] * batch)
    fit = probe_module.fitted_batch
    assert fit(lambda b: None, 32) == 32              # 0.26 s at 32
    assert fit(lambda b: None, 256) == 128            # 0.74 s at 128: 256 would be 1.48
    fake.update(fixed=0.0, per_image=0.6)
    assert fit(lambda b: None, 32) == 1               # 1.2 s at 2
    assert fit(lambda b: None, 32, smallest=2) == 2   # never below the smallest batch
    assert fit(lambda b: None, 1, smallest=2) == 1    # nor above the target


def test_median_of_repeats_after_a_warm_up(monkeypatch):
    ticks = iter([0.0, 5.0, 5.0, 6.0, 6.0, 9.0])   # three timed calls: 5, 1, 3 s
    calls = []
    monkeypatch.setattr(probe_module.time, "perf_counter", lambda: next(ticks))
    assert probe_module.median_seconds(lambda: calls.append(1)) == 3.0
    assert len(calls) == 4   # the warm-up is not timed


@pytest.fixture
def fake_timings(monkeypatch) -> None:
    """Probes that measure nothing: every cell kind gets TIMINGS and FakeProbe's stage costs."""

    class Probe(FakeProbe):
        def __init__(self, cell: Any, num_classes: int, *_: Any) -> None:
            super().__init__()
            self.quantized = cell.config.method != "fp32"

        def timings(self) -> Timings:
            return TIMINGS

    import bench.deploy.cost as cost

    monkeypatch.setattr(estimate_module, "CellModelProbe", Probe)
    monkeypatch.setattr(estimate_module, "workers_start_seconds", lambda executor: 2.5)
    monkeypatch.setattr(cost, "u8s8_saturates", lambda: True)   # the same sums on every CPU


STAGED = tiny_grid_dict(methods=[{"name": "fp32"}, {"name": "ptq", "bits": [[8, 8]]}],
                        stages={"deploy": {}, "saliency": {"methods": ["gradient"],
                                                           "n_samples": 4}})


def test_estimate_adds_up_cells_stages_and_the_schedule(tmp_path, fake_timings):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump(STAGED))
    options = RunOptions(grid=str(grid), executor="process", workers=2, torch_device="cpu")
    plan = plan_grid(options)
    result = estimate(plan, None, executor_for(options), startup_s=4.0)
    by_id = {c.cell_id: c for c in result.cells}
    assert len(by_id) == 4   # fp32 and ptq, 2 seeds
    fp32, ptq = [next(c for c in plan.cells if c.config.method == m) for m in ("fp32", "ptq")]
    for cell in (fp32, ptq):
        shape = cell_shape(plan, cell)
        split = plan.data[cell.data_key].load().split   # the planned sizes are the split's
        assert (shape.n_train, shape.n_val, shape.n_test) == (
            len(split.train), len(split.val), len(split.test))
        # 4 images, default settings: 1 + 10 maps each, 3 + 2 x 15 + 2 x 15 forward passes;
        # every cell's sanity check 4 images at 4 points, the PTQ cell's null control once;
        # where U8S8 saturates, the PTQ cell is evaluated again with fast kernels
        extra = 4 * 4 if cell is fp32 else 4 * 4 + 4
        evaluations = 1 if cell is fp32 else 2
        stages = {"deploy": 1.5 + (shape.n_test - PROBE_IMAGES) * 0.002 * evaluations,
                  "saliency": (4 * 11 + extra) * 0.03 + 4 * 63 * 0.01}
        assert by_id[cell.cell_id].terms == pytest.approx(cell_terms(shape, TIMINGS, stages))
    # two workers: both fp32 parents at once, then both ptq children
    expected = by_id[fp32.cell_id].seconds + by_id[ptq.cell_id].seconds
    assert result.schedule_s == pytest.approx(expected)
    assert result.total_s == pytest.approx(4.0 + 2.5 + expected)
    assert result.assumptions.concurrency == min(2, estimate_module.local_cores())
    only_ptq = estimate(plan, {c.cell_id for c in plan.cells if c.config.method == "ptq"},
                        executor_for(options))
    assert len(only_ptq.cells) == 2 and only_ptq.schedule_s == pytest.approx(
        by_id[ptq.cell_id].seconds)


def test_dry_run_prints_costs_shares_and_assumptions(cli, tmp_path, fake_timings):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump(STAGED))
    result = cli("run", "--grid", grid, "--store", tmp_path / "s", "--dry-run",
                 "--executor", "process", "--workers", "2", "--device", "cpu")
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "estimated compute (training steps timed on this machine)" in out
    assert "compute: " in out and "training " in out and "saliency " in out
    assert "deploy " in out
    assert "estimated total: " in out and " for 4 cells on this machine, " in out
    assert "assumed: device cpu, 1 torch thread a cell, " in out
    assert "each kind of cell timed 3 times after a warm-up (median)" in out


def test_real_probes_time_every_term_of_a_staged_grid(tmp_path):
    """The probes themselves, on a tiny grid: every term measured, positive and finite."""
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({**STAGED, "seeds": 1}))
    options = RunOptions(grid=str(grid), torch_device="cpu")
    result = estimate(plan_grid(options), None, executor_for(options))
    ptq = next(r for r in result.rows if r.method == "ptq")
    fp32 = next(r for r in result.rows if r.method == "fp32")
    assert ptq.steps_per_cell == 0 and fp32.steps_per_cell > 0 and fp32.step_seconds > 0
    for row in (ptq, fp32):
        assert set(row.terms_per_cell) == {SETUP, TRAINING, EVALUATION, "deploy", "saliency"}
        assert all(math.isfinite(v) and v >= 0 for v in row.terms_per_cell.values())
        assert row.terms_per_cell["deploy"] > 0 and row.terms_per_cell["saliency"] > 0
    assert result.schedule_s == pytest.approx(result.compute_s)   # local: one at a time
