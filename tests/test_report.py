"""The report: every section renders for empty, small, failed, multi-device and large stores,
every statistic it shows equals an independent computation, and every output format works."""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats as ss
from sklearn.metrics import f1_score
from statsmodels.stats.multitest import multipletests

from bench import stats
from bench.report import build_report, report_context
from bench.report import fmt as F
from bench.report.plots import pareto_front
from bench.store import CellRecord, ResultsStore
from bench.store.measurements import MeasurementRecord, save_measurement

SANITY_REASON = "maps survive model-parameter randomisation: Spearman 0.80 >= 0.5"
QUANT = [("ptq", 8, 8), ("qat", 8, 8), ("ptq", 4, 4), ("qat", 4, 4), ("pact", 4, 4)]
T0 = datetime(2026, 1, 1, tzinfo=UTC)
PNG_1PX = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                        "1f15c4890000000d4944415478da63f8cfc0f01f0005000201a7e2ad4f"
                        "0000000049454e44ae426082")


@dataclass
class Spec:
    """What to generate: datasets x backbones x configs x seeds, measured on ``devices``
    (profile, machine) pairs, each its own device named after the profile (and the machine where
    two share a profile), or (profile, machine, device) triples."""

    datasets: tuple[str, ...] = ("synthetic",)
    backbones: tuple[str, ...] = ("smallcnn",)
    configs: tuple[tuple[str, int, int], ...] = (("fp32", 32, 32), *QUANT[:3])
    seeds: int = 10
    devices: tuple[tuple[str, ...], ...] = (("host", "m1"),)
    n_test: int = 60
    saliency: bool = True
    overlays: bool = False
    failed: int = 0
    flagged: bool = False
    measure_failed: bool = False


@dataclass
class Generated:
    store: ResultsStore
    cells: pd.DataFrame
    latency: pd.DataFrame
    predictions: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


def _cell_id(*key: Any) -> str:
    return hashlib.sha256(repr(key).encode()).hexdigest()[:16]


def _saliency(rng: np.random.Generator, method: str, quality: float) -> dict[str, Any]:
    def describe(values: np.ndarray) -> dict[str, Any]:
        return {"mean": float(values.mean()), "std": float(values.std(ddof=1)),
                "n": int(values.size), "values": [float(v) for v in values]}

    stats, null = {}, {}
    for sal in ("gradient", "gradcam"):
        metrics = {"max_sensitivity": describe(rng.uniform(0.1, 0.3, 8)),
                   "deletion_auc": describe(rng.uniform(0.2, 0.4, 8))}
        if method != "fp32":
            metrics["spearman_fp32"] = describe(np.clip(rng.normal(quality, 0.05, 8), -1, 1))
            null[sal] = {"spearman_fp32": describe(1.0 - rng.uniform(0, 1e-4, 8))}
        stats[sal] = metrics
    columns = {f"saliency_{m}": stats["gradient"].get(m, {}).get("mean")
               for m in ("spearman_fp32", "max_sensitivity", "deletion_auc")}
    columns["saliency_null_spearman_fp32"] = null.get("gradient", {}).get(
        "spearman_fp32", {}).get("mean")
    # FP32: gradcam fails; quantised cells have their own verdicts (both pass), except pact_sgt,
    # which stands for a store from before the check ran on quantised cells
    sanity = {"methods": {"gradient": {"passed": True, "reason": None, "spearman": [0.3, 0.1]},
                          "gradcam": {"passed": method != "fp32",
                                      "reason": SANITY_REASON if method == "fp32" else None,
                                      "spearman": [0.9, 0.8 if method == "fp32" else 0.2]}}
              } if method != "pact_sgt" else {"skipped": "run on FP32 cells only"}
    subsets = {"max_sensitivity": {"gradient": {"n": 8, "of": 8, "images": list(range(8))},
                                   "gradcam": {"n": 2, "of": 8, "images": [1, 6]}},
               "sanity": {"n": 3, "of": 8, "images": [1, 4, 6]}}
    return {"stats": stats, "primary": "gradient", "columns": columns, "images": list(range(8)),
            "null": {"stats": null} if null else {"skipped": "float cell"}, "sanity": sanity,
            "subsets": subsets}


def generate(root: Path, spec: Spec) -> Generated:
    """A store of synthetic but realistic records, committed through ResultsStore.commit, with
    predictions.npz per cell and measurements through save_measurement."""
    store = ResultsStore(root)
    rng = np.random.default_rng(123)
    rows, lat, preds = [], [], {}
    for dataset in spec.datasets:
        labels = rng.integers(0, 3, spec.n_test)
        for backbone in spec.backbones:
            for c, (method, w, a) in enumerate(spec.configs):
                quality = 0.85 - 0.03 * c
                for seed in range(spec.seeds):
                    cid = _cell_id(dataset, backbone, method, w, a, seed)
                    correct = rng.random(spec.n_test) < quality
                    pred = np.where(correct, labels, (labels + 1) % 3)
                    acc = float((pred == labels).mean())
                    quant = w != 32
                    params = 100_000 + 1000 * spec.backbones.index(backbone)
                    deploy = {"size_bytes": 4 * params + 2000 if not quant else params + 9000,
                              "packed_size_bytes": 4 * params if not quant else params * w // 8,
                              "int_kernels": 3 if quant else 0,
                              "deployed_accuracy": acc - (0.01 * (seed % 2) if quant else 0.0),
                              "agreement": 1.0 - (0.02 * (seed % 2) if quant else 0.0),
                              "params": params, "macs": 10 * params,
                              "deploy_flags": "low_agreement"
                              if spec.flagged and quant and seed % 2 else ""}
                    own = np.random.default_rng(int(cid[:8], 16))  # rng draws as before
                    deploy.update(ece=float(own.uniform(0.02, 0.1) + 0.01 * c),
                                  brier=float(own.uniform(0.2, 0.4)),
                                  auroc_macro=float(own.uniform(0.8, 0.95)))
                    metrics: dict[str, Any] = {"accuracy": acc, "deploy": {"columns": deploy},
                                               "evaluation": {"columns": {
                                                   f"torch_{k}": deploy[k] + 0.001 for k in
                                                   ("ece", "brier", "auroc_macro")}}}
                    if spec.saliency:
                        metrics["saliency"] = _saliency(rng, method, quality)
                    record = CellRecord(
                        cell_id=cid, parent_id=None if not quant else _cell_id(
                            dataset, backbone, "fp32", 32, 32, seed), grid="gen",
                        dataset=dataset, backbone=backbone, method=method, w_bits=w, a_bits=a,
                        seed=seed, status="ok", error=None, accuracy=acc,
                        macro_f1=acc - 0.05, train_seconds=10.0 + seed,
                        split_manifest=f"manifest-{dataset}", metrics=metrics, config={},
                        provenance={"packages": {"torch": "2.14.1", "numpy": "2.4.6"},
                                    "git": {"commit": "abc123", "dirty": False},
                                    "machine": {"cpu_model": "Test CPU", "cores_logical": 2,
                                                "ram_gb": 8, "os": "Linux"}},
                        started_at=T0 + timedelta(minutes=len(rows)),
                        finished_at=T0 + timedelta(minutes=len(rows), seconds=30))
                    with store.staging(cid) as staged:
                        np.savez(staged / "predictions.npz", index=np.arange(spec.n_test),
                                 labels=labels, logits=np.zeros((spec.n_test, 3)),
                                 predictions=pred)
                        if spec.overlays:
                            (staged / "saliency_overlays").mkdir()
                            (staged / "saliency_overlays" / "gradient-00000.png").write_bytes(
                                PNG_1PX)
                        store.commit(record, staged)
                    preds[cid] = (labels, pred)
                    rows.append({"cell_id": cid, "dataset": dataset, "backbone": backbone,
                                 "method": method, "w_bits": w, "a_bits": a, "seed": seed,
                                 "accuracy": acc, **deploy,
                                 **(metrics["saliency"]["columns"] if spec.saliency else {})})
                    for d, (profile, machine, *name) in enumerate(spec.devices):
                        p50 = (2.0 + d) * (w / 32 if quant else 1.0) * (1 + 0.01 * seed)
                        lat.append({"cell_id": cid, "profile": profile, "machine": machine,
                                    "p50": p50, "p90": 1.2 * p50, "rss": 50.0 + d + c})
                        save_measurement(store.engine, _measurement(
                            cid, profile, machine, p50, 50.0 + d + c, len(lat),
                            device=device_name(spec, profile, machine, name)))
    for i in range(spec.failed):
        store.commit(CellRecord(
            cell_id=f"failed{i}", parent_id=None, grid="gen", dataset=spec.datasets[0],
            backbone=spec.backbones[0], method="qat", w_bits=2, a_bits=2, seed=i,
            status="failed", error=f"Traceback ...\nRuntimeError: boom {i}", accuracy=None,
            macro_f1=None, train_seconds=None, split_manifest="m", metrics={}, config={},
            provenance={}, started_at=T0, finished_at=T0))
    if spec.measure_failed and rows:
        save_measurement(store.engine, _measurement(rows[0]["cell_id"], "edge-1core-1g", "m1",
                                                    None, None, 10_000, "MemoryError: limit"))
    return Generated(store, pd.DataFrame(rows), pd.DataFrame(lat), preds)


def device_name(spec: Spec, profile: str, machine: str, name: list[str]) -> str:
    """The device a generated (profile, machine) measurement is from."""
    if name:
        return name[0]
    shared = sum(d[0] == profile for d in spec.devices) > 1
    return f"{profile}-{machine}" if shared else profile


def _measurement(cell_id: str, profile: str, machine: str, p50: float | None,
                 rss: float | None, n: int, error: str | None = None,
                 device: str | None = None) -> MeasurementRecord:
    return MeasurementRecord(
        cell_id=cell_id, profile=profile, machine=machine, device=device or profile, batch_size=1,
        status="ok" if error is None else "failed", error=error, isolation="process",
        samples_s=[], latency_ms_mean=p50, latency_ms_std=None, latency_cv=None,
        latency_ms_min=p50, latency_ms_p50=p50, latency_ms_p90=None if p50 is None else 1.2 * p50,
        latency_ms_p99=None if p50 is None else 1.5 * p50, load_time_s=0.01, peak_rss_mb=rss,
        size_bytes=None, packed_size_bytes=None,
        fingerprint={"cpu_model": f"CPU of {machine}", "hash": machine}, profile_config={},
        details={}, started_at=T0 + timedelta(seconds=n), finished_at=T0 + timedelta(seconds=n))


def label(method: str, w: int, a: int) -> str:
    return method if w == 32 else f"{method} W{w}A{a}"


@pytest.fixture(scope="module")
def ten_seeds(tmp_path_factory: pytest.TempPathFactory) -> Generated:
    return generate(tmp_path_factory.mktemp("ten"), Spec(
        devices=(("host", "m1"), ("raspberry-pi-4", "pi"), ("host", "m2")), overlays=True,
        flagged=True, failed=1, measure_failed=True, n_test=80))   # 80: Friedman rejects (CD drawn)


@pytest.fixture(scope="module")
def ten_html(ten_seeds: Generated, tmp_path_factory: pytest.TempPathFactory) -> str:
    out = build_report(ten_seeds.store, tmp_path_factory.mktemp("out") / "index.html")
    return out.read_text()


@pytest.fixture(scope="module")
def ten_context(ten_seeds: Generated) -> dict[str, Any]:
    return report_context(ten_seeds.store)


def _block_rows(context: dict[str, Any], key: str = "main") -> dict[str, dict[str, Any]]:
    table = context[key] if key != "saliency" else context["saliency"]["table"]
    return {r["config"]: r for b in table.blocks for r in b.rows}


def _family(context: dict[str, Any], title: str) -> Any:
    return next(f for t in context["significance"] for f in t.families if f.title == title)


# --- renders in every situation ------------------------------------------------------------


def test_empty_store(tmp_path):
    out = build_report(ResultsStore(tmp_path / "s"), tmp_path / "r.html")
    html = out.read_text()
    assert 'id="empty-store"' in html and "no records yet" in html


def test_one_record(tmp_path):
    gen = generate(tmp_path / "s", Spec(configs=(("fp32", 32, 32),), seeds=1, devices=()))
    html = build_report(gen.store, tmp_path / "r.html").read_text()
    assert 'id="main-table"' in html and 'id="results-table"' in html
    assert "No latency measurements yet" in html
    acc = gen.cells.accuracy.iloc[0]
    assert F.mean_ci(acc, None, None) in html


def test_failed_and_flagged_cells_are_listed_with_their_reason(ten_html):
    assert 'id="flagged-table"' in ten_html
    assert "RuntimeError: boom 0" in ten_html
    assert "low_agreement" in ten_html and "agrees with the PyTorch model on 0.9800" in ten_html
    assert "measurement failed (edge-1core-1g" in ten_html and "MemoryError: limit" in ten_html


def test_only_failed_cells(tmp_path):
    gen = generate(tmp_path / "s", Spec(configs=(), devices=(), failed=2))
    html = build_report(gen.store, tmp_path / "r.html").read_text()
    assert "RuntimeError: boom 1" in html and 'id="main-table"' in html
    assert "No saliency results in the store" in html


def test_no_network_address_and_everything_inline(ten_html):
    for needle in ("http://", "https://", "//fonts.", "<script src", "<link", 'src="file:'):
        assert needle not in ten_html
    assert ten_html.count("<script") == 1   # the table script, which the CSP allows by hash
    assert ten_html.count("<svg") >= 3
    assert 'src="data:image/png;base64,' in ten_html


def test_several_devices_side_by_side_with_speedups(ten_seeds, ten_context, ten_html):
    devices = ten_context["devices"]
    assert devices == ["host-m1", "host-m2", "raspberry-pi-4"]
    rows = _block_rows(ten_context, "device_table")
    lat = ten_seeds.latency.merge(ten_seeds.cells[["cell_id", "method", "w_bits", "a_bits"]])
    lat["device"] = np.where(lat.profile == "host", "host-" + lat.machine, lat.profile)
    means = lat.groupby(["method", "w_bits", "a_bits", "device"]).p50.mean()
    for device in devices:
        fp32 = means[("fp32", 32, 32, device)]
        for method, w, a in ten_seeds.cells[["method", "w_bits", "a_bits"]].drop_duplicates(
                ).itertuples(index=False):
            row = rows[label(method, w, a)]
            assert row[f"p50@{device}"] == pytest.approx(means[(method, w, a, device)])
            assert row[f"speedup@{device}"] == pytest.approx(fp32 / means[(method, w, a, device)])
            assert F.ratio(fp32 / means[(method, w, a, device)]) in ten_html
    assert 'id="devices-table"' in ten_html
    main = _block_rows(ten_context)
    tail = lat.groupby(["method", "w_bits", "a_bits", "device"])[["p90", "rss"]].mean()
    for (method, w, a, device), (p90, rss) in tail.iterrows():
        assert main[label(method, w, a)][f"p90@{device}"] == pytest.approx(p90)
        assert main[label(method, w, a)][f"rss@{device}"] == pytest.approx(rss)
        assert F.num(p90, 3) in ten_html and F.num(rss, 1) in ten_html


def test_plots_degrade_to_a_sentence_without_measurements(tmp_path):
    gen = generate(tmp_path / "s", Spec(seeds=2, devices=(), saliency=False))
    with gen.store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE cells SET metrics = '{}'")
    html = build_report(gen.store, tmp_path / "r.html").read_text()
    assert "No deployment sizes or latency measurements" in html
    assert "No saliency results in the store" in html
    assert "No latency measurements yet" in html


def test_thousand_records(tmp_path):
    spec = Spec(datasets=("a", "b"), backbones=("x", "y"),
                configs=(("fp32", 32, 32), ("sgt", 32, 32), *QUANT,
                         ("pact_sgt", 4, 4), ("pact", 8, 8), ("pact_sgt", 8, 8)),
                seeds=25, devices=(("host", "m1"),), n_test=20)
    gen = generate(tmp_path / "s", spec)
    assert len(gen.cells) == 1000
    html = build_report(gen.store, tmp_path / "r.html").read_text()
    assert html.count("<tr class=\"block\">") >= 4
    assert html.count('<td class="text"><code>') >= 1000


# --- every statistic equals an independent computation ------------------------------------


def test_accuracy_mean_and_ci_match_scipy(ten_seeds, ten_context, ten_html):
    rows = _block_rows(ten_context)
    for (method, w, a), part in ten_seeds.cells.groupby(["method", "w_bits", "a_bits"]):
        x = part.sort_values("seed").accuracy.to_numpy()
        low, high = ss.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=ss.sem(x))
        row = rows[label(method, w, a)]
        assert row["accuracy"] == pytest.approx(x.mean())
        assert (row["accuracy_low"], row["accuracy_high"]) == pytest.approx((low, high))
        assert F.mean_ci(x.mean(), low, high) in ten_html
        f1 = [f1_score(*ten_seeds.predictions[c], average="macro") for c in part.cell_id]
        assert row["macro_f1"] == pytest.approx(np.mean(f1))   # of the headline predictions
        assert row["torch_macro_f1"] == pytest.approx(part.accuracy.mean() - 0.05)
        for key in ("ece", "brier", "auroc_macro"):
            assert row[key] == pytest.approx(part[key].mean())
            assert row[f"torch_{key}"] == pytest.approx(part[key].mean() + 0.001)
        assert row["deployed_accuracy"] == pytest.approx(part.deployed_accuracy.mean())
        assert row["agreement"] == pytest.approx(part.agreement.mean())


def test_sizes_relative_to_fp32(ten_seeds, ten_context, ten_html):
    rows = _block_rows(ten_context)
    cells = ten_seeds.cells
    fp32 = cells[cells.method == "fp32"].packed_size_bytes.mean()
    for (method, w, a), part in cells.groupby(["method", "w_bits", "a_bits"]):
        row = rows[label(method, w, a)]
        expected = 100 * part.packed_size_bytes.mean() / fp32
        assert row["packed_pct"] == pytest.approx(expected)
        assert F.pct(expected) in ten_html


def test_best_per_column_is_marked(ten_context):
    block = ten_context["main"].blocks[0]
    measured = [i for i, r in enumerate(block.rows) if r["seeds"]]
    best_acc = max(measured, key=lambda i: block.rows[i]["accuracy"])
    assert (best_acc, "accuracy") in block.best
    smallest = min(measured, key=lambda i: block.rows[i]["packed_size_bytes"])
    assert (smallest, "packed_size_bytes") in block.best


def _wilcoxon_oracle(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float, float]:
    d = a - b
    p = ss.wilcoxon(d).pvalue
    nz = d[d != 0]
    ranks = ss.rankdata(np.abs(nz))
    r = (ranks[nz > 0].sum() - ranks[nz < 0].sum()) / ranks.sum()
    ci = ss.bootstrap((d,), np.mean, n_resamples=9999, confidence_level=0.95, method="BCa",
                      rng=np.random.default_rng(0)).confidence_interval
    return p, r, ci.low, ci.high


def _by_seed(cells: pd.DataFrame, method: str, w: int, a: int, column: str) -> np.ndarray:
    part = cells[(cells.method == method) & (cells.w_bits == w) & (cells.a_bits == a)]
    return part.sort_values("seed")[column].to_numpy(dtype=float)


def test_paired_tests_vs_fp32_match_scipy_and_statsmodels(ten_seeds, ten_context, ten_html):
    cells = ten_seeds.cells
    family = _family(ten_context, "accuracy: each configuration vs FP32")
    base = _by_seed(cells, "fp32", 32, 32, "accuracy")
    oracle = {}
    for method, w, a in Spec().configs[1:]:
        oracle[label(method, w, a)] = _wilcoxon_oracle(
            _by_seed(cells, method, w, a, "accuracy"), base)
    holm = multipletests([o[0] for o in oracle.values()], method="holm")[1]
    assert [r.name_a for r in family.results] == list(oracle)
    for r, (p, effect, low, high), p_holm in zip(family.results, oracle.values(), holm,
                                                 strict=True):
        assert r.name_b == "fp32" and r.n == 10
        assert r.p_value == pytest.approx(p)
        assert r.p_adjusted == pytest.approx(p_holm)
        assert r.effect_size == pytest.approx(effect)
        assert (r.ci_low, r.ci_high) == pytest.approx((low, high))
        for shown in (F.pval(p), F.pval(p_holm), F.num(effect, 3), F.interval(low, high)):
            assert shown in ten_html


def test_pairs_at_the_same_bits_and_saliency_statistic(ten_seeds, ten_context, ten_html):
    cells = ten_seeds.cells
    family = _family(ten_context, "accuracy: pairs at W8A8")
    (r,) = family.results
    p, effect, _, _ = _wilcoxon_oracle(_by_seed(cells, "ptq", 8, 8, "accuracy"),
                                       _by_seed(cells, "qat", 8, 8, "accuracy"))
    assert (r.name_a, r.name_b) == ("ptq W8A8", "qat W8A8")
    assert r.p_value == pytest.approx(p) and r.p_adjusted == pytest.approx(p)
    assert r.effect_size == pytest.approx(effect)
    assert ten_context["saliency_main"] == "saliency_spearman_fp32"
    sal = _family(ten_context, "saliency_spearman_fp32: pairs at W8A8")
    p, _, _, _ = _wilcoxon_oracle(_by_seed(cells, "ptq", 8, 8, "saliency_spearman_fp32"),
                                  _by_seed(cells, "qat", 8, 8, "saliency_spearman_fp32"))
    assert sal.results[0].p_value == pytest.approx(p)
    assert F.pval(p) in ten_html
    vs_fp32 = _family(ten_context, "saliency_spearman_fp32: each configuration vs FP32")
    assert not vs_fp32.results and "FP32 has no" in vs_fp32.note


def test_mcnemar_matches_the_exact_binomial_test(ten_seeds, ten_context, ten_html):
    rows = ten_context["significance"][0].mcnemar
    cells = ten_seeds.cells.set_index("cell_id")
    fp32 = {int(r.seed): cid for cid, r in cells[cells.method == "fp32"].iterrows()}
    oracle = {}
    for cid, r in cells[cells.method != "fp32"].iterrows():
        labels, pa = ten_seeds.predictions[cid]
        _, pb = ten_seeds.predictions[fp32[int(r.seed)]]
        n01 = int(((pa != labels) & (pb == labels)).sum())
        n10 = int(((pa == labels) & (pb != labels)).sum())
        p = 1.0 if n01 + n10 == 0 else ss.binomtest(n01, n01 + n10, 0.5).pvalue
        oracle[(label(r.method, r.w_bits, r.a_bits), int(r.seed))] = (n01, n10, p)
    assert len(rows) == len(oracle) == 30
    holm = dict(zip(oracle, multipletests([o[2] for o in oracle.values()], method="holm")[1],
                    strict=True))
    for row in rows:
        n01, n10, p = oracle[(row.config, row.seed)]
        assert (row.result.n01, row.result.n10) == (n01, n10)
        assert row.result.p_value == pytest.approx(min(p, 1.0))
        assert row.p_adjusted == pytest.approx(holm[(row.config, row.seed)])
        assert F.pval(row.result.p_value) in ten_html


def test_friedman_and_critical_difference_match_scipy(ten_seeds, ten_context, ten_html):
    tests = ten_context["significance"][0]
    cells = ten_seeds.cells
    matrix = np.column_stack([_by_seed(cells, m, w, a, "accuracy") for m, w, a in Spec().configs])
    stat, p = ss.friedmanchisquare(*matrix.T)
    assert tests.friedman.statistic == pytest.approx(stat)
    assert tests.friedman.p_value == pytest.approx(p)
    k, n = matrix.shape[1], matrix.shape[0]
    q = ss.studentized_range.ppf(0.95, k, np.inf) / math.sqrt(2)
    cd = q * math.sqrt(k * (k + 1) / (6 * n))
    assert tests.cd.cd == pytest.approx(cd)
    ranks = ss.rankdata(-matrix, axis=1).mean(axis=0)
    for (m, w, a), rank in zip(Spec().configs, ranks, strict=True):
        assert tests.cd.avg_ranks[label(m, w, a)] == pytest.approx(rank)
    assert f"p = {F.pval(p)}" in ten_html and F.num(cd, 3) in ten_html


def test_saliency_stability_table_matches_numpy(ten_seeds, ten_context, ten_html):
    table = ten_context["saliency"]["table"]
    row = next(r for r in table.blocks[0].rows
               if r["config"] == "ptq W8A8" and r["saliency_method"] == "gradient")
    x = _by_seed(ten_seeds.cells, "ptq", 8, 8, "saliency_spearman_fp32")
    low, high = ss.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=ss.sem(x))
    assert row["spearman_fp32"] == pytest.approx(x.mean())
    assert (row["spearman_fp32_low"], row["spearman_fp32_high"]) == pytest.approx((low, high))
    assert F.mean_ci(x.mean(), low, high) in ten_html
    assert 'id="gallery"' in ten_html


def test_the_saliency_section_states_the_subsets(ten_context, ten_html):
    """Metrics computed on a subset of the evaluated images say so (the records' subsets)."""
    assert ten_context["saliency"]["subsets"] == [
        "max-sensitivity of gradcam on 2 of 8 images",
        "the sanity check on 3 of 8 images"]
    assert ("max-sensitivity of gradcam on 2 of 8 images; the sanity check on 3 "
            "of 8 images") in ten_html


def test_too_few_seeds_print_the_reason_not_a_p_value(tmp_path):
    gen = generate(tmp_path / "s", Spec(seeds=2, devices=()))
    context = report_context(gen.store)
    html = build_report(gen.store, tmp_path / "r.html").read_text()
    family = _family(context, "accuracy: each configuration vs FP32")
    assert all(r.p_value is None and r.reason for r in family.results)
    assert "Wilcoxon needs &gt;= 6: no test" in html
    assert "n=2 seeds: bootstrap CI needs &gt;= 10" in html
    assert "n=2 seeds: Friedman needs &gt;= 5: no test" in html


def test_pareto_front():
    x, y = [1.0, 2.0, 3.0, 4.0, 2.0], [0.5, 0.7, 0.6, 0.9, 0.4]
    assert pareto_front(x, y) == [0, 1, 3]


# --- formats -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["md", "latex", "csv", "json"])
def test_other_formats_have_the_main_table(ten_seeds, ten_context, cli, tmp_path, fmt):
    """LaTeX writes the headline table unless told `--table main` (tests/test_report_clinical)."""
    out = tmp_path / f"main.{fmt}"
    table = ["--table", "main"] if fmt == "latex" else []
    result = cli("report", "--store", ten_seeds.store.root, "--out", out, "--format", fmt,
                 *table)
    assert result.exit_code == 0, result.output
    text = out.read_text()
    rows = _block_rows(ten_context)
    acc = {c: F.mean_ci(r["accuracy"], r["accuracy_low"], r["accuracy_high"])
           for c, r in rows.items()}
    if fmt == "md":
        assert "| configuration |" in text
        for config, shown in acc.items():
            assert f"| {config} |" in text and shown in text
    elif fmt == "latex":
        assert "\\begin{tabular}" in text and "\\toprule" in text and "\\bottomrule" in text
        for config, shown in acc.items():
            assert config in text and shown.replace("±", "$\\pm$") in text
    elif fmt == "csv":
        frame = pd.read_csv(io.StringIO(text))
        assert len(frame) == len(rows)
        for r in frame.dropna(subset=["accuracy"]).itertuples():
            assert r.accuracy == pytest.approx(rows[label(r.method, r.w_bits, r.a_bits)][
                "accuracy"])
    else:
        doc = json.loads(text)
        assert len(doc["main_table"]) == len(rows)
        assert doc["summary"]["n_cells"] == len(ten_seeds.cells) + 1
        assert doc["significance"][0]["families"][0]["results"][0]["p_value"] is not None


@pytest.mark.parametrize("fmt", ["md", "latex", "csv", "json"])
def test_other_formats_of_an_empty_store(cli, tmp_path, fmt):
    ResultsStore(tmp_path / "s")
    out = tmp_path / f"r.{fmt}"
    assert cli("report", "--store", tmp_path / "s", "--out", out, "--format", fmt).exit_code == 0
    assert out.exists()


# --- per-image tests, controls, sanity checks ----------------------------------------------


@pytest.fixture(scope="module")
def three_seeds(tmp_path_factory: pytest.TempPathFactory) -> Generated:
    """The paper grid's 3 seeds, with a float control for QAT only."""
    return generate(tmp_path_factory.mktemp("three"), Spec(
        configs=(("fp32", 32, 32), ("fp32_fold_ft", 32, 32), ("ptq", 4, 4), ("qat", 4, 4),
                 ("pact_sgt", 4, 4)), seeds=3, devices=(), n_test=200))


@pytest.fixture(scope="module")
def three_context(three_seeds: Generated) -> dict[str, Any]:
    return report_context(three_seeds.store)


def _image_family(context: dict[str, Any], title: str) -> Any:
    return next(f for t in context["significance"] for f in t.image_families if f.title == title)


def _correct(gen: Generated, method: str, w: int, a: int) -> list[np.ndarray]:
    cells = gen.cells[(gen.cells.method == method) & (gen.cells.w_bits == w)
                      & (gen.cells.a_bits == a)].sort_values("seed")
    return [np.equal(*gen.predictions[cid]) for cid in cells.cell_id]


def _durkalski_p(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """Clustered McNemar (Durkalski et al. 2003) by hand: per image d = seeds A right and B
    wrong minus the reverse, X2 = (sum d)^2 / sum d^2 against chi2(1)."""
    d = np.sum([x.astype(int) - y.astype(int) for x, y in zip(a, b, strict=True)], axis=0)
    return float(ss.chi2.sf(d.sum() ** 2 / np.sum(d ** 2), 1))


def test_three_seeds_give_per_image_p_values_where_seed_level_tests_refuse(three_seeds,
                                                                           three_context):
    seed_level = _family(three_context, "accuracy: each configuration vs FP32")
    assert all(r.p_value is None for r in seed_level.results)
    family = _image_family(three_context, "accuracy per image: each configuration vs FP32")
    fp32 = _correct(three_seeds, "fp32", 32, 32)
    expected = {label(m, w, a): _durkalski_p(_correct(three_seeds, m, w, a), fp32)
                for m, w, a in (("fp32_fold_ft", 32, 32), ("ptq", 4, 4), ("qat", 4, 4),
                                ("pact_sgt", 4, 4))}
    holm = multipletests(list(expected.values()), method="holm")[1]
    assert [r.name_a for r in family.results] == list(expected)
    for r, e, p in zip(family.results, expected.values(), holm, strict=True):
        assert (r.test, r.n, r.n_seeds, r.n_images) == ("clustered_mcnemar", 600, 3, 200)
        assert r.p_value == pytest.approx(e) and r.p_adjusted == pytest.approx(p)
        assert r.mde is not None
    assert min(r.p_value for r in family.results) < 0.05
    sal = _image_family(three_context,
                        "spearman_fp32 per image: each quantised configuration vs its "
                        "float control")
    (qat,) = sal.results
    assert (qat.name_a, qat.name_b, qat.test, qat.n) == ("qat W4A4", "fp32_fold_ft",
                                                         "sign_flip", 24)
    records = {r.cell_id: r for r in three_seeds.store.records()}

    def values(method: str) -> list[np.ndarray]:
        cells = three_seeds.cells[three_seeds.cells.method == method].sort_values("seed")
        return [np.array(records[c].metrics["saliency"]["stats"]["gradient"]["spearman_fp32"][
            "values"]) for c in cells.cell_id]

    assert qat.p_value == pytest.approx(stats.sign_flip_test(values("qat"),
                                                             values("fp32_fold_ft")).p_value)


def test_float_control_without_cells_is_skipped_with_the_reason(three_context, tmp_path):
    family = _image_family(three_context, "accuracy per image: each quantised configuration "
                                          "vs its float control")
    assert [(r.name_a, r.name_b) for r in family.results] == [("qat W4A4", "fp32_fold_ft")]
    assert family.skipped == ["sgt_ft (the float control of pact_sgt W4A4) has no "
                              "cells here: comparison skipped"]
    gen = generate(tmp_path / "s", Spec(configs=(("fp32", 32, 32), ("qat", 4, 4)), seeds=3,
                                        devices=()))
    html = build_report(gen.store, tmp_path / "r.html").read_text()
    assert "fp32_fold_ft (the float control of qat W4A4) has no cells here" in html


def test_report_says_what_each_test_generalises_over(three_seeds, tmp_path):
    html = build_report(three_seeds.store, tmp_path / "r.html").read_text()
    assert "seeds vary training only" in html and "fixed by the data set" in html
    assert "generalises over training seeds" in html
    assert "generalises over test images, given these trained models" in html
    assert "detects |Δ| ≥" in html and "with any number of seeds" in html
    assert re.search(r"detects \|Δ\| ≥ [-+0-9.]+ at α = 0\.0[0-4]", html)
    assert ("this test would need" in html or "seeds needed: no number of seeds" in html)
    assert "tested comparisons of this family; the test covers variation over test images, " \
        "given these trained models" in html
    assert "tested comparisons of this family; the test covers variation over training seeds" \
        in html
    assert "clustered McNemar" in html and "Cochran" not in html


def test_critical_difference_only_when_friedman_rejects():
    from bench.report.significance import BlockTests, _friedman_and_cd

    rng = np.random.default_rng(0)
    flat = {c: list(rng.normal(0.8, 0.01, 6)) for c in ("a", "b", "c")}
    tests = BlockTests("x", "d", "b", list(range(6)))
    _friedman_and_cd(tests, flat)
    assert tests.friedman.p_value > 0.05 and tests.cd is None
    assert "does not reject" in tests.cd_note
    apart = {c: list(0.1 * i + rng.normal(0, 0.001, 6)) for i, c in enumerate("abc")}
    tests = BlockTests("x", "d", "b", list(range(6)))
    _friedman_and_cd(tests, apart)
    assert tests.friedman.p_value < 0.05 and tests.cd is not None and tests.cd_note is None


def test_null_control_beside_its_statistic_and_failed_sanity_greyed(ten_seeds, ten_context,
                                                                   ten_html):
    table = ten_context["saliency"]["table"]
    keys = [c.key for c in table.columns]
    assert keys.index("null_spearman_fp32") == keys.index("spearman_fp32") + 1
    rows = table.blocks[0].rows
    ptq = next(r for r in rows if r["config"] == "ptq W8A8" and r["saliency_method"] == "gradcam")
    assert ptq["null_spearman_fp32"] > 0.999
    for row in rows:
        if row["saliency_method"] == "gradcam":
            if row["config"] == "fp32":
                assert row["muted"].startswith("fails on 10/10 seeds") and SANITY_REASON in \
                    row["muted"]
            else:   # the quantised cells' own check, not FP32's
                assert "muted" not in row and row["sanity"] == "passed on 10/10 seeds"
        else:
            assert "muted" not in row and row["sanity"] == "passed on 10/10 seeds"
    assert f'class="muted" title="fails on 10/10 seeds: {SANITY_REASON.replace(">", "&gt;")}' \
        in ten_html


def test_device_table_says_which_kernels_each_latency_timed(tmp_path):
    """A latency timed with fast kernels on a CPU where U8S8 saturates is marked `fast*`: it is
    not the arithmetic the deployed accuracy was evaluated with (bench.deploy.runtime)."""
    from sqlalchemy import select, update
    from sqlalchemy.orm import Session

    from bench.report import tables
    from bench.report.data import load

    gen = generate(tmp_path, Spec(configs=(("fp32", 32, 32), QUANT[0]), seeds=2,
                                  saliency=False))
    policies = {"fp32": {"kernel_policy": "exact", "exact_kernels": True},
                label(*QUANT[0]): {"kernel_policy": "fast", "exact_kernels": False}}
    cells = gen.cells.assign(config=[label(m, w, a) for m, w, a in zip(
        gen.cells.method, gen.cells.w_bits, gen.cells.a_bits, strict=True)])
    with Session(gen.store.engine) as session:
        for cell_id, config in zip(cells.cell_id, cells.config, strict=True):
            session.execute(update(MeasurementRecord).where(
                MeasurementRecord.cell_id == cell_id).values(details=policies[config]))
        session.commit()
        assert session.scalar(select(MeasurementRecord.details).limit(1))
    rows = {r["config"]: r for b in tables.device_table(load(gen.store)).blocks for r in b.rows}
    assert rows["fp32"]["kernels@host"] == "exact"
    assert rows[label(*QUANT[0])]["kernels@host"] == "fast*"
    html = build_report(gen.store, tmp_path / "index.html").read_text()
    assert "fast*" in html


def test_float_controls_are_ordered_next_to_what_they_control():
    """fp32_ft and fp32_fold_ft come right after FP32, sgt_ft after sgt (not last, where an
    unknown method goes)."""
    from bench.report.data import config_sort_key

    floats = ["sgt_ft", "fp32_fold_ft", "sgt", "fp32_ft", "fp32"]
    assert sorted(floats, key=lambda m: config_sort_key(m, 32, 32)) == [
        "fp32", "fp32_ft", "fp32_fold_ft", "sgt", "sgt_ft"]
