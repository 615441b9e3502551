"""The per-class clinical view: recall and specificity per class with intervals over seeds equal
sklearn and scipy, the per-class test equals statsmodels, a constructed recall drop is flagged
and nothing else is, and the confusion matrices shown are the selected configuration's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from scipy import stats as ss
from sklearn.metrics import confusion_matrix, recall_score
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

from bench import stats
from bench.report import build_report, report_context
from bench.report.build import ReportOptions
from bench.report.clinical import MARGIN_POINTS, clinical_view
from bench.report.clinical_plots import per_class_heatmap, per_class_heatmap_figure
from bench.report.data import load
from bench.store import CellRecord, ResultsStore

CLASSES = ["polyp", "ulcerative colitis", "esophagitis", "normal cecum"]
PER_CLASS = 100
SEEDS = 3
T0 = datetime(2026, 1, 1, tzinfo=UTC)
DROP_CLASS = 0
DROPPED = 20
"""qat W4A4's deployed model gets 20 more polyp images wrong per seed than FP32: -20 points."""
NUDGED_CLASS = 1
"""ptq W8A8 gets one more ulcerative-colitis image wrong per seed: -1 point, within the margin,
and 3 discordant pairs are far from significant."""


def _save(path, labels: np.ndarray, predictions: np.ndarray) -> None:
    np.savez(path, index=np.arange(labels.size), labels=labels,
             logits=np.eye(len(CLASSES))[predictions], predictions=predictions)


def _wrong(labels: np.ndarray, where: np.ndarray) -> np.ndarray:
    return np.where(where, (labels + 1) % len(CLASSES), labels)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[ResultsStore, dict]:
    """fp32, ptq W8A8 (deployed, one image nudged) and qat W4A4, whose PyTorch predictions are
    FP32's but whose deployed predictions miss 20 polyps per seed."""
    store = ResultsStore(tmp_path_factory.mktemp("clinical"))
    rng = np.random.default_rng(7)
    labels = np.repeat(np.arange(len(CLASSES)), PER_CLASS)
    preds: dict = {}
    for seed in range(SEEDS):
        fp32 = _wrong(labels, rng.random(labels.size) < 0.1)
        right = np.flatnonzero(fp32 == labels)
        polyps = right[labels[right] == DROP_CLASS][:DROPPED]
        nudged = right[labels[right] == NUDGED_CLASS][:1]
        qat = fp32.copy()
        qat[polyps] = (DROP_CLASS + 2) % len(CLASSES)
        ptq = fp32.copy()
        ptq[nudged] = (NUDGED_CLASS + 1) % len(CLASSES)
        for i, (method, bits, torch_pred, ort_pred) in enumerate((
                ("fp32", 32, fp32, fp32), ("ptq", 8, ptq, ptq), ("qat", 4, fp32, qat))):
            cid = f"{method}{bits}s{seed}"
            record = CellRecord(
                cell_id=cid, parent_id=None, grid="g", dataset="kvasir", backbone="smallcnn",
                method=method, w_bits=bits, a_bits=bits, seed=seed, status="ok", error=None,
                accuracy=float((torch_pred == labels).mean()), macro_f1=0.5, train_seconds=1.0,
                split_manifest="m", config={}, provenance={},
                metrics={"classes": CLASSES, "confusion_matrix": confusion_matrix(
                    labels, torch_pred).tolist(),
                         "deploy": {"deployed_predictions": "deployed_predictions.npz",
                                    "columns": {"deployed_accuracy": float(
                                        (ort_pred == labels).mean()), "int_coverage": 1.0}}},
                started_at=T0, finished_at=T0 + timedelta(minutes=3 * seed + i))
            with store.staging(cid) as staged:
                _save(staged / "predictions.npz", labels, torch_pred)
                _save(staged / "deployed_predictions.npz", labels, ort_pred)
                store.commit(record, staged)
            preds[(method, seed)] = ort_pred
    return store, {"labels": labels, "predictions": preds}


@pytest.fixture(scope="module")
def view(store):
    s, _ = store
    (block,) = clinical_view(load(s))
    return block


def _rows(block) -> dict[tuple[str, str], object]:
    return {(r.config, r.class_name): r for r in block.rows}


def test_recall_and_specificity_equal_sklearn_and_scipy(store, view):
    _, truth = store
    labels = truth["labels"]
    rows = _rows(view)
    assert len(rows) == 3 * len(CLASSES)
    for method, config in (("fp32", "fp32"), ("ptq", "ptq W8A8"), ("qat", "qat W4A4")):
        recalls = np.array([recall_score(labels, truth["predictions"][(method, s)],
                                         average=None) for s in range(SEEDS)])
        base = np.array([recall_score(labels, truth["predictions"][("fp32", s)], average=None)
                         for s in range(SEEDS)])
        for c, name in enumerate(CLASSES):
            row = rows[(config, name)]
            x = recalls[:, c]
            mean = x.mean()
            if np.std(x) > 0:
                low, high = ss.t.interval(0.95, SEEDS - 1, loc=mean, scale=ss.sem(x))
                assert row.recall == pytest.approx((mean, low, high))
            else:
                assert row.recall == pytest.approx((mean, mean, mean))
            negatives = [labels != c for _ in range(SEEDS)]
            spec = [float((truth["predictions"][(method, s)][negatives[s]] != c).mean())
                    for s in range(SEEDS)]
            assert row.specificity[0] == pytest.approx(np.mean(spec))
            if config != "fp32":
                assert row.delta_recall == pytest.approx(100 * np.mean(x - base[:, c]))
    assert rows[("qat W4A4", "polyp")].delta_recall == pytest.approx(-100 * DROPPED / PER_CLASS)


def test_per_class_test_is_the_clustered_mcnemar_with_holm(store, view):
    """Per class, the clustered McNemar test (Durkalski et al. 2003) by hand: per image d =
    seeds A right and FP32 wrong minus the reverse, X2 = (sum d)^2 / sum d^2; with one seed it
    is statsmodels' McNemar chi-square."""
    _, truth = store
    labels = truth["labels"]
    p, keys = [], []
    for method, config in (("ptq", "ptq W8A8"), ("qat", "qat W4A4")):
        for c, name in enumerate(CLASSES):
            mine = labels == c
            a = np.array([truth["predictions"][(method, s)][mine] == c for s in range(SEEDS)])
            b = np.array([truth["predictions"][("fp32", s)][mine] == c for s in range(SEEDS)])
            d = (a.astype(int) - b.astype(int)).sum(axis=0)
            if not np.any(d):
                continue
            p.append(float(ss.chi2.sf(d.sum() ** 2 / np.sum(d ** 2), 1)))
            keys.append((config, name))
            one = [[0, int((a[0] & ~b[0]).sum())], [int((~a[0] & b[0]).sum()), 0]]
            if one[0][1] + one[1][0]:
                assert stats.clustered_mcnemar(a[:1], b[:1]).p_value == pytest.approx(
                    mcnemar(one, exact=False, correction=False).pvalue)
    holm = multipletests(p, method="holm")[1]
    rows = _rows(view)
    for key, raw, adjusted in zip(keys, p, holm, strict=True):
        assert rows[key].test.p_value == pytest.approx(raw)
        assert rows[key].p_adjusted == pytest.approx(adjusted)
    assert {k for k, r in rows.items() if r.test is not None and r.test.p_value is not None} \
        == set(keys)


def test_flag_fires_on_the_constructed_drop_and_nowhere_else(view):
    assert [(r.config, r.class_name) for r in view.flagged] == [("qat W4A4", "polyp")]
    (flag,) = view.flagged
    assert "-20.0 points, more than the 2-point margin" in flag.flag
    assert "significant drop" in flag.flag
    nudged = _rows(view)[("ptq W8A8", CLASSES[NUDGED_CLASS])]
    assert nudged.delta_recall == pytest.approx(-1.0) and nudged.flag is None
    assert nudged.p_adjusted > 0.05


def test_margin_is_an_option(store):
    s, _ = store
    (block,) = clinical_view(load(s), margin=0.5)
    assert [(r.config, r.class_name) for r in block.flagged] == [
        ("ptq W8A8", CLASSES[NUDGED_CLASS]), ("qat W4A4", "polyp")]
    assert MARGIN_POINTS == 2.0


def test_confusion_matrices_of_the_selected_configuration(store, view):
    s, truth = store
    labels = truth["labels"]

    def summed(method: str) -> np.ndarray:
        return sum(confusion_matrix(labels, truth["predictions"][(method, k)])
                   for k in range(SEEDS))

    # ptq W8A8 (one image off FP32) beats qat W4A4 (20 polyps off): the default rule picks it
    assert view.selected.config == "ptq W8A8" and "highest mean accuracy" in view.selected.rule
    np.testing.assert_array_equal(view.selected.matrix, summed("ptq"))
    np.testing.assert_array_equal(view.selected.fp32, summed("fp32"))
    (chosen,) = clinical_view(load(s), confusion_config="qat W4A4")
    assert chosen.selected.config == "qat W4A4"
    np.testing.assert_array_equal(chosen.selected.matrix, summed("qat"))


def test_bad_options_exit_2_naming_the_culprit(store, cli, tmp_path):
    s, _ = store
    result = cli("report", "--store", s.root, "--out", tmp_path / "r.html", "--confusion",
                 "lsq W2A2")
    assert result.exit_code == 2 and "'lsq W2A2' is not a configuration" in result.output
    result = cli("report", "--store", s.root, "--out", tmp_path / "r.html", "--recall-margin",
                 "-1")
    assert result.exit_code == 2 and "--recall-margin" in result.output


def test_html_has_heatmap_table_flags_and_matrices(store, tmp_path):
    s, _ = store
    html = build_report(s, tmp_path / "r.html",
                        options=ReportOptions(confusion="qat W4A4")).read_text()
    section = html[html.index('id="clinical"'):html.index('id="summary"')]
    assert "<svg" in section and "recall change vs FP32 (points)" in section
    assert "qat W4A4, polyp: recall -20.0 points" in section
    assert 'data-method="qat" data-bits="W4A4" data-device="" class="flagged"' in section
    assert 'data-config="qat W4A4"' in section and 'data-config="fp32"' in section
    assert section.count('class="data clinical"') == 1


def test_heatmap_outlines_the_flagged_classes(view):
    frame = view.heatmap_frame()
    assert list(frame.columns) == ["config", "class", "delta_recall", "flagged"]
    assert len(frame) == 2 * len(CLASSES) and frame.flagged.sum() == 1
    fig = per_class_heatmap_figure(frame)
    (ax, _colorbar) = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == CLASSES
    outlined = [p for p in ax.patches if not p.get_fill()]
    assert len(outlined) == 1 and outlined[0].get_xy() == (DROP_CLASS, 1)   # qat is row 1
    svg = per_class_heatmap(frame)
    assert svg.startswith("<svg") and all(f">{name}<" in svg for name in CLASSES)  # text
    assert per_class_heatmap(frame.iloc[:0]) is None


def test_report_context_carries_the_view(store):
    s, _ = store
    context = report_context(s, figures=False, options=ReportOptions(recall_margin=25.0))
    (entry,) = context["clinical"]
    assert entry["heatmap"] is None and entry["block"].margin == 25.0
    assert [r.class_name for r in entry["block"].flagged] == ["polyp"]  # significant drop


ESOPHAGITIS = 2


@pytest.fixture(scope="module")
def controlled(tmp_path_factory):
    """fp32, fp32_ft (qat's float control) and qat W4A4: fine-tuning alone loses 20 polyps per
    seed, and qat loses the same 20 and 20 esophagitis images more."""
    store = ResultsStore(tmp_path_factory.mktemp("controlled"))
    rng = np.random.default_rng(11)
    labels = np.repeat(np.arange(len(CLASSES)), PER_CLASS)
    preds: dict = {}
    for seed in range(SEEDS):
        fp32 = _wrong(labels, rng.random(labels.size) < 0.1)
        right = np.flatnonzero(fp32 == labels)
        polyps = right[labels[right] == DROP_CLASS][:DROPPED]
        eso = right[labels[right] == ESOPHAGITIS][:DROPPED]
        ft = fp32.copy()
        ft[polyps] = (DROP_CLASS + 1) % len(CLASSES)
        qat = ft.copy()
        qat[eso] = (ESOPHAGITIS + 1) % len(CLASSES)
        for i, (method, bits, pred) in enumerate((("fp32", 32, fp32), ("fp32_ft", 32, ft),
                                                  ("qat", 4, qat))):
            cid = f"{method}{bits}s{seed}"
            record = CellRecord(
                cell_id=cid, parent_id=None, grid="g", dataset="kvasir", backbone="smallcnn",
                method=method, w_bits=bits, a_bits=bits, seed=seed, status="ok", error=None,
                accuracy=float((pred == labels).mean()), macro_f1=0.5, train_seconds=1.0,
                split_manifest="m", config={}, provenance={}, metrics={"classes": CLASSES},
                started_at=T0, finished_at=T0 + timedelta(minutes=3 * seed + i))
            with store.staging(cid) as staged:
                _save(staged / "predictions.npz", labels, pred)
                store.commit(record, staged)
            preds[(method, seed)] = pred
    return store, labels, preds


def test_recall_flags_against_the_float_control_as_well_as_fp32(controlled, tmp_path):
    """qat's polyp drop is fine-tuning's (fp32_ft has it too): flagged against FP32, not against
    its float control; its esophagitis drop is flagged against both. The control's tests are
    the clustered McNemar test by hand (per image d = seeds qat right and fp32_ft wrong minus
    the reverse, X2 = (sum d)^2 / sum d^2), Holm-corrected over their own family."""
    store, labels, preds = controlled
    (block,) = clinical_view(load(store))
    rows = _rows(block)
    polyp, eso = rows[("qat W4A4", "polyp")], rows[("qat W4A4", "esophagitis")]
    assert polyp.flag and eso.flag
    (p_ctrl,), (e_ctrl,) = polyp.vs_controls, eso.vs_controls
    assert p_ctrl.control == e_ctrl.control == "fp32_ft"
    assert p_ctrl.delta_recall == pytest.approx(0.0) and p_ctrl.flag is None
    assert e_ctrl.delta_recall == pytest.approx(-100 * DROPPED / PER_CLASS) and e_ctrl.flag
    assert rows[("fp32_ft", "polyp")].vs_controls == []   # float configurations: FP32 only
    p, keys = [], []
    for c, name in enumerate(CLASSES):
        mine = labels == c
        a = np.array([preds[("qat", s)][mine] == c for s in range(SEEDS)])
        b = np.array([preds[("fp32_ft", s)][mine] == c for s in range(SEEDS)])
        d = (a.astype(int) - b.astype(int)).sum(axis=0)
        if np.any(d):
            p.append(float(ss.chi2.sf(d.sum() ** 2 / np.sum(d ** 2), 1)))
            keys.append(name)
    holm = dict(zip(keys, multipletests(p, method="holm")[1], strict=True))
    assert e_ctrl.p_adjusted == pytest.approx(holm["esophagitis"])
    assert [r.flags for r in block.flagged if r.config == "qat W4A4" and
            r.class_name == "polyp"] == [[polyp.flag]]
    assert any(f.startswith("against fp32_ft: recall -20.0 points") for f in eso.flags)
    html = build_report(store, tmp_path / "r.html").read_text()
    assert "against fp32_ft: recall -20.0 points" in html


def test_float_controls_of_each_method():
    from bench.report.clinical import controls_of

    both = {"fp32", "fp32_ft", "fp32_fold_ft", "sgt_ft"}
    assert controls_of("qat", 4, both) == ["fp32_fold_ft", "fp32_ft"]   # its own control first
    assert controls_of("qat", 4, {"fp32", "fp32_ft"}) == ["fp32_ft"]   # no folded control run
    assert controls_of("pact_sgt", 4, both) == ["sgt_ft"]
    assert controls_of("ptq", 4, both) == []          # no fine-tuning: FP32 is its reference
    assert controls_of("fp32_ft", 32, both) == []


def test_class_pairs_carry_the_image_ids_the_test_pairs_by() -> None:
    """Each class's per-seed correctness comes with its images' ids (the stored index), so the
    clustered McNemar test pairs the seeds by image id."""
    import numpy as np

    from bench.report.clinical import class_pairs
    index = np.array([7, 3, 9, 5])
    labels = np.array([0, 1, 0, 1])
    predictions = {"a": {"index": index, "predictions": np.array([0, 1, 1, 1]), "labels": labels},
                   "b": {"index": index, "predictions": np.array([0, 0, 0, 1]), "labels": labels}}
    per_class, left = class_pairs({0: ("a", "s")}, {0: ("b", "s")}, predictions, 2)
    assert left is None
    xs, ys, ids = per_class[0]
    assert ids[0].tolist() == [7, 9] and xs[0].tolist() == [True, False]
    assert ys[0].tolist() == [True, True]
    assert per_class[1][2][0].tolist() == [3, 5]
