"""The report leads with what a device runs: a deployed cell's accuracy, its interval and its
tests come from ONNX Runtime's stored predictions; the torch accuracy stays beside it."""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from markupsafe import escape
from scipy import stats as ss
from sklearn.metrics import f1_score
from statsmodels.stats.multitest import multipletests

from bench import stats
from bench.report import fmt as F
from bench.report import report_context
from bench.report.build import build_report
from bench.report.data import headline, load
from bench.report.headline import _level
from bench.report.provenance import flagged
from bench.report.significance import correctness, image_families, mcnemar_vs_fp32
from bench.report.tables import main_table, text
from bench.store import CellRecord, ResultsStore
from tests.test_report import Generated, Spec, generate, label

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


def test_main_table_macro_f1_is_the_deployed_predictions_and_torch_beside(store):
    s, truth = store
    data = load(s)
    labels = truth["labels"]
    rows = {r["config"]: r for r in main_table(data).blocks[0].rows}
    for config, cid, which in (("ptq W8A8", "ptq8", 1), ("ptq W4A4", "ptq4", 0)):
        f1 = [f1_score(labels, truth["predictions"][f"{cid}s{k}"][which], average="macro")
              for k in range(SEEDS)]
        assert rows[config]["macro_f1"] == pytest.approx(np.mean(f1))
        assert rows[config]["torch_macro_f1"] == pytest.approx(0.5)   # the records' own


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


def test_clustered_mcnemar_compares_the_headline_predictions(store):
    """The per-image clustered McNemar test on accuracy reads the same headline predictions as
    McNemar and the headline accuracy: ONNX Runtime's where a cell has them, torch's
    otherwise."""
    s, truth = store
    data = load(s)
    configs = ["fp32", "ptq W8A8", "ptq W4A4"]
    (vs_fp32,) = [f for f in image_families(data.ok, configs, "accuracy", "clustered_mcnemar",
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
        expected = stats.clustered_mcnemar(cells, fp32) if by_config[config].name_a != "fp32" \
            else stats.clustered_mcnemar(fp32, cells)
        assert by_config[config].p_value == pytest.approx(expected.p_value)
    torch_only = [truth["predictions"][f"ptq8s{k}"][0] == labels for k in range(SEEDS)]
    assert by_config["ptq W8A8"].p_value != pytest.approx(stats.clustered_mcnemar(
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


# --- the headline table and its sentences ---------------------------------------------------

DEVICES = (("host", "m1"), ("raspberry-pi-4", "pi"))
CONTROL_CONFIGS = (("fp32", 32, 32), ("fp32_ft", 32, 32), ("fp32_fold_ft", 32, 32), ("qat", 4, 4),
                   ("pact_sgt", 4, 4))
UNMEASURED = "pact_sgt W4A4"
NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> tuple[Generated, dict]:
    """fp32, its training-budget twin fp32_ft, the folded-graph control fp32_fold_ft, qat W4A4
    (control fp32_fold_ft) and pact_sgt W4A4
    (control sgt_ft, not run), 3 seeds on two devices; pact_sgt W4A4 has no measurements."""
    gen = generate(tmp_path_factory.mktemp("measured"), Spec(
        configs=CONTROL_CONFIGS, seeds=3, devices=DEVICES, n_test=150))
    unmeasured = gen.cells[(gen.cells.method == "pact_sgt")].cell_id.tolist()
    with gen.store.engine.begin() as conn:
        for cid in unmeasured:
            conn.exec_driver_sql("DELETE FROM measurements WHERE cell_id = ?", (cid,))
    return gen, report_context(gen.store, figures=False)


def _headline_rows(context: dict) -> dict[str, dict]:
    return {r["config"]: r for b in context["headline"].blocks for r in b.rows}


def _accuracy(gen: Generated, method: str, w: int) -> np.ndarray:
    part = gen.cells[(gen.cells.method == method) & (gen.cells.w_bits == w)]
    return part.sort_values("seed").accuracy.to_numpy()


def _right(gen: Generated, method: str, w: int) -> list[np.ndarray]:
    part = gen.cells[(gen.cells.method == method) & (gen.cells.w_bits == w)].sort_values("seed")
    return [np.equal(*gen.predictions[c]) for c in part.cell_id]


def _clustered_oracle(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """Clustered McNemar (Durkalski et al. 2003) by hand, the image as the cluster: per image
    d = seeds A right and B wrong minus the reverse, X2 = (sum d)^2 / sum d^2 against chi2(1)."""
    d = np.sum([x.astype(int) - y.astype(int) for x, y in zip(a, b, strict=True)], axis=0)
    return float(ss.chi2.sf(d.sum() ** 2 / np.sum(d ** 2), 1))


def test_headline_numbers_equal_independent_computations(measured):
    gen, context = measured
    rows = _headline_rows(context)
    assert list(rows) == ["fp32", "fp32_ft", "fp32_fold_ft", "qat W4A4", "pact_sgt W4A4"]
    fp32 = _accuracy(gen, "fp32", 32)
    p_vs_fp32 = {c: _clustered_oracle(_right(gen, m, w), _right(gen, "fp32", 32))
                 for c, (m, w) in {"fp32_ft": ("fp32_ft", 32),
                                   "fp32_fold_ft": ("fp32_fold_ft", 32), "qat W4A4": ("qat", 4),
                                   "pact_sgt W4A4": ("pact_sgt", 4)}.items()}
    holm = dict(zip(p_vs_fp32, multipletests(list(p_vs_fp32.values()), method="holm")[1],
                    strict=True))
    lat = gen.latency.merge(gen.cells[["cell_id", "method", "w_bits"]])
    p50 = lat.groupby(["method", "w_bits", "profile"]).p50.mean()
    for method, w, _ in CONTROL_CONFIGS:
        row = rows[label(method, w, w)]
        acc = _accuracy(gen, method, w)
        low, high = ss.t.interval(0.95, len(acc) - 1, loc=acc.mean(), scale=ss.sem(acc))
        assert (row["accuracy"], row["accuracy_low"], row["accuracy_high"]) == pytest.approx(
            (acc.mean(), low, high))
        assert row["retained"] == pytest.approx(100 * acc.mean() / fp32.mean())
        part = gen.cells[(gen.cells.method == method) & (gen.cells.w_bits == w)]
        f1 = [f1_score(*gen.predictions[c], average="macro") for c in part.cell_id]
        assert row["macro_f1"] == pytest.approx(np.mean(f1))
        fp32_size = gen.cells[gen.cells.method == "fp32"].size_bytes.mean()
        assert row["size_pct"] == pytest.approx(100 * part.size_bytes.mean() / fp32_size)
        sal = part.sort_values("seed").saliency_spearman_fp32.to_numpy(dtype=float)
        if method == "fp32":
            assert row["stability"] is None and "vs_fp32" not in row
        else:
            s_low, s_high = ss.t.interval(0.95, 2, loc=sal.mean(), scale=ss.sem(sal))
            assert (row["stability"], row["stability_low"], row["stability_high"]) == \
                pytest.approx((sal.mean(), s_low, s_high))
            assert row["null_stability"] == pytest.approx(
                part.saliency_null_spearman_fp32.mean())
            d = row["vs_fp32"]
            assert d.points == pytest.approx(100 * np.mean(acc - fp32))
            assert d.test == "clustered McNemar"
            assert d.p_adjusted == pytest.approx(holm[row["config"]])
            assert d.family == "each configuration vs FP32, accuracy per image"
            assert row["d_fp32_mark"] == ("n.s." if d.p_adjusted >= 0.05 else
                                          "***" if d.p_adjusted < 0.001 else
                                          "**" if d.p_adjusted < 0.01 else "*")
        for profile, device in (("host", "host"), ("raspberry-pi-4", "raspberry-pi-4")):
            if method == "pact_sgt":
                assert row.get(f"p50@{device}") is None
                continue
            assert row[f"p50@{device}"] == pytest.approx(p50[(method, w, profile)])
            assert row[f"speedup@{device}"] == pytest.approx(
                p50[("fp32", 32, profile)] / p50[(method, w, profile)])
    qat = rows["qat W4A4"]["vs_control"]
    assert qat.reference == "fp32_fold_ft" and qat.test == "clustered McNemar"
    assert qat.p_adjusted == pytest.approx(_clustered_oracle(_right(gen, "qat", 4),
                                                       _right(gen, "fp32_fold_ft", 32)))
    assert qat.points == pytest.approx(100 * np.mean(_accuracy(gen, "qat", 4)
                                                     - _accuracy(gen, "fp32_fold_ft", 32)))
    fold = gen.cells[gen.cells.method == "fp32_fold_ft"]
    assert rows["qat W4A4"]["control_stability"] == pytest.approx(
        fold.saliency_spearman_fp32.mean())
    assert rows["pact_sgt W4A4"]["control_stability"] is None  # sgt_ft not run
    assert rows["pact_sgt W4A4"]["control"] == "sgt_ft" and "vs_control" not in \
        rows["pact_sgt W4A4"]
    assert rows["fp32"]["sanity"] == "passed on 3/3 seeds"


def test_calibration_with_seed_cis_and_change_against_the_float_controls(measured):
    """ECE, Brier and macro AUROC: the cells' (deployed) columns, mean and t-interval over
    seeds; their change against fp32_ft paired by seed; fp32_fold_ft's columns where the store
    has that control (it has here; test_calibration_against_fp32_fold_ft_where_the_store_has_it
    checks their values)."""
    gen, context = measured
    rows = _headline_rows(context)
    keys = [c.key for c in context["headline"].columns]
    assert {"ece", "brier", "auroc_macro", "d_ece@fp32_ft", "d_brier@fp32_ft",
            "d_auroc_macro@fp32_ft"} <= set(keys)
    assert {"d_ece@fp32_fold_ft", "d_brier@fp32_fold_ft"} <= set(keys)
    assert "d_ece@fp32_fold_ft" not in rows["fp32_fold_ft"]
    ft = gen.cells[gen.cells.method == "fp32_ft"].set_index("seed")
    for method, w, _ in CONTROL_CONFIGS:
        row = rows[label(method, w, w)]
        part = gen.cells[(gen.cells.method == method) & (gen.cells.w_bits == w)]
        for key in ("ece", "brier", "auroc_macro"):
            x = part.sort_values("seed")[key].to_numpy(dtype=float)
            low, high = ss.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=ss.sem(x))
            assert (row[key], row[f"{key}_low"], row[f"{key}_high"]) == pytest.approx(
                (x.mean(), low, high))
            if method == "fp32_ft":
                assert f"d_{key}@fp32_ft" not in row
                continue
            mine = part.set_index("seed")[key]
            assert row[f"d_{key}@fp32_ft"] == pytest.approx((mine - ft[key]).mean())
        if method != "fp32_ft":
            assert f"against fp32_ft Δ ECE {F.signed(row['d_ece@fp32_ft'])}" in row["sentence"]
        assert f"calibration: ECE {F.mean_ci(row['ece'], row['ece_low'], row['ece_high'], 3)}" \
            in row["sentence"]


def test_calibration_against_fp32_fold_ft_where_the_store_has_it(tmp_path):
    gen = generate(tmp_path, Spec(configs=(("fp32", 32, 32), ("fp32_ft", 32, 32),
                                           ("fp32_fold_ft", 32, 32), ("qat", 4, 4)), seeds=3,
                                  devices=(), n_test=40, saliency=False))
    context = report_context(gen.store, figures=False)
    qat = _headline_rows(context)["qat W4A4"]
    fold = gen.cells[gen.cells.method == "fp32_fold_ft"].set_index("seed").brier
    mine = gen.cells[gen.cells.method == "qat"].set_index("seed").brier
    assert qat["d_brier@fp32_fold_ft"] == pytest.approx((mine - fold).mean())
    assert "against fp32_fold_ft Δ ECE" in qat["sentence"]


def test_old_stores_without_probability_columns_say_calibration_not_measured(store):
    s, _ = store
    context = report_context(s, figures=False)
    for row in _headline_rows(context).values():
        assert row.get("ece") is None and "calibration not measured" in row["sentence"]


def test_each_quantised_row_reports_its_own_sanity_check(measured):
    """qat W4A4's cells ran the check on their fake-quant model: its verdict is its own (both
    saliency methods pass there, FP32's gradcam fails); pact_sgt W4A4's cells did not run it
    (an older store) and say so instead of borrowing FP32's verdict."""
    _, context = measured
    rows = _headline_rows(context)
    assert rows["qat W4A4"]["sanity"] == "passed on 3/3 seeds"
    assert rows["pact_sgt W4A4"]["sanity"] == (
        "not run on this configuration (run on FP32 cells only)")
    assert "FP32 seeds" not in rows["qat W4A4"]["sentence"]
    table = context["saliency"]["table"]
    by = {(r["config"], r["saliency_method"]): r for r in table.blocks[0].rows}
    assert by["fp32", "gradcam"]["muted"].startswith("fails on 3/3 seeds")
    assert "muted" not in by["qat W4A4", "gradcam"]


def _cells_text(context: dict, row: dict) -> list[str]:
    return [text(c, row) for c in context["headline"].columns]


def test_sentences_hold_only_the_rows_numbers_and_say_significance_right(measured):
    _, context = measured
    devices = context["devices"]
    for row in _headline_rows(context).values():
        sentence = row["sentence"]
        assert sentence.startswith(row["config"])
        rest = sentence
        for name in (row["config"], row.get("control") or "", *devices, "FP32", "fp32_fold_ft",
                     "fp32_ft", "p50"):
            rest = rest.replace(name, " ") if name else rest
        for key in ("fp32", "control"):
            d = row.get(f"vs_{key}")
            rest = rest.replace(_level(d.mde_alpha), " ") if d is not None and _level(
                d.mde_alpha) else rest
        shown = _cells_text(context, row)
        for number in NUMBER.findall(rest):
            assert any(number.lstrip("+") in cell for cell in shown), (number, sentence)
        for key in ("fp32", "control"):
            d = row.get(f"vs_{key}")
            if d is None or d.p_adjusted is None:
                continue
            mde = text(next(c for c in context["headline"].columns if c.key == f"mde_{key}"),
                       row)
            assert mde == F.num(d.mde, 1) and d.mde > 0
            verdict = ("difference significant" if d.p_adjusted < 0.05 else
                       f"difference not significant (detectable from {mde} points"
                       f"{_level(d.mde_alpha)})")
            assert (f"{verdict}, Holm-adjusted clustered McNemar p = {F.pval(d.p_adjusted)} "
                    f"(Holm over {d.family})") in sentence
            assert F.pval(d.p_adjusted) in text(
                next(c for c in context["headline"].columns if c.key == f"p_{key}"), row)
            assert sentence.endswith("The clustered McNemar test covers variation over test "
                                     "images for these trained models, not over re-training "
                                     "beyond their seeds.")
    qat = _headline_rows(context)["qat W4A4"]
    assert "keeps " + text(next(c for c in context["headline"].columns
                                if c.key == "retained"), qat) + " of FP32's accuracy" in \
        qat["sentence"]
    assert "against its float control fp32_fold_ft" in qat["sentence"]
    assert "its float control fp32_fold_ft ρ = " in qat["sentence"]
    rows = _headline_rows(context)
    assert "fp32_ft is the training-budget control" in rows["fp32_ft"]["sentence"]
    assert "fp32_fold_ft is the float control of the effect of quantisation" in \
        rows["fp32_fold_ft"]["sentence"]
    assert "faster than FP32 on host" in qat["sentence"] and "ρ = " in qat["sentence"]


def test_mde_beside_a_holm_verdict_is_at_alpha_over_m(measured):
    """A verdict from a Holm family of m > 1 tests prints its detectable difference at
    α/m, larger than at 0.05, and says the level."""
    from bench import stats as S
    _, context = measured
    checked = 0
    for row in _headline_rows(context).values():
        d = row.get("vs_fp32")
        if d is None or d.p_adjusted is None:
            continue
        assert d.mde_alpha is not None and d.mde_alpha < S.ALPHA
        assert row["mde_alpha_fp32"] == d.mde_alpha
        assert f"at α/m = 0.05/{round(S.ALPHA / d.mde_alpha)} = " in row["sentence"] or \
            d.p_adjusted < 0.05
        checked += 1
    assert checked


def test_sentences_flip_with_the_verdict():
    """The same row says "significant" below 0.05 and "not significant" above it."""
    from bench.report.headline import Difference, columns, sentence

    row = {"config": "qat W4A4", "method": "qat", "w_bits": 4, "a_bits": 4, "model": "deployed",
           "accuracy": 0.8, "accuracy_low": 0.79, "accuracy_high": 0.81, "retained": 95.0,
           "int_coverage": 1.0, "coverage": "1.00", "size_bytes": 10.0, "size_pct": 25.0}
    for p, word in ((0.0312, "difference significant"),
                    (0.41, "difference not significant (detectable from 5.3 points)")):
        row["vs_fp32"] = Difference("fp32", -4.2, "clustered McNemar", p, mde=5.31,
                                    family="each configuration vs FP32, accuracy per image",
                                    scope="over test images")
        row["d_fp32"], row["mde_fp32"] = -4.2, 5.31
        said = sentence(row, columns([]), True)
        assert (f"-4.2 points, {word}, Holm-adjusted clustered McNemar p = {F.pval(p)} (Holm "
                "over each configuration vs FP32, accuracy per image)") in said
        assert said.endswith(" The clustered McNemar test covers variation over test images "
                             "for these trained models, not over re-training beyond their "
                             "seeds.")
    row["vs_fp32"] = Difference("fp32", -4.2, "Wilcoxon", None, "n=3 seeds: Wilcoxon needs >= 6")
    assert "not tested: n=3 seeds" in sentence(row, columns([]), True)


def test_missing_measurements_say_not_measured(store, measured):
    s, _ = store
    context = report_context(s, figures=False)
    rows = _headline_rows(context)
    w4 = rows["ptq W4A4"]["sentence"]
    assert "(PyTorch model: no deployed predictions stored)" in w4
    assert "integer coverage not measured" in w4
    for row in rows.values():
        assert "latency not measured" in row["sentence"]
        assert "sanity check not measured" in row["sentence"]
        if row["config"] != "fp32":
            assert "saliency stability against FP32 not measured" in row["sentence"]
    assert rows["ptq W8A8"]["coverage"] == f"{(PARTIAL + 2) / 3:.2f} (partially_integer 1/3)"
    assert "integer coverage " + rows["ptq W8A8"]["coverage"] in rows["ptq W8A8"]["sentence"]
    assert rows["ptq W8A8"]["model"] == "deployed"
    _, full = measured
    pact = _headline_rows(full)[UNMEASURED]["sentence"]
    assert "latency on host not measured" in pact
    assert "latency on raspberry-pi-4 not measured" in pact
    assert "its float control sgt_ft not measured" in pact


def _latex_rows(body: list[str]) -> list[list[str]]:
    """The cells of each row (``\\`` at the end), split at unescaped ``&``."""
    return [re.split(r"(?<!\\)&", line.removesuffix("\\\\")) for line in body
            if line.endswith("\\\\")]


def _width(cells: list[str]) -> int:
    """Columns a row spans, a ``\\multicolumn{n}`` cell counting n."""
    spans = [re.match(r"\s*\\multicolumn\{(\d+)\}", c) for c in cells]
    return sum(int(m.group(1)) if m else 1 for m in spans)


def test_latex_writes_the_headline_table_with_booktabs(measured, cli, tmp_path):
    gen, context = measured
    out = tmp_path / "headline.tex"
    assert cli("report", "--store", gen.store.root, "--out", out, "--format",
               "latex").exit_code == 0
    lines = out.read_text().splitlines()
    begin = next(i for i, line in enumerate(lines) if line.startswith("\\begin{tabular}{"))
    spec = lines[begin].removeprefix("\\begin{tabular}{").removesuffix("}")
    assert set(spec) <= {"l", "r"} and len(spec) == len(context["headline"].columns)
    top, bottom = lines.index("\\toprule"), lines.index("\\bottomrule")
    mid = [i for i, line in enumerate(lines) if line == "\\midrule"]
    assert begin < top < mid[0] < bottom and lines[bottom + 1] == "\\end{tabular}"
    assert "\\cmidrule(lr)" in lines[top + 2]
    body = _latex_rows(lines[top + 1:bottom])
    assert all(_width(cells) == len(spec) for cells in body)
    configs = list(_headline_rows(context))
    assert len(body) == 3 + len(configs)   # group and label headers, the block's name
    for row in _headline_rows(context).values():
        cells = [c.strip() for c in body[3 + configs.index(row["config"])]]
        assert cells[0] == row["config"].replace("_", "\\_")
        assert text(context["headline"].columns[3], row).replace("±", "$\\pm$") in cells
        assert f"% {context['headline'].blocks[0].name}: {row['sentence']}" in lines
    main = tmp_path / "main.tex"
    assert cli("report", "--store", gen.store.root, "--out", main, "--format", "latex",
               "--table", "main").exit_code == 0
    assert "% medq-bench main table" in main.read_text()


def test_headline_in_html_rows_carry_method_bits_and_devices(measured, tmp_path):
    gen, context = measured
    html = build_report(gen.store, tmp_path / "r.html").read_text()
    assert html.index('id="headline"') < html.index('id="summary"')
    assert 'data-method="qat" data-bits="W4A4" data-device="host raspberry-pi-4"' in html
    assert 'data-method="pact_sgt" data-bits="W4A4" data-device=""' in html
    for row in _headline_rows(context).values():
        assert str(escape(row["sentence"])) in html


def test_headline_json_has_the_table_and_sentences(measured, cli, tmp_path):
    gen, context = measured
    out = tmp_path / "r.json"
    assert cli("report", "--store", gen.store.root, "--out", out, "--format",
               "json").exit_code == 0
    doc = json.loads(out.read_text())
    by_config = {r["config"]: r for r in doc["headline_table"]}
    for config, row in _headline_rows(context).items():
        assert by_config[config]["sentence"] == row["sentence"]
        assert by_config[config]["accuracy"] == pytest.approx(row["accuracy"])


@pytest.mark.parametrize("fmt", ["md", "csv"])
def test_table_option_writes_the_headline_table_as_md_and_csv(measured, cli, tmp_path, fmt):
    gen, context = measured
    out = tmp_path / f"h.{fmt}"
    assert cli("report", "--store", gen.store.root, "--out", out, "--format", fmt, "--table",
               "headline").exit_code == 0
    written = out.read_text()
    for row in _headline_rows(context).values():
        shown = text(next(c for c in context["headline"].columns if c.key == "retained"), row)
        if fmt == "md":
            assert f"| {row['config']} |" in written and shown in written
    if fmt == "csv":
        frame = pd.read_csv(io.StringIO(written))
        assert list(frame.config) == list(_headline_rows(context))
        assert frame.retained.tolist() == pytest.approx(
            [r["retained"] for r in _headline_rows(context).values()])
