"""Accuracy mode: a device runs the deployed model over the cell's test inputs and records its
accuracy, its agreement with the workstation's deployed predictions and its predictions.

One workstation store (a tiny grid, FP32 and PTQ W8A8, deploy stage) measured on its own
machine: there the device's answers must be the deployed ones exactly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from bench.data import normalize
from bench.deploy.stage import DEPLOYED_PREDICTIONS, TEST_INPUTS
from bench.exchange.bundle import BUNDLE_CONTENT_TYPE, export_bundle
from bench.exchange.client import ServerClient
from bench.measure.preprocess import load_inputs
from bench.measure.preprocess import normalize as device_normalize
from bench.server.app import create_app
from bench.server.settings import ServerSettings
from bench.server.tokens import create_token
from bench.store import ResultsStore
from bench.store.accuracy import ACCURACY_COLUMNS, check_accuracy_details
from bench.store.deploy import deploy_files
from bench.store.query import RecordFilter
from bench.store.records import CellData, MeasurementData
from bench.store.schema import MeasurementRecord
from tests.test_light_imports import run_without_full
from tests.workstation import bench, make_workstation, quick_profile

QUICK = quick_profile(3)


@pytest.fixture(scope="module")
def workstation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two deployed cells (FP32, PTQ W8A8) made and measured on device "ws"."""
    return make_workstation(tmp_path_factory.mktemp("ws"), QUICK)


def _measurements(store: Path) -> list[MeasurementData]:
    with Session(ResultsStore(store).engine) as session:
        return [MeasurementData.of(r) for r in session.scalars(select(MeasurementRecord))]


def _cells(store: Path) -> dict[str, CellData]:
    return {r.cell_id: CellData.of(r) for r in ResultsStore(store).records()}


def test_device_preprocessing_equals_the_workstation_tensor_bit_for_bit(workstation):
    store = ResultsStore(workstation / "s")
    for cell in store.records():
        inputs = load_inputs(str(store.artifact_dir(cell.cell_id) / TEST_INPUTS))
        images = torch.from_numpy(inputs["images"])
        theirs = normalize(images).numpy()
        mine = device_normalize(inputs["images"], inputs["mean"], inputs["std"])
        assert mine.dtype == theirs.dtype == np.float32
        assert mine.tobytes() == theirs.tobytes()
    noise = torch.randint(0, 256, (7, 3, 5, 9), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(1))
    assert device_normalize(noise.numpy(), inputs["mean"], inputs["std"]).tobytes() == \
        normalize(noise).numpy().tobytes()


def test_on_the_deploying_machine_the_device_answers_are_the_deployed_ones(workstation):
    cells = _cells(workstation / "s")
    measured = _measurements(workstation / "s")
    assert len(measured) == 2
    store = ResultsStore(workstation / "s")
    for m in measured:
        deploy = cells[m.cell_id].metrics["deploy"]
        d = m.details
        assert d["accuracy_mode"] == "on"
        assert d["device_agreement"] == 1.0
        assert d["device_accuracy"] == deploy["columns"]["deployed_accuracy"]
        assert d["device_max_logit_diff"] < 1e-4
        with np.load(store.artifact_dir(m.cell_id) / DEPLOYED_PREDICTIONS) as ref:
            assert d["predictions"] == ref["predictions"].tolist()
            assert d["accuracy_images"] == len(ref["labels"]) > 0


def test_results_and_compare_show_the_accuracy_fields(workstation):
    result = bench("results", "--store", workstation / "s", "--profile", "quick",
                   "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert all(r["device_agreement"] == 1.0 and r["accuracy_images"] for r in rows)
    compared = bench("compare", "--store", workstation / "s", "--devices", "ws",
                     "--format", "json")
    assert compared.exit_code == 0, compared.output
    for row in json.loads(compared.output)["rows"]:
        assert row["agreement@ws"] == 1.0 and row["emulated@ws"] is False
        assert 0 <= row["accuracy@ws"] <= 1 and row["max_logit_diff@ws"] is not None


def test_no_accuracy_times_only(workstation, tmp_path):
    shutil.copytree(workstation / "s", tmp_path / "s")
    result = bench("measure", "--profile", workstation / "quick.toml", "--store",
                   tmp_path / "s", "--device-name", "pi", "--no-accuracy", "--quiet")
    assert result.exit_code == 0, result.output
    for m in _measurements(tmp_path / "s"):
        if m.device == "pi":
            assert m.details["accuracy_mode"] == "off (--no-accuracy)"
            assert not any(c in m.details for c in (*ACCURACY_COLUMNS, "predictions"))


def test_pull_brings_checked_inputs_or_none_with_no_inputs(workstation, tmp_path):
    bundle = tmp_path / "b.tar.gz"
    assert bench("export", "--store", workstation / "s", "--out", bundle,
                 "--artifacts", "deploy").exit_code == 0
    for flag, store in (("--inputs", tmp_path / "with"), ("--no-inputs", tmp_path / "without")):
        result = bench("device", "pull", "--from", bundle, "--store", store, flag)
        assert result.exit_code == 0, result.output
    with_inputs, without = ResultsStore(tmp_path / "with"), ResultsStore(tmp_path / "without")
    for cell in _cells(tmp_path / "with").values():
        assert (with_inputs.artifact_dir(cell.cell_id) / TEST_INPUTS).is_file()
        assert not (without.artifact_dir(cell.cell_id) / TEST_INPUTS).exists()
        assert not (without.artifact_dir(cell.cell_id) / DEPLOYED_PREDICTIONS).exists()
        assert TEST_INPUTS in deploy_files(cell) and TEST_INPUTS not in deploy_files(cell, False)
    result = bench("measure", "--profile", workstation / "quick.toml", "--store",
                   tmp_path / "without", "--device-name", "pi", "--quiet")
    assert result.exit_code == 0, result.output
    assert {m.details["accuracy_mode"] for m in _measurements(tmp_path / "without")} == {
        "no test inputs"}


def test_a_modified_input_file_is_refused_before_anything_is_timed(workstation, tmp_path):
    shutil.copytree(workstation / "s", tmp_path / "s")
    store = ResultsStore(tmp_path / "s")
    cell = store.records()[0]
    inputs = store.artifact_dir(cell.cell_id) / TEST_INPUTS
    inputs.write_bytes(inputs.read_bytes() + b"x")
    result = bench("measure", "--profile", workstation / "quick.toml", "--store",
                   tmp_path / "s", "--device-name", "pi", "--quiet")
    assert result.exit_code == 2 and TEST_INPUTS in result.output


def test_a_device_without_torch_computes_accuracy(workstation, tmp_path):
    shutil.copytree(workstation / "s", tmp_path / "s")
    code = "from bench.cli import app\napp(sys.argv[1:])"
    proc = run_without_full(code, "measure", "--profile", str(workstation / "quick.toml"),
                            "--store", str(tmp_path / "s"), "--device-name", "light",
                            "--quiet")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    light = [m for m in _measurements(tmp_path / "s") if m.device == "light"]
    assert len(light) == 2
    assert all(m.details["device_agreement"] == 1.0 for m in light)


def test_bundles_carry_the_predictions_and_bad_fields_are_refused(workstation, tmp_path):
    bundle = tmp_path / "m.tar.gz"
    assert bench("export", "--store", workstation / "s", "--out", bundle).exit_code == 0
    assert bench("import", bundle, "--store", tmp_path / "other").exit_code == 0
    mine = {m.cell_id: m.details["predictions"] for m in _measurements(workstation / "s")}
    theirs = {m.cell_id: m.details["predictions"] for m in _measurements(tmp_path / "other")}
    assert mine == theirs and all(mine.values())
    good = _measurements(workstation / "s")[0].model_dump()
    for change in ({"device_agreement": 1.5}, {"device_accuracy": float("nan")},
                   {"device_max_logit_diff": -1.0}, {"accuracy_images": 0},
                   {"predictions": [0]}, {"predictions": None},
                   {"accuracy_mode": "sometimes"}):
        details = {**good["details"], **change}
        with pytest.raises(ValidationError):
            MeasurementData.model_validate({**good, "details": details})
        with pytest.raises(ValueError):
            check_accuracy_details(details)


def test_the_servers_records_api_carries_the_predictions(workstation, tmp_path):
    app = create_app(ServerSettings.of(None, tmp_path / "srv"))
    token = create_token(app.state.store.engine, "ws")[1]
    bundle = export_bundle(ResultsStore(workstation / "s"), tmp_path / "b.tar.gz",
                           RecordFilter(), "none")
    with TestClient(app) as http:
        ServerClient(http, token).upload(bundle.path.read_bytes(), BUNDLE_CONTENT_TYPE)
        items = http.get("/api/v1/records", params={"kind": "measurement"}).json()["items"]
    served = {i["cell_id"]: i["details"] for i in items}
    local = {m.cell_id: m.details for m in _measurements(workstation / "s")}
    assert served.keys() == local.keys()
    for cell_id, details in served.items():
        for key in (*ACCURACY_COLUMNS, "predictions"):
            assert details[key] == local[cell_id][key]


def test_wilson_interval_matches_statsmodels():
    from statsmodels.stats.proportion import proportion_confint

    from bench.stats import wilson_interval

    for correct, n in ((0, 5), (3, 7), (29, 30), (40, 40), (512, 1000)):
        low, high = wilson_interval(correct, n)
        ref_low, ref_high = proportion_confint(correct, n, alpha=0.05, method="wilson")
        assert low == pytest.approx(ref_low, abs=1e-12)
        assert high == pytest.approx(ref_high, abs=1e-12)
    assert wilson_interval(0, 0) == (None, None)


def test_report_compares_devices_on_answers_and_flags_differing_images(workstation, tmp_path):
    from bench.report import build_report, report_context

    store, row, flipped = _with_a_device_that_differs_once(workstation, tmp_path)

    context = report_context(store, figures=False)
    answers = {(a.cell_id, a.device): a for a in context["answers"]}
    assert {d for _, d in answers} == {"ws", "pi"} and len(answers) == 3
    mine = answers[(row.cell_id, "pi")]
    assert mine.flagged and len(mine.differing) == 1
    assert mine.differing[0].thumbnail.startswith("data:image/png;base64,")
    assert mine.differing[0].device_prediction == flipped[0]
    assert mine.mcnemar_p is not None and mine.mcnemar_reason is None
    assert all(not a.flagged and a.agreement == 1.0 for (_, d), a in answers.items() if d == "ws")
    verified = {v["config"]: v for v in context["verified"]}
    assert verified[mine.config]["devices"] == ["pi", "ws"]
    assert verified[mine.config]["lowest_agreement"] == mine.agreement < 1
    html = build_report(store, tmp_path / "r.html").read_text()
    assert 'id="device-answers-table"' in html and "(flagged)" in html
    assert "verified on 2 devices" in html


def _all_rows(store: ResultsStore) -> list[MeasurementRecord]:
    with Session(store.engine) as session:
        return list(session.scalars(select(MeasurementRecord)))


OPENVINO_QUICK = QUICK + 'runtime = "openvino"\n[threads]\nintra_op = 1\n'


def test_openvino_profile_end_to_end_records_runtime_coverage_and_answers(workstation, tmp_path):
    pytest.importorskip("openvino")
    shutil.copytree(workstation / "s", tmp_path / "s")
    (tmp_path / "ov.toml").write_text(OPENVINO_QUICK)
    result = bench("measure", "--profile", tmp_path / "ov.toml", "--store", tmp_path / "s",
                   "--device-name", "ws", "--quiet")
    assert result.exit_code == 0, result.output
    cells = _cells(tmp_path / "s")
    measured = [m for m in _measurements(tmp_path / "s") if m.profile == "ov"]
    assert len(measured) == 2
    for m in measured:
        d = m.details
        assert d["runtime"] == "openvino" and d["runtime_version"]
        assert d["runtime_coverage"]["inference_precision"] == "f32", "f32 stated and recorded"
        assert "kernel_policy" not in d, "ONNX Runtime's kernel policy is not OpenVINO's"
        quantised = cells[m.cell_id].w_bits < 32
        assert d["runtime_coverage"]["int_coverage"] == (1.0 if quantised else 0.0)
        assert d["accuracy_mode"] == "on" and d["device_agreement"] >= 0.99


def test_openvino_settings_belong_to_openvino_profiles():
    from bench.measure.profiles import ProfileError, load_profile, parse_profile

    shipped = load_profile("host-openvino")
    assert shipped.runtime == "openvino" and shipped.openvino.inference_precision == "f32"
    with pytest.raises(ProfileError, match="openvino"):
        parse_profile('description = "x"\n[openvino]\ninference_precision = "f16"\n', "x", "x")
    with pytest.raises(ProfileError, match="inference_precision"):
        parse_profile('description = "x"\nruntime = "openvino"\n[openvino]\n'
                      'inference_precision = "f8"\n', "x", "x")


def test_emulation_is_detected_from_an_arm_interpreter_on_an_x86_host():
    from bench.measure.fingerprint import is_emulated

    intel = {"vendor_id": "GenuineIntel", "flags": "sse4_2 avx2"}
    assert is_emulated("aarch64", intel, {})
    assert not is_emulated("x86_64", intel, {})
    assert not is_emulated("aarch64", {"features": "asimd"}, {})
    assert is_emulated("aarch64", {"features": "asimd"}, {"MEDQ_EMULATED": "1"})


def test_the_report_shows_an_emulated_devices_answers_not_its_latency(workstation, tmp_path):
    from bench.report import report_context
    from bench.store.measurements import save_measurement

    shutil.copytree(workstation / "s", tmp_path / "s")
    store = ResultsStore(tmp_path / "s")
    for row in [MeasurementData.of(m) for m in _all_rows(store)]:
        details = {**row.details, "emulated": True}
        other = row.model_copy(update={"device": "arm64-emulated", "details": details,
                                       "latency_ms_p50": 999.0}).to_row()
        other.record_hash = None
        save_measurement(store.engine, other)
    context = report_context(store, figures=False)
    assert {a.device for a in context["answers"] if a.emulated} == {"arm64-emulated"}
    assert context["compared"] is None, "no latency comparison with an emulator"
    from bench.report.data import load

    timed = load(store).measured
    assert len(timed) == 2 and 999.0 not in set(timed.latency_ms_p50), \
        "only the real device's latency is shown"


def test_accuracy_mode_on_without_its_fields_is_refused_and_the_report_skips_it(
        workstation, tmp_path):
    from bench.report.answers import device_answers

    bare = {"accuracy_mode": "on"}
    with pytest.raises(ValueError):
        check_accuracy_details(bare)
    shutil.copytree(workstation / "s", tmp_path / "s")
    store = ResultsStore(tmp_path / "s")
    row = MeasurementData.of(_all_rows(store)[0])
    with pytest.raises(ValidationError):
        MeasurementData.model_validate({**row.model_dump(), "details": bare})
    hostile = row.model_copy(update={"device": "evil"}).to_row()
    hostile.details = bare
    with Session(store.engine) as session:
        session.add(hostile)
        session.commit()
    answers = device_answers(store, set(_cells(tmp_path / "s")))
    assert answers and "evil" not in {a.device for a in answers}


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_device_logits_are_refused(workstation, bad):
    from bench.measure.accuracy import accuracy_details

    cell = next(iter(_cells(workstation / "s").values()))
    folder = workstation / "s" / "artifacts" / cell.cell_id
    files = deploy_files(cell)
    inputs = next(folder / f for f in files if f.endswith(TEST_INPUTS))
    reference = next(folder / f for f in files if f.endswith(DEPLOYED_PREDICTIONS))
    with np.load(reference) as ref:
        logits = ref["logits"].astype(float)
    assert accuracy_details(logits.tolist(), inputs, reference)["accuracy_mode"] == "on"
    logits[0, 0] = bad
    with pytest.raises(ValueError, match="finite"):
        accuracy_details(logits.tolist(), inputs, reference)


def test_test_images_need_a_token_even_where_reads_are_public(workstation, tmp_path):
    """Accuracy mode's test images are patients' images on real data: a default server (public
    reads) serves them only to a device's token, and its public report shows no thumbnail."""
    app = create_app(ServerSettings.of(None, tmp_path / "srv"))
    token = create_token(app.state.store.engine, "ws")[1]
    bundle = export_bundle(ResultsStore(workstation / "s"), tmp_path / "b.tar.gz",
                           RecordFilter(), "deploy")
    cell = next(c for c in (CellData.of(r) for r in ResultsStore(workstation / "s").records())
                if c.method == "ptq")
    deploy = cell.metrics["deploy"]
    inputs = f"/api/v1/cells/{cell.cell_id}/artifacts/{deploy['test_inputs_file']}"
    model = f"/api/v1/cells/{cell.cell_id}/artifacts/{deploy['onnx_file']}"
    with TestClient(app) as http:
        ServerClient(http, token).upload(bundle.path.read_bytes(), BUNDLE_CONTENT_TYPE)
        assert http.get(model).status_code == 200                    # public, as before
        assert http.get(inputs).status_code == 401
        authorised = http.get(inputs, headers={"Authorization": f"Bearer {token}"})
        assert authorised.status_code == 200
        assert authorised.headers["X-Content-SHA256"] == cell.artifact_hashes[
            deploy["test_inputs_file"]]


def test_the_report_can_leave_out_the_test_images(workstation, tmp_path):
    from bench.report.answers import device_answers

    store, row, _ = _with_a_device_that_differs_once(workstation, tmp_path)
    ids = {c.cell_id for c in store.records()}

    def differing(images: bool) -> list[object]:
        return [d for a in device_answers(store, ids, images) for d in a.differing]

    assert differing(True) and all(d.thumbnail for d in differing(True))
    assert differing(False) and not any(d.thumbnail for d in differing(False))
    # A deployed-predictions file changed after its cell was stored is not read.
    cell = store.get(row.cell_id)
    reference = store.artifact_dir(row.cell_id) / cell.metrics["deploy"]["deployed_predictions"]
    reference.write_bytes(b"not an npz")
    mine = next(a for a in device_answers(store, ids) if a.device == "pi"
                and a.cell_id == row.cell_id)
    assert mine.mcnemar_p is None and not mine.differing


def _with_a_device_that_differs_once(workstation: Path, tmp_path: Path
                                     ) -> tuple[ResultsStore, MeasurementData, list[int]]:
    """A copy of the workstation store with a measurement of device "pi" whose predictions
    differ from the workstation's on the first image: the store, the copied measurement and
    pi's predictions."""
    from bench.store.measurements import save_measurement

    shutil.copytree(workstation / "s", tmp_path / "s")
    store = ResultsStore(tmp_path / "s")
    row = next(r for r in (MeasurementData.of(m) for m in _all_rows(store)))
    flipped = list(row.details["predictions"])
    flipped[0] = (flipped[0] + 1) % 3
    agreement = float((np.asarray(flipped) == np.asarray(row.details["predictions"])).mean())
    other = row.model_copy(update={"device": "pi", "details": {
        **row.details, "predictions": flipped, "device_agreement": agreement}}).to_row()
    other.record_hash = None
    save_measurement(store.engine, other)
    return store, row, flipped
