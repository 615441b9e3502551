"""The `robustness` stage: corruptions (identity at severity 0, seeded, cached with a hash
check), mCE against a hand-computed fixture, a brightness-invariant model, the null control
(quantisation disabled gives the parent's mCE), and the stage end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

from bench.cli import app
from bench.data import IMAGENET_MEAN, IMAGENET_STD
from bench.errors import ConfigError
from bench.robustness import cache as C
from bench.robustness.corruptions import corrupt_batch, corrupt_image, specular_glare
from bench.robustness.metrics import corruption_errors, corruption_tests
from bench.robustness.settings import CORRUPTIONS, RobustnessSettings
from bench.robustness.stage import RESULT_FILE, evaluate
from bench.runner.stages import load_stages, validate_stage_settings
from bench.store import ResultsStore
from bench.train import predict
from tests.conftest import tiny_grid_dict


def images(n: int = 4, size: int = 20, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, size, size), dtype=np.uint8)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_severity_zero_is_the_clean_image_bit_for_bit(name: str) -> None:
    x = images()
    out = corrupt_batch(x, name, 0, 0, np.arange(len(x)))
    assert out.dtype == np.uint8 and out.tobytes() == x.tobytes()


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corruptions_are_seeded_and_deterministic(name: str) -> None:
    x = images()
    keys = np.arange(10, 10 + len(x))
    a, b = (corrupt_batch(x, name, 3, 7, keys) for _ in range(2))
    assert a.tobytes() == b.tobytes()
    assert not np.array_equal(a, x), "severity 3 changed nothing"
    # an image is corrupted the same whatever else is in the batch, and numpy's global
    # generator is left as it was
    state = np.random.get_state()[1].copy()
    alone = corrupt_batch(x[2:3], name, 3, 7, keys[2:3])
    assert np.array_equal(np.random.get_state()[1], state)
    assert alone.tobytes() == a[2:3].tobytes()


def test_random_corruptions_depend_on_the_seed() -> None:
    x = images()
    for name in ("gaussian_noise", "motion_blur", "specular_glare"):
        assert not np.array_equal(corrupt_batch(x, name, 2, 0, np.arange(4)),
                                  corrupt_batch(x, name, 2, 1, np.arange(4))), name


def test_severity_grows_the_damage() -> None:
    x = images(8, 32)
    for name in CORRUPTIONS:
        dist = [np.abs(corrupt_batch(x, name, s, 0, np.arange(8)).astype(float) - x).mean()
                for s in (1, 5)]
        assert dist[1] > dist[0], name


def test_specular_glare_saturates_to_white_at_its_centres() -> None:
    img = np.full((40, 40, 3), 60, np.uint8)
    out = specular_glare(img, 5, np.random.default_rng(0))
    assert out.max() == 255 and (out >= img).all()
    assert (out == 255).all(axis=2).mean() < 0.5


def test_bad_corruption_and_severity_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt_image(np.zeros((8, 8, 3), np.uint8), "fog", 1, 0, 0)
    with pytest.raises(ValueError, match="severity"):
        corrupt_image(np.zeros((8, 8, 3), np.uint8), "contrast", 6, 0, 0)
    load_stages()
    with pytest.raises(ConfigError, match="unknown corruptions"):
        validate_stage_settings({"robustness": {"corruptions": ["fog"]}})
    with pytest.raises(ConfigError, match="severities"):
        validate_stage_settings({"robustness": {"severities": [0, 1]}})


def test_corrupted_images_are_cached_once_and_hash_checked(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    x, index = images(), np.array([3, 5, 8, 9])
    args = (x, index, "fp", "manifest", "gaussian_noise", 2, 0)
    first = C.corrupted_images(tmp_path, *args)
    calls = []
    real = C.corrupt_batch
    monkeypatch.setattr(C, "corrupt_batch", lambda *a: calls.append(a) or real(*a))
    assert C.corrupted_images(tmp_path, *args).tobytes() == first.tobytes()
    assert calls == [], "the cached images were made again"
    [path] = (tmp_path / "corrupted").glob("*.npz")
    np.savez(path, images=np.zeros_like(first))          # damaged: fails the hash check
    assert C.corrupted_images(tmp_path, *args).tobytes() == first.tobytes()
    assert len(calls) == 1
    other = C.corrupted_images(tmp_path, x, index, "fp", "manifest", "gaussian_noise", 3, 0)
    assert len(calls) == 2 and not np.array_equal(other, first)


def test_two_image_sizes_of_one_data_set_do_not_share_corrupted_images(tmp_path: Path) -> None:
    """Same fingerprint, split and index, different image size: two cache entries, each the
    corruption of its own clean images."""
    index = np.array([0, 1])
    rng = np.random.default_rng(1)
    small = rng.integers(0, 256, (2, 3, 8, 8), dtype=np.uint8)
    large = rng.integers(0, 256, (2, 3, 16, 16), dtype=np.uint8)
    args = ("fp", "manifest", "gaussian_noise", 2, 0)
    a = C.corrupted_images(tmp_path, small, index, *args)
    b = C.corrupted_images(tmp_path, large, index, *args)
    assert a.shape == small.shape and b.shape == large.shape
    assert len(list((tmp_path / "corrupted").glob("*.npz"))) == 2


def hand_mce(err: np.ndarray, ref: np.ndarray, clean: float, ref_clean: float
             ) -> tuple[float, float]:
    """Hendrycks & Dietterich's definitions written out with loops."""
    ces, rels = [], []
    for c in range(err.shape[0]):
        ces.append(100 * sum(err[c]) / sum(ref[c]))
        rels.append(100 * sum(e - clean for e in err[c]) / sum(r - ref_clean for r in ref[c]))
    return sum(ces) / len(ces), sum(rels) / len(rels)


def test_mce_matches_the_definition_on_a_fixture() -> None:
    rng = np.random.default_rng(0)
    n = 200
    ref_correct = rng.random((3, 2, n)) < np.array([0.7, 0.5])[None, :, None]
    correct = rng.random((3, 2, n)) < np.array([0.6, 0.3])[None, :, None]
    clean, ref_clean = rng.random(n) < 0.9, rng.random(n) < 0.95
    out = corruption_errors(correct, clean, ref_correct, ref_clean, ["a", "b", "c"],
                            bootstrap=300, seed=0)
    mce, rel = hand_mce(1 - correct.mean(2), 1 - ref_correct.mean(2), 1 - clean.mean(),
                        1 - ref_clean.mean())
    assert out["mce"] == pytest.approx(mce) and out["relative_mce"] == pytest.approx(rel)
    assert out["mce"] > 100
    lo, hi = out["mce_ci"]
    assert lo < out["mce"] < hi
    same = corruption_errors(ref_correct, ref_clean, ref_correct, ref_clean, ["a", "b", "c"])
    assert same["mce"] == pytest.approx(100) and same["relative_mce"] == pytest.approx(100)


def test_corruption_tests_are_holm_adjusted_and_detect_a_real_drop() -> None:
    rng = np.random.default_rng(1)
    ref = rng.random((2, 3, 300)) < 0.8
    worse = ref.copy()
    worse[0, :, :120] = False                 # corruption 0: 40% of images lost at every level
    tests = corruption_tests(worse, ref, ["hit", "same"])
    assert tests["hit"]["p_holm"] < 1e-6 and tests["hit"]["diff_mean"] < 0
    assert tests["same"]["p_value"] is None and tests["same"]["reason"]
    assert tests["hit"]["p_holm"] >= tests["hit"]["p_value"]


class ChannelVote(nn.Module):
    """Predicts the brightest colour channel of the (un-normalised) image: blind to
    imagecorruptions' brightness, which raises HSV value and keeps hue and saturation."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * (x * self.std + self.mean).mean(dim=(2, 3))


def test_a_model_that_ignores_brightness_has_brightness_error_zero() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 30)
    x = np.full((30, 3, 32, 32), 40, np.uint8)
    x[np.arange(30), labels] = 180
    x = np.clip(x.astype(int) + rng.integers(-10, 10, x.shape), 0, 255).astype(np.uint8)
    cfg = RobustnessSettings(corruptions=["brightness", "contrast", "gaussian_noise"],
                             severities=[1, 3, 5])
    corrupted = {(c, s): corrupt_batch(x, c, s, 0, np.arange(30))
                 for c in cfg.corruptions for s in cfg.severities}
    model = ChannelVote().eval()
    correct = evaluate({"torch": lambda im: predict(model, torch.from_numpy(im),
                                                    torch.device("cpu")).numpy()},
                       x, labels, corrupted, cfg)["torch"]
    assert correct["clean"].all()
    assert correct["corrupted"][0].all(), "brightness changed the brightest channel"
    change = np.abs(corrupted["brightness", 5].astype(float) - x).mean()
    assert change > 30, "control: brightness at severity 5 changes the pixels"
    ref = np.zeros_like(correct["corrupted"])       # a reference that fails everything
    out = corruption_errors(correct["corrupted"], correct["clean"], ref,
                            np.zeros(30, bool), cfg.corruptions)
    assert out["ce"]["brightness"] == 0.0


def test_quantisation_disabled_gives_the_parents_mce() -> None:
    from bench.config import BackboneConfig
    from bench.models import build_model
    from bench.quant import quantization_disabled
    from bench.saliency.null import null_graph
    from methods import get_method

    torch.manual_seed(0)
    parent = build_model(BackboneConfig(name="smallcnn"), 3).eval()
    x = images(24, 16, seed=3)
    ptq = get_method("ptq")
    from bench.data import normalize
    graph = null_graph(ptq, parent, 4, 4, ptq.parse_params({}),
                       normalize(torch.from_numpy(x[:2])))
    cfg = RobustnessSettings(corruptions=["contrast", "specular_glare"], severities=[1, 4])
    corrupted = {(c, s): corrupt_batch(x, c, s, 0, np.arange(24))
                 for c in cfg.corruptions for s in cfg.severities}
    labels = predict(parent, torch.from_numpy(x), torch.device("cpu")).argmax(1).numpy()
    labels[::3] = (labels[::3] + 1) % 3                 # some clean errors

    def run(model: nn.Module) -> dict[str, np.ndarray]:
        return evaluate({"torch": lambda im: predict(model, torch.from_numpy(im),
                                                     torch.device("cpu")).numpy()},
                        x, labels, corrupted, cfg)["torch"]

    ref = run(parent)
    with quantization_disabled(graph):
        null = run(graph)
    quant = run(graph)
    assert np.array_equal(null["corrupted"], ref["corrupted"])
    out = corruption_errors(null["corrupted"], null["clean"], ref["corrupted"], ref["clean"],
                            cfg.corruptions)
    own = corruption_errors(ref["corrupted"], ref["clean"], ref["corrupted"], ref["clean"],
                            cfg.corruptions)
    assert out["mce"] == own["mce"] == pytest.approx(100)
    assert out["relative_mce"] == own["relative_mce"]
    assert quant["corrupted"].shape == ref["corrupted"].shape


ROBUST = {"corruptions": ["gaussian_noise", "specular_glare"], "severities": [1, 3],
          "bootstrap": 50, "saliency_images": 4}


def test_stage_end_to_end_with_deploy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDQ_CACHE", str(tmp_path / "cache"))   # this test's own cache
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump(tiny_grid_dict(
        seeds=1, methods=[{"name": "fp32"}, {"name": "ptq", "bits": [[8, 8]]}],
        stages={"deploy": {}, "robustness": ROBUST})))
    args = ["run", "--grid", str(grid), "--store", str(tmp_path / "s"), "--quiet"]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    store = ResultsStore(tmp_path / "s")
    recs = {r.method: r for r in store.records()}
    fp32, ptq = recs["fp32"].metrics["robustness"], recs["ptq"].metrics["robustness"]
    assert fp32["engines"] == ["torch", "onnx"] == ptq["engines"]
    assert fp32["columns"]["robustness_mce"] == pytest.approx(100)
    assert fp32["reference"]["relation"] == "self"
    assert ptq["reference"] == {"cell_id": recs["ptq"].config["parent_id"],
                                "relation": "parent", "skipped": None}
    assert ptq["columns"]["robustness_mce"] is not None
    assert ptq["columns"]["robustness_onnx_mce"] is not None
    assert set(ptq["results"]["torch"]["tests"]) == set(ROBUST["corruptions"])
    acc = ptq["results"]["onnx"]["accuracy"]["gaussian_noise"]
    assert len(acc) == 2 and all(0 <= a <= 1 for a in acc)
    rho = ptq["results"] and ptq["saliency"]
    assert rho["method"] == "gradient" and len(rho["images"]) == 4
    assert -1 <= ptq["columns"]["robustness_saliency_spearman"] <= 1
    assert ptq["columns"]["robustness_saliency_spearman"] == pytest.approx(
        np.mean([v for per in rho["spearman"].values() for v in per]))
    for r in recs.values():
        with np.load(store.artifact_dir(r.cell_id) / RESULT_FILE) as f:
            assert f["torch/corrupted"].shape == (2, 2, len(f["index"]))
    # each corrupted set was made once for the two cells: per corruption and severity, one for
    # the test subset and one for the saliency subset
    cached = list((tmp_path / "cache" / "corrupted").glob("*.npz"))
    assert len(cached) == 2 * len(ROBUST["corruptions"]) * len(ROBUST["severities"]), cached
    stamps = {p: p.stat().st_mtime_ns for p in cached}
    again = CliRunner().invoke(app, args, catch_exceptions=False)
    assert again.exit_code == 0
    assert {p: p.stat().st_mtime_ns for p in cached} == stamps
    assert len(list(store.records())) == 2
    report = CliRunner().invoke(app, ["report", "--store", str(tmp_path / "s"),
                                      "--out", str(tmp_path / "r.html")],
                                catch_exceptions=False)
    assert report.exit_code == 0, report.output
    html = (tmp_path / "r.html").read_text()
    section = html.split('<h2 id="robustness">Robustness to artefacts</h2>')[1].split("<h2")[0]
    assert "<svg" in section and "p (Holm) gaussian_noise" in section
    assert "100.0" in section                     # FP32's own mCE


def test_a_parents_changed_robustness_result_fails_the_child_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The parent's robustness.npz is read only once its SHA-256 is the record's: changed after
    the driver's damage check (simulated by turning that check off), the child fails, named."""
    robust = {**ROBUST, "corruptions": ["gaussian_noise"], "severities": [1]}
    grid, store_dir = tmp_path / "grid.yaml", tmp_path / "s"
    for methods in ([{"name": "fp32"}], [{"name": "fp32"}, {"name": "ptq", "bits": [[8, 8]]}]):
        grid.write_text(yaml.safe_dump(tiny_grid_dict(seeds=1, methods=methods,
                                                      stages={"robustness": robust})))
        args = ["run", "--grid", str(grid), "--store", str(store_dir), "--quiet"]
        CliRunner().invoke(app, args, catch_exceptions=False)
        if len(methods) == 1:
            [fp32] = ResultsStore(store_dir).records()
            path = ResultsStore(store_dir).artifact_dir(fp32.cell_id) / RESULT_FILE
            with np.load(path) as f:
                arrays = dict(f)
            np.savez(path, **{**arrays, "labels": arrays["labels"][::-1]})
            monkeypatch.setattr(ResultsStore, "damaged", lambda self, record: [])
    ptq = {r.method: r for r in ResultsStore(store_dir).records()}["ptq"]
    assert ptq.status == "failed"
    assert RESULT_FILE in ptq.error and "SHA-256 differs" in ptq.error

MAX_ROBUSTNESS_SHARE = 0.15


@pytest.mark.parametrize("grid", ["paper", "full"])
def test_robustness_is_at_most_15_percent_of_the_grids_compute(grid: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    """By the dry run's estimate with RatioProbe's costs (tests/test_paper_shaped.py), and an
    ONNX Runtime image (and a corrupted image) costing as much as a torch forward pass, the
    robustness stage of the shipped grids, every corruption at every severity on torch and
    ONNX, is at most MAX_ROBUSTNESS_SHARE of their compute."""
    from bench.runner import estimate as estimate_module
    from tests.test_paper_shaped import RESNET18_224, RatioProbe

    class Probe(RatioProbe):
        def per_image_s(self, fn: object, batch: int) -> float:
            return RESNET18_224["forward"]

    monkeypatch.setattr(estimate_module, "CellModelProbe", Probe)
    monkeypatch.setenv("MEDQ_CACHE", str(tmp_path / "cache"))   # no estimate cached by others
    settings = RobustnessSettings(**yaml.safe_load(
        (Path("bench/grids") / f"{grid}.yaml").read_text())["stages"]["robustness"])
    assert settings.corruptions == list(CORRUPTIONS) and settings.severities == [1, 2, 3, 4, 5]
    result = CliRunner().invoke(app, ["run", "--grid", grid, "--store", str(tmp_path / "s"),
                                      "--dry-run", "--device", "cpu"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    share = float(out.split("robustness stage: ")[1].split("%")[0]) / 100
    assert 0.02 < share <= MAX_ROBUSTNESS_SHARE, out[-2000:]


def test_report_flags_clean_equal_but_brittle_configurations(tmp_path: Path) -> None:
    """Flag: clean accuracy within 1 point of FP32 and mCE more than 5 points worse; the
    per-corruption test pools seeds and severities per image and is Holm-adjusted."""
    from types import SimpleNamespace

    import pandas as pd

    from bench.report.data import config_label
    from bench.report.robustness import RESULT_FILE as REPORT_FILE
    from bench.report.robustness import robustness_view, severity_panels

    assert REPORT_FILE == RESULT_FILE
    rng = np.random.default_rng(0)
    n, rows = 150, []
    base = rng.random((2, 2, n)) < 0.8
    spec = {("fp32", 32, 32): (0.80, 100.0, base),
            ("ptq", 4, 4): (0.795, 112.0, base & (rng.random((2, 2, n)) < 0.6)),
            ("qat", 4, 4): (0.80, 103.0, base),
            ("lsq", 4, 4): (0.70, 120.0, base & (rng.random((2, 2, n)) < 0.6))}
    for (method, w, a), (acc, mce, correct) in spec.items():
        for seed in (0, 1):
            cid = f"{method}{w}-{seed}"
            (tmp_path / cid).mkdir()
            np.savez(tmp_path / cid / RESULT_FILE, index=np.arange(n),
                     corruptions=np.array(["contrast", "brightness"]), severities=np.array([1, 3]),
                     **{"torch/clean": np.ones(n, bool), "torch/corrupted": correct})
            rows.append({"cell_id": cid, "dataset": "d", "backbone": "b", "method": method,
                         "w_bits": w, "a_bits": a, "seed": seed, "accuracy": acc,
                         "config": config_label(method, w, a), "robustness_mce": mce + seed,
                         "robustness_relative_mce": mce, "robustness_onnx_mce": None})
    data = SimpleNamespace(ok=pd.DataFrame(rows), artifact_dir=lambda cid: tmp_path / cid)
    [block] = robustness_view(data)
    by = {r.config: r for r in block.rows}
    flagged = {c for c, r in by.items() if r.flag}
    assert flagged == {config_label("ptq", 4, 4)}
    ptq, qat = by[config_label("ptq", 4, 4)], by[config_label("qat", 4, 4)]
    assert ptq.mce[0] == pytest.approx(112.5) and ptq.mce[1] < 112.5 < ptq.mce[2]
    assert ptq.tests["contrast"]["p_holm"] < 0.001
    assert qat.tests["contrast"]["p"] is None          # identical to FP32: no discordance
    assert block.curves["contrast"]["fp32"] == pytest.approx(list(base[0].mean(axis=1)))
    assert severity_panels(block) is not None
