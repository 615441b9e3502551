"""Every method runs as a cell: stored with its bits and parameters, reusing its FP32 parent."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from bench.checkpoints import load_model
from bench.cli import app
from bench.config import CellConfig
from bench.data import normalize, prepare
from bench.quant import PACT_INIT_ALPHA
from bench.store import ResultsStore
from tests.conftest import tiny_grid_dict

ALL = [{"name": "fp32"}, {"name": "fp32_ft"}, {"name": "fp32_fold_ft"},
       {"name": "ptq", "bits": [[8, 8], [4, 4]]}, {"name": "qat", "bits": [[8, 8]]},
       {"name": "lsq", "bits": [[4, 4]]},
       {"name": "pact", "bits": [[4, 4]]}, {"name": "sgt"}, {"name": "sgt_ft"},
       {"name": "pact_sgt", "bits": [[8, 8]]}]
QUANTISED = {"ptq", "qat", "lsq", "pact", "pact_sgt"}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("methods")
    grid = tiny_grid_dict(
        methods=ALL, seeds=1,
        datasets=[{"name": "synthetic", "image_size": 24,
                   "options": {"num_classes": 3, "num_images": 240}}],
        train={"epochs": 4, "batch_size": 16, "lr": 0.003},
        finetune={"epochs": 1, "batch_size": 16, "lr": 0.0005})
    (tmp / "grid.yaml").write_text(yaml.safe_dump(grid))
    result = CliRunner().invoke(app, ["run", "--grid", str(tmp / "grid.yaml"), "--store",
                                      str(tmp / "s"), "--quiet"])
    assert result.exit_code == 0, result.output
    return ResultsStore(tmp / "s")


def by_method(store, method, w_bits=None):
    return [r for r in store.records() if r.method == method
            and (w_bits is None or r.w_bits == w_bits)]


def test_every_method_stored_with_bits_and_params(store):
    rows = {(r.method, r.w_bits, r.a_bits) for r in store.records()}
    assert rows == {("fp32", 32, 32), ("fp32_ft", 32, 32), ("fp32_fold_ft", 32, 32),
                    ("ptq", 8, 8), ("ptq", 4, 4), ("qat", 8, 8), ("lsq", 4, 4), ("pact", 4, 4),
                    ("sgt", 32, 32),
                    ("sgt_ft", 32, 32), ("pact_sgt", 8, 8)}
    assert all(r.status == "ok" for r in store.records())
    pact_sgt = by_method(store, "pact_sgt")[0]
    params = set(pact_sgt.config["params"])
    assert {"mask_fraction", "kl_weight", "alpha_l2", "per_channel"} <= params


def test_quantised_cells_reuse_one_fp32_parent(store):
    (fp32,) = by_method(store, "fp32")
    for r in store.records():
        if r.method in QUANTISED | {"fp32_ft", "fp32_fold_ft", "sgt_ft"}:
            assert r.parent_id == fp32.cell_id
    assert by_method(store, "sgt")[0].parent_id is None  # SGT trains from scratch by default


def test_float_controls_get_the_quantised_methods_training_budget(store):
    """fp32_ft, fp32_fold_ft and sgt_ft fine-tune the FP32 parent for the same `finetune`
    epochs (1 here, against 4 for the parent) as the quantised methods whose control they are;
    fp32_fold_ft is QAT's, LSQ's and PACT's control of quantisation, fp32_ft their
    training-budget control."""
    from methods import get_method

    budget = {r.method: (r.parent_id, r.config["train"]) for r in store.records()}
    assert get_method("ptq").float_control is None  # no training: FP32 is its control
    for method in QUANTISED - {"ptq"}:
        control = get_method(method).float_control
        assert control in {"fp32_fold_ft", "sgt_ft"}
        assert budget[control] == budget[method] == budget["fp32_ft"]
    assert get_method("pact_sgt").float_control == "sgt_ft"
    assert {get_method(m).float_control for m in ("qat", "lsq", "pact")} == {"fp32_fold_ft"}
    for control in ("fp32_ft", "fp32_fold_ft", "sgt_ft"):
        (record,) = by_method(store, control)
        assert len(record.metrics["history"]["epochs"]) == 1
        assert record.config["train"]["epochs"] == 1
    assert by_method(store, "sgt_ft")[0].config["params"]["kl_weight"] == 1.0


@pytest.mark.parametrize("grid", ["smoke", "paper", "full"])
def test_shipped_grids_plan_every_float_control(grid):
    from bench.config import load_grid
    from methods import get_method

    names = {m.name for m in load_grid(grid).methods}
    controls = {get_method(n).float_control for n in names} - {None}
    assert controls == {"fp32_fold_ft", "sgt_ft"} and controls <= names
    assert {"lsq", "fp32_ft"} <= names


def test_qat_w8a8_keeps_fp32_accuracy(store):
    (fp32,) = by_method(store, "fp32")
    (qat,) = by_method(store, "qat")
    assert fp32.accuracy > 0.6  # the task is learnable at this size
    assert qat.accuracy >= 0.9 * fp32.accuracy


def test_ptq_does_not_train_and_qat_does(store):
    assert by_method(store, "ptq")[0].metrics["history"] == {}
    assert len(by_method(store, "qat")[0].metrics["history"]["epochs"]) == 1


def test_integer_weight_levels_respect_bits(store):
    for r in by_method(store, "ptq"):
        levels = sorted(r.metrics["weight_levels"].values())
        assert len(levels) == 5 and levels[-1] <= 2 ** 8  # first and last layer: 8 bits
        assert all(n <= 2 ** r.w_bits for n in levels[:-2])


def test_pact_alphas_are_learned_and_stored(store):
    alphas = by_method(store, "pact")[0].metrics["pact_alphas"]
    assert alphas and all(a > 0.001 and a != PACT_INIT_ALPHA for a in alphas.values())


@pytest.mark.parametrize("method", ["qat", "fp32_fold_ft"])
def test_stored_model_reloads_exactly(store, method):
    """A quantised graph and the folded float graph of fp32_fold_ft rebuild from the backbone
    (`Method.rebuild`) and give the stored logits."""
    (qat,) = by_method(store, method)
    cfg = CellConfig.model_validate(qat.config)
    data = prepare(cfg.dataset)
    folder = store.artifact_dir(qat.cell_id)
    example = normalize(data.images.images[data.split.train[:2]])
    model = load_model(cfg, folder, data.num_classes, example)
    with torch.no_grad():
        logits = model(normalize(data.images.images[data.split.test])).numpy()
    stored = np.load(folder / "predictions.npz")["logits"]
    np.testing.assert_allclose(logits, stored, atol=1e-5)


def test_methods_listing_shows_parameters(cli):
    out = cli("methods").output
    for name in ("ptq", "qat", "lsq", "pact", "sgt", "pact_sgt", "fp32_ft", "sgt_ft",
                 "bias_correction", "alpha_l2", "range_momentum"):
        assert name in out


def test_paper_grid_dry_run_counts_cells(cli, tmp_path):
    result = cli("run", "--grid", "paper", "--dry-run", "--no-estimate", "--store", tmp_path)
    assert result.exit_code == 0, result.output
    # 2 backbones x 3 seeds x (fp32, fp32_ft, fp32_fold_ft, sgt, sgt_ft + 5 quantised methods
    # x 4 bits)
    assert "150 cells" in result.output and "not available here" in result.output


README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_grid_counts(text: str) -> dict[str, int]:
    """The README's table of built-in grids: grid -> cells."""
    return {m[1]: int(m[2]) for m in re.finditer(r"^\| `(\w+)` \| (\d+) \|", text, re.M)}


def _dry_run_cells(cli, grid: str, store: Path) -> int:
    result = cli("run", "--grid", grid, "--dry-run", "--no-estimate", "--store", store)
    assert result.exit_code == 0, result.output
    (count,) = re.findall(r"^(\d+) cells: ", result.output, re.M)
    return int(count)


def test_readme_states_each_grids_dry_run_cell_count(cli, tmp_path):
    """The README states one cell count per built-in grid, the one `bench run --dry-run`
    prints, and no other count beside a grid's name (it once said 114 and 84 for the paper
    grid)."""
    from bench.config import builtin_grids

    text = README.read_text()
    stated = _readme_grid_counts(text)
    assert set(stated) == set(builtin_grids())
    for grid in builtin_grids():
        assert stated[grid] == _dry_run_cells(cli, grid, tmp_path / grid), grid
    prose = " ".join(text.split())
    for sentence in re.split(r"(?<=[.;])\s", prose):
        counts = {int(n) for n in re.findall(r"\b(\d+) cells\b", sentence)}
        for grid in builtin_grids():
            if counts and re.search(rf"`{grid}` grid|{grid} grid", sentence):
                assert counts == {stated[grid]}, sentence


def test_dry_run_estimates_compute(cli, write_grid, tmp_path):
    grid = write_grid(methods=[{"name": "fp32"}, {"name": "qat", "bits": [[8, 8]]}], seeds=1)
    result = cli("run", "--grid", grid, "--dry-run", "--store", tmp_path / "s")
    assert result.exit_code == 0, result.output
    assert "estimated total" in result.output and "qat" in result.output


def test_json_results_of_methods(store, cli):
    rows = json.loads(cli("results", "--store", store.root, "--format", "json").output)
    assert {r["method"] for r in rows} == {m["name"] for m in ALL}


def test_the_baseline_method_name_is_defined_once():
    """methods.base.FP32 is the only definition of "fp32" as a name; everything imports it."""
    import re

    from methods import get_method
    from methods.base import FP32
    from tests.device_venv import ROOT

    assert get_method(FP32).name == FP32 == "fp32"
    defined = sorted(str(p.relative_to(ROOT)) for folder in ("bench", "methods", "scripts")
                     for p in (ROOT / folder).rglob("*.py")
                     if re.search(r'^\s*\w+ = "fp32"$', p.read_text(), re.MULTILINE))
    assert defined == ["methods/base.py"]


def test_smoke_grid_lsq_w4a4_is_within_3_points_of_qat(tmp_path):
    """The smoke grid's data, backbone, seeds and training (no stages, so torch's fake-quant
    accuracy): with every LSQ step initialised from data, LSQ W4A4 ends within 3 points of
    QAT W4A4 (with the last layer's input step left at 1.0 it started at chance and ended
    about 10 points below)."""
    from importlib import resources

    grid = yaml.safe_load(resources.files("bench.grids").joinpath("smoke.yaml").read_text())
    grid.update(name="smoke_lsq", stages={},
                methods=[{"name": "fp32"}, {"name": "qat", "bits": [[4, 4]]},
                         {"name": "lsq", "bits": [[4, 4]]}])
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(grid))
    result = CliRunner().invoke(app, ["run", "--grid", str(tmp_path / "grid.yaml"), "--store",
                                      str(tmp_path / "s"), "--quiet"])
    assert result.exit_code == 0, result.output
    records = ResultsStore(tmp_path / "s").records()
    mean = {m: np.mean([r.accuracy for r in records if r.method == m]) for m in ("qat", "lsq")}
    assert len(records) == 3 * grid["seeds"] and all(r.status == "ok" for r in records)
    assert abs(mean["lsq"] - mean["qat"]) <= 0.03, mean


@pytest.mark.parametrize("scheme", ["stats", "pact", "lsq"])
def test_fold_is_the_quantised_graph_with_quantisation_disabled(scheme):
    """fp32_fold_ft starts from `bench.quant.fold` of its parent: the same logits and input
    gradients as the quantised methods' graph of that parent with quantisation disabled (and
    as the parent), and no BatchNorm left to update in training mode."""
    import torchvision

    from bench.quant import QuantSpec, fold, quantization_disabled, quantize

    torch.manual_seed(0)
    parent = torchvision.models.mobilenet_v2(num_classes=3)
    parent.train()
    with torch.no_grad():
        parent(torch.randn(8, 3, 32, 32))  # BatchNorm statistics of data
    parent.eval()
    x = 4 * torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    folded = fold(parent)
    qmodel = quantize(parent, QuantSpec(4, 4, scheme=scheme), x[:2]).eval()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())

    def grads(model):
        inp = x.clone().requires_grad_(True)
        out = model(inp)
        out[:, 0].sum().backward()
        return out.detach(), inp.grad

    with quantization_disabled(qmodel):
        reference = grads(qmodel)
    mine = grads(folded)
    with torch.no_grad():
        expected = parent(x)
    torch.testing.assert_close(mine[0], reference[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(mine[1], reference[1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mine[0], expected, rtol=1e-4, atol=1e-4)
