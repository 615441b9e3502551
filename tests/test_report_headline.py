"""The report leads with what a device runs: a deployed cell's accuracy, its interval and its
tests come from ONNX Runtime's stored predictions; the torch accuracy stays beside it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from bench import stats
from bench.report.build import build_report
from bench.report.data import headline, load
from bench.report.provenance import flagged
from bench.report.significance import correctness, image_families, mcnemar_vs_fp32
from bench.report.tables import main_table
from bench.store import CellRecord, ResultsStore

N = 80
SEEDS = 3
T0 = datetime(2026, 1, 1, tzinfo=UTC)
PARTIAL = 0.345


def _predictions(rng: np.random.Generator, labels: np.ndarray, quality: float) -> np.ndarray:
    return np.where(rng.random(N) < quality, labels, (labels + 1) % 3)


def _save(path, labels: np.ndarray, predictions: np.ndarray) -> None:
    np.savez(path, index=np.arange(N), labels=labels, logits=np.eye(3)[predictions],
             predictions=predictions)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[ResultsStore, dict]:
    """fp32 and ptq W8A8 over 3 seeds: torch and deployed predictions differ, ptq W8A8 seed 0
    is partially integer; the ptq W4A4 cells have no deploy stage."""
    store = ResultsStore(tmp_path_factory.mktemp("headline"))
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, N)
    truth: dict = {}
    configs = [("fp32", 32, True), ("ptq", 8, True), ("ptq", 4, False)]
    for i, (method, bits, deployed) in enumerate(configs):
        for seed in range(SEEDS):
            cid = f"{method}{bits}s{seed}"
            torch_pred = _predictions(rng, labels, 0.9 - 0.1 * i)
            ort_pred = _predictions(rng, labels, 0.6) if method == "ptq" else torch_pred
            metrics: dict = {}
            if deployed:
                partial = method == "ptq" and seed == 0
                metrics["deploy"] = {
                    "deployed_predictions": "deployed_predictions.npz",
                    "columns": {"deployed_accuracy": float((ort_pred == labels).mean()),
                                "int_coverage": PARTIAL if partial else float(method != "fp32"),
                                "deploy_flags": "partially_integer" if partial else ""}}
            record = CellRecord(
                cell_id=cid, parent_id=None, grid="g", dataset="synthetic", backbone="smallcnn",
                method=method, w_bits=bits, a_bits=bits, seed=seed, status="ok", error=None,
                accuracy=float((torch_pred == labels).mean()), macro_f1=0.5, train_seconds=1.0,
                split_manifest="m", metrics=metrics, config={}, provenance={},
                started_at=T0, finished_at=T0 + timedelta(minutes=i * SEEDS + seed))
            with store.staging(cid) as staged:
                _save(staged / "predictions.npz", labels, torch_pred)
                if deployed:
                    _save(staged / "deployed_predictions.npz", labels, ort_pred)
                store.commit(record, staged)
            truth[cid] = (torch_pred, ort_pred if deployed else None)
    return store, {"labels": labels, "predictions": truth}


def test_headline_is_the_deployed_model_when_the_cell_has_one(store):
    s, _ = store
    records = {r.cell_id: r for r in s.records()}
    lead = headline(records["ptq8s0"])
    assert lead.source == "deployed" and lead.predictions_file == "deployed_predictions.npz"
    assert lead.accuracy == records["ptq8s0"].metrics["deploy"]["columns"]["deployed_accuracy"]
    plain = headline(records["ptq4s0"])
    assert plain.source == "torch" and plain.accuracy == records["ptq4s0"].accuracy


def test_report_accuracy_and_interval_use_deployed_predictions(store):
    s, truth = store
    data = load(s)
    labels = truth["labels"]
    ptq8 = data.ok[data.ok.config == "ptq W8A8"].sort_values("seed")
    deployed = [float((truth["predictions"][f"ptq8s{k}"][1] == labels).mean())
                for k in range(SEEDS)]
    torch_acc = [float((truth["predictions"][f"ptq8s{k}"][0] == labels).mean())
                 for k in range(SEEDS)]
    assert ptq8.accuracy.tolist() == pytest.approx(deployed)
    assert ptq8.torch_accuracy.tolist() == pytest.approx(torch_acc)
    assert set(ptq8.accuracy_source) == {"deployed"}
    row = next(r for r in main_table(data).blocks[0].rows if r["config"] == "ptq W8A8")
    mean, low, high = stats.mean_ci(np.array(deployed))
    assert (row["accuracy"], row["accuracy_low"], row["accuracy_high"]) == pytest.approx(
        (mean, low, high))
    assert row["accuracy"] != pytest.approx(np.mean(torch_acc))


def test_mcnemar_compares_deployed_predictions(store):
    s, truth = store
    data = load(s)
    rows, _ = mcnemar_vs_fp32(data, data.ok)
    labels = truth["labels"]
    for r in rows:
        method, bits = ("ptq", 8) if r.config == "ptq W8A8" else ("ptq", 4)
        torch_pred, ort_pred = truth["predictions"][f"{method}{bits}s{r.seed}"]
        fp32 = truth["predictions"][f"fp32{32}s{r.seed}"][1]
        expected = stats.mcnemar_exact(ort_pred if ort_pred is not None else torch_pred,
                                       fp32, labels)
        assert r.result.p_value == pytest.approx(expected.p_value)
    assert {r.config for r in rows} == {"ptq W8A8", "ptq W4A4"}


def test_cmh_compares_the_headline_predictions(store):
    """The per-image CMH test on accuracy reads the same headline predictions as McNemar and
    the headline accuracy: ONNX Runtime's where a cell has them, torch's otherwise."""
    s, truth = store
    data = load(s)
    configs = ["fp32", "ptq W8A8", "ptq W4A4"]
    (vs_fp32,) = [f for f in image_families(data.ok, configs, "accuracy", "cmh",
                                            correctness(data))
                  if f.title == "accuracy per image: each configuration vs FP32"]
    labels = truth["labels"]

    def right(cid: str) -> np.ndarray:
        torch_pred, ort_pred = truth["predictions"][cid]
        return (ort_pred if ort_pred is not None else torch_pred) == labels

    by_config = {r.name_b if r.name_a == "fp32" else r.name_a: r for r in vs_fp32.results}
    assert set(by_config) == {"ptq W8A8", "ptq W4A4"}
    for config, bits in (("ptq W8A8", 8), ("ptq W4A4", 4)):
        fp32 = [right(f"fp32{32}s{k}") for k in range(SEEDS)]
        cells = [right(f"ptq{bits}s{k}") for k in range(SEEDS)]
        expected = stats.cmh_paired(cells, fp32) if by_config[config].name_a != "fp32" else \
            stats.cmh_paired(fp32, cells)
        assert by_config[config].p_value == pytest.approx(expected.p_value)
    torch_only = [truth["predictions"][f"ptq8s{k}"][0] == labels for k in range(SEEDS)]
    assert by_config["ptq W8A8"].p_value != pytest.approx(stats.cmh_paired(
        torch_only, [right(f"fp32{32}s{k}") for k in range(SEEDS)]).p_value)


def test_partially_integer_cells_show_their_coverage_and_flag_beside_their_latency(store,
                                                                                   tmp_path):
    """A cell whose ONNX graph runs some Conv/Gemm/MatMul/Add in float: the main table shows
    its integer coverage and flag in the row that holds its latency, and the flagged list says
    that its latency is not an integer latency."""
    s, _ = store
    data = load(s)
    rows = {r["config"]: r for r in main_table(data).blocks[0].rows}
    assert rows["ptq W8A8"]["int_coverage"] == pytest.approx((PARTIAL + 2) / 3)
    assert rows["ptq W8A8"]["flags"] == "partially_integer (1/3)"
    assert rows["fp32"]["int_coverage"] == 0.0 and rows["fp32"]["flags"] == ""
    (flag,) = flagged(data)
    assert flag.kind == "partially_integer" and flag.what.endswith("W8A8 seed 0")
    assert f"{PARTIAL:.4f}" in flag.reason and "not an integer model's latency" in flag.reason
    html = build_report(s, tmp_path / "r.html").read_text()
    assert "int. coverage" in html and "partially_integer" in html
