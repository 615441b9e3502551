"""The `saliency` stage end to end: stored maps and columns, the FP32 reference, the shared
evaluation images, caching, seed consistency, and localisation of a trained model."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from bench.cli import app
from bench.config import CellConfig, DataConfig
from bench.data import prepare
from bench.saliency.columns import METRICS, NULL_METRICS, column_name
from bench.saliency.consistency import seed_consistency_table, with_seed_consistency
from bench.saliency.mapfile import MAPS_FILE, load_maps
from bench.saliency.metrics import seed_consistency, spearman, ssim, topk_iou
from bench.saliency.reference import find_reference
from bench.saliency.stage import evaluation_subset, torch_threads
from bench.store import ResultsStore
from tests.conftest import tiny_grid_dict

METHODS = ["gradient", "gradcam"]
SALIENCY = {"methods": METHODS, "n_samples": 6, "sensitivity_samples": 1, "deletion_steps": 3,
            "sensitivity_images": {"gradcam": 2}, "sanity_images": 3, "sanity_checkpoints": 2,
            "overlays": 2, "threads": 1}
PNG = b"\x89PNG\r\n\x1a\n"
FP32_PTQ = [{"name": "fp32"}, {"name": "ptq", "bits": [[8, 8]]}]


def run_grid(folder: Path, store: Path, *extra: str, **changes: object) -> str:
    """`bench run` of a tiny grid with the saliency stage, in process; returns its output."""
    grid = folder / f"grid-{len(list(folder.glob('grid-*.yaml')))}.yaml"
    grid.write_text(yaml.safe_dump(tiny_grid_dict(**{"stages": {"saliency": SALIENCY},
                                                     **changes})))
    result = CliRunner().invoke(app, ["run", "--grid", str(grid), "--store", str(store),
                                      "--quiet", *extra], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("saliency")
    first = run_grid(tmp, tmp / "s", methods=FP32_PTQ)
    store = ResultsStore(tmp / "s")
    stamps = {r.cell_id: (store.artifact_dir(r.cell_id) / MAPS_FILE).stat().st_mtime_ns
              for r in store.records()}
    second = run_grid(tmp, tmp / "s", methods=FP32_PTQ)
    return {"store": store, "first": first, "second": second, "stamps": stamps}


def _by_method(store: ResultsStore) -> dict[tuple[str, int], object]:
    return {(r.method, r.seed): r for r in store.records()}


def test_maps_overlays_and_columns_are_stored(ran: dict) -> None:
    store = ran["store"]
    assert "4 ran, 0 cached" in ran["first"]
    for record in store.records():
        result = record.metrics["saliency"]
        folder = store.artifact_dir(record.cell_id)
        stored = load_maps(folder)
        assert set(stored.maps) == set(METHODS)
        assert all(m.shape == (6, 16, 16) and m.dtype == np.float32 for m in stored.maps.values())
        assert len(result["overlays"]) == 2
        assert all((folder / p).read_bytes()[:8] == PNG for p in result["overlays"])
        for method in METHODS:
            stats = result["stats"][method]["deletion_auc"]
            assert len(stats["values"]) == 6 and stats["n"] == 6
            assert stats["mean"] == pytest.approx(np.mean(stats["values"]))
    rows = store.rows()
    for row in rows:
        for metric in METRICS:
            assert column_name(metric) in row
            assert row[column_name(metric)] == row[column_name(metric, "gradient")]
            assert column_name(metric, "gradcam") in row
        assert 0.0 <= row["saliency_deletion_auc"] <= 1.0
        assert 0.0 <= row["saliency_pointing_game/gradcam"] <= 1.0
        assert row["saliency_max_sensitivity"] > 0.0


def test_quantised_cell_is_compared_with_its_parent(ran: dict) -> None:
    store = ran["store"]
    cells = _by_method(store)
    for seed in (0, 1):
        fp32, ptq = cells["fp32", seed], cells["ptq", seed]
        assert fp32.metrics["saliency"]["attributed_on"] == "float"
        assert fp32.metrics["saliency"]["reference"]["skipped"]
        assert fp32.metrics["saliency"]["columns"]["saliency_spearman_fp32"] is None
        result = ptq.metrics["saliency"]
        assert result["attributed_on"] == "fake-quant"
        assert result["reference"] == {"cell_id": ptq.parent_id, "relation": "parent",
                                       "skipped": None}
        own = load_maps(store.artifact_dir(ptq.cell_id)).maps
        parent = load_maps(store.artifact_dir(ptq.parent_id)).maps
        for method in METHODS:
            columns = result["columns"]
            assert columns[column_name("spearman_fp32", method)] == pytest.approx(
                np.nanmean(spearman(own[method], parent[method])))
            assert columns[column_name("ssim_fp32", method)] == pytest.approx(
                ssim(own[method], parent[method]).mean())
            assert columns[column_name("topk_iou_fp32", method)] == pytest.approx(
                np.nanmean(topk_iou(own[method], parent[method], 0.1)))
        assert result["columns"]["saliency_spearman_fp32"] > 0.5


def test_quantised_cell_has_its_null_control_beside_each_statistic(ran: dict) -> None:
    cells = _by_method(ran["store"])
    for seed in (0, 1):
        fp32, ptq = cells["fp32", seed].metrics["saliency"], cells["ptq", seed].metrics["saliency"]
        assert fp32["null"] == {"skipped": "float cell: no quantisation to disable"}
        assert fp32["columns"][column_name("null_spearman_fp32")] is None
        null = ptq["null"]
        assert null["built_from"] == cells["ptq", seed].parent_id
        for method in METHODS:
            for metric in NULL_METRICS:
                stats = null["stats"][method][metric]
                assert len(stats["values"]) == 6
                assert ptq["columns"][column_name("null_" + metric, method)] == stats["mean"]
            assert null["stats"][method]["spearman_fp32"]["mean"] >= 0.999
            assert null["stats"][method]["ssim_fp32"]["mean"] >= 0.999
        assert ptq["columns"]["saliency_null_spearman_fp32"] == null["stats"]["gradient"][
            "spearman_fp32"]["mean"]


def test_every_cell_carries_its_own_sanity_check(ran: dict) -> None:
    """FP32 and quantised cells alike: the quantised cell's check randomises its own Brevitas
    layers and compares its own (straight-through-gradient) maps, not FP32's."""
    cells = _by_method(ran["store"])
    for seed in (0, 1):
        for method_name in ("fp32", "ptq"):
            stage = cells[method_name, seed].metrics["saliency"]
            sanity = stage["sanity"]
            assert sanity["threshold"] == 0.5 and sanity["statistic"] == "spearman"
            assert sanity["images"] == stage["subsets"]["sanity"]["images"]
            assert len(sanity["steps"]) == 2 and sanity["steps"][-1] == sanity["n_layers"]
            for method in METHODS:
                result = sanity["methods"][method]
                assert len(result["spearman"]) == 2
                assert result["passed"] in (True, False, None)
                if result["passed"] is False:
                    assert "survive model-parameter randomisation" in result["reason"]
                column = stage["columns"][column_name("sanity_spearman", method)]
                assert column == result["spearman"][-1]
        quantised = cells["ptq", seed].metrics["saliency"]["sanity"]
        fp32 = cells["fp32", seed].metrics["saliency"]["sanity"]
        # the Brevitas graph's layers: batch norm folded into the convolutions
        assert quantised["n_layers"] < fp32["n_layers"]
        assert quantised["methods"]["gradient"]["spearman"] != fp32["methods"]["gradient"][
            "spearman"]


def test_every_cell_uses_the_same_test_images(ran: dict) -> None:
    store = ran["store"]
    data = prepare(DataConfig.model_validate(tiny_grid_dict()["datasets"][0]))
    expected = evaluation_subset(data.split.test, 6, 0)
    assert set(expected) <= set(data.split.test.tolist())
    subsets = []
    for record in store.records():
        stored = load_maps(store.artifact_dir(record.cell_id))
        np.testing.assert_array_equal(stored.index, expected)
        np.testing.assert_array_equal(stored.targets, data.images.labels[expected].numpy())
        assert record.metrics["saliency"]["images"] == expected.tolist()
        subsets.append(record.metrics["saliency"]["subsets"])
    assert all(s == subsets[0] for s in subsets)


def test_max_sensitivity_on_the_stated_subset(ran: dict) -> None:
    """sensitivity_images {gradcam: 2}: Grad-CAM's max-sensitivity on 2 of the 6 images, a
    seeded subset stated in the record, nested in the sanity check's 3; gradient's on all 6."""
    for record in ran["store"].records():
        result = record.metrics["saliency"]
        images, subsets = result["images"], result["subsets"]
        assert subsets["max_sensitivity"]["gradient"] == {"n": 6, "of": 6, "images": images}
        part = subsets["max_sensitivity"]["gradcam"]
        assert part["n"] == 2 and part["of"] == 6 and set(part["images"]) <= set(images)
        assert set(part["images"]) <= set(subsets["sanity"]["images"])
        assert part["images"] != images[:2] or subsets["sanity"]["images"] != images[:3]
        values = result["stats"]["gradcam"]["max_sensitivity"]["values"]
        kept = [v for v, i in zip(values, images, strict=True) if i in part["images"]]
        assert result["stats"]["gradcam"]["max_sensitivity"]["n"] == 2
        assert all(v is not None for v in kept) and values.count(None) == 4
        assert result["stats"]["gradient"]["max_sensitivity"]["n"] == 6
        assert result["device"] == "cpu"


def test_evaluation_subset_depends_only_on_its_seed() -> None:
    test = np.arange(10, 60, 2)
    a, b = evaluation_subset(test, 8, 3), evaluation_subset(test, 8, 3)
    np.testing.assert_array_equal(a, b)
    assert len(a) == 8 and np.all(np.diff(a) > 0) and set(a) <= set(test)
    assert not np.array_equal(a, evaluation_subset(test, 8, 4))
    np.testing.assert_array_equal(evaluation_subset(test, 100, 0), test)


def test_second_run_does_not_recompute_saliency(ran: dict) -> None:
    store = ran["store"]
    assert "0 ran, 4 cached" in ran["second"]
    for cell_id, stamp in ran["stamps"].items():
        assert (store.artifact_dir(cell_id) / MAPS_FILE).stat().st_mtime_ns == stamp


def test_seed_consistency_over_cells_differing_in_seed(ran: dict) -> None:
    store = ran["store"]
    table = seed_consistency_table(store)
    assert {(r["method"], r["saliency_method"]) for r in table} == {
        (m, s) for m in ("fp32", "ptq") for s in METHODS}
    cells = _by_method(store)
    for row in table:
        assert row["seeds"] == [0, 1]
        maps = [load_maps(store.artifact_dir(cells[row["method"], seed].cell_id))
                .maps[row["saliency_method"]] for seed in (0, 1)]
        expected = seed_consistency(maps)
        assert row["saliency_seed_spearman"]["mean"] == pytest.approx(np.nanmean(expected))
        assert row["saliency_seed_spearman"]["n"] == np.isfinite(expected).sum() > 0
    rows = with_seed_consistency(store.rows(), store)
    primary = {(r["method"], tuple(r["cell_ids"])): r["saliency_seed_spearman"]["mean"]
               for r in table if r["saliency_method"] == "gradient"}
    for row in rows:
        (value,) = [v for (method, ids), v in primary.items()
                    if method == row["method"] and row["cell_id"] in ids]
        assert row["saliency_seed_spearman"] == pytest.approx(value)
        assert "saliency_seed_spearman/gradcam" in row


def test_sgt_from_scratch_uses_the_same_seed_fp32_cell(ran: dict, tmp_path: Path) -> None:
    shutil.copytree(ran["store"].root, tmp_path / "s")
    run_grid(tmp_path, tmp_path / "s", methods=[{"name": "sgt"}], seeds=[0])
    cells = _by_method(ResultsStore(tmp_path / "s"))
    sgt = cells["sgt", 0]
    result = sgt.metrics["saliency"]
    assert result["reference"] == {"cell_id": cells["fp32", 0].cell_id,
                                   "relation": "fp32_same_seed", "skipped": None}
    assert result["columns"]["saliency_spearman_fp32"] is not None

    config, index = CellConfig.model_validate(sgt.config), np.array(result["images"])
    alone = find_reference(ResultsStore(tmp_path / "empty"), config, index)
    assert alone.maps == {} and "no FP32 cell" in alone.skipped
    other = find_reference(ResultsStore(tmp_path / "s"), config, index[:-1])
    assert other.maps == {} and "other images" in other.skipped
    retrained = config.model_copy(update={"train": config.train.model_copy(update={"lr": 0.1})})
    mismatch = find_reference(ResultsStore(tmp_path / "s"), retrained, index)
    assert mismatch.maps == {} and "training config" in mismatch.skipped


def test_trained_model_points_inside_the_lesions(tmp_path: Path) -> None:
    data = [{"name": "synthetic", "image_size": 32,
             "options": {"num_classes": 3, "num_images": 150}}]
    settings = {"methods": ["gradient"], "n_samples": 32, "sensitivity_samples": 1,
                "sanity_images": 0,
                "deletion_steps": 2, "overlays": 0, "threads": 1}
    grid = {"datasets": data, "seeds": [0], "stages": {"saliency": settings},
            "train": {"epochs": 3, "batch_size": 16, "lr": 0.003}}
    run_grid(tmp_path, tmp_path / "s", **grid)
    # The untrained control: one epoch at lr 1e-12 leaves the random start as it was (epochs: 0
    # is refused at validation).
    run_grid(tmp_path, tmp_path / "s", **{**grid, "train": {**grid["train"], "epochs": 1,
                                                           "lr": 1e-12}})
    by_lr = {r.config["train"]["lr"]: r.metrics["saliency"]
             for r in ResultsStore(tmp_path / "s").records()}
    trained, untrained = by_lr[0.003], by_lr[1e-12]
    chance = trained["localisation"]["mask_fraction"]
    hits = trained["columns"]["saliency_pointing_game"]
    assert chance < 0.15
    assert hits > max(0.5, 4 * chance)
    assert hits > untrained["columns"]["saliency_pointing_game"] + 0.25
    assert trained["columns"]["saliency_energy_pointing"] > 2 * chance


def test_torch_threads_is_restored() -> None:
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


@pytest.mark.parametrize(("settings", "message"), [
    ({"methods": ["lime"]}, "unknown saliency methods"),
    ({"methods": ["gradient"], "sensitivity_images": {"smoothgrad": 4}},
     "sensitivity_images names ['smoothgrad']"),
    ({"sensitivity_images": {"smoothgrad": 0}}, "sensitivity_images.smoothgrad"),
])
def test_bad_settings_are_a_usage_error(tmp_path: Path, settings: dict, message: str) -> None:
    grid = tmp_path / "bad.yaml"
    grid.write_text(yaml.safe_dump(tiny_grid_dict(stages={"saliency": settings})))
    result = CliRunner().invoke(app, ["run", "--grid", str(grid), "--store",
                                      str(tmp_path / "s"), "--quiet"])
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "s" / "medq.sqlite").exists()


def test_the_stage_runs_on_the_cells_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    """The model and images reach the suite, the sanity check and the overlays' maps on
    StageInput.torch_device: here `meta` (no CUDA on this machine), where no pass can run, so the
    passes are replaced by recorders; the passes themselves follow their model's device."""
    import bench.saliency.stage as stage_module
    from bench.config import load_grid
    from bench.runner.plan import build_plan
    from bench.runner.stages import StageInput
    from bench.saliency.settings import SaliencyConfig

    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump(tiny_grid_dict(seeds=1, stages={"saliency": SALIENCY})))
    plan = build_plan(load_grid(str(grid)))
    cell = plan.cells[0]
    data = plan.data[cell.data_key].load()
    cfg = SaliencyConfig(**SALIENCY)
    seen: dict[str, set[str]] = {}

    def where(name: str, *tensors: object) -> None:
        seen.setdefault(name, set()).update(
            str(t.device) for t in tensors if isinstance(t, torch.Tensor))

    def suite(model, _fp32, images, targets, *_args, **_kw):
        where("suite", images, targets, *model.parameters())
        n = len(images)
        return {m: {"maps": np.zeros((n, 16, 16), np.float32), "deletion_auc": np.zeros(n)}
                for m in cfg.methods}

    def sanity(_inp, _cfg, model, images, targets, index, maps):
        where("sanity", images, targets, *model.parameters())
        return {"skipped": "recorded"}

    monkeypatch.setattr(stage_module, "stability_suite", suite)
    monkeypatch.setattr(stage_module, "run_sanity_check", sanity)
    from bench.models import build_model

    model = build_model(cell.config.backbone, data.num_classes).eval()
    folder = tmp_path / "cell"
    folder.mkdir()
    meta = torch.device("meta")
    result = stage_module.saliency_stage(StageInput(
        cell, data, model, False, torch.zeros(0), folder, None, meta, cfg))
    assert seen == {"suite": {"meta"}, "sanity": {"meta"}}
    assert result["device"] == "meta"
    assert all(p.device.type == "cpu" for p in model.parameters())   # the cell's model is kept

