"""`bench compare`: exact ratios between devices and vs FP32 from hand-built records, the same
table from a store and from a server, and unknown devices refused with the ones present."""

from __future__ import annotations

import json

import pytest

from bench.compare import by_config, compare
from bench.exchange.sources import compare_source
from bench.store import ResultsStore
from bench.store.query import RecordFilter
from bench.store.records import RecordBatch
from tests.exchange_records import cell, measurement

# f0: FP32; p0: PTQ from f0; k0: PACT from scratch (FP32 reference by data set and seed);
# f1/p1: a second seed; x0: a failed cell.
CELLS = [cell("f0"), cell("p0", "ptq", 8, 8, parent_id="f0", minute=1),
         cell("k0", "pact", 4, 4, minute=2), cell("f1", seed=1, minute=3),
         cell("p1", "ptq", 8, 8, seed=1, parent_id="f1", minute=4),
         cell("x0", "qat", 4, 4, status="failed", minute=5)]
# (cell, p50, p99, peak MB) per device under its main profile.
LAPTOP = {"f0": (10.0, 20.0, 100.0), "p0": (4.0, 8.0, 50.0), "k0": (5.0, 9.0, 40.0),
          "f1": (20.0, 30.0, 100.0), "p1": (5.0, 6.0, 50.0)}
PI = {"f0": (40.0, 90.0, 200.0), "p0": (12.0, 30.0, 80.0), "k0": (25.0, 40.0, 60.0),
      "f1": (40.0, 60.0, 200.0), "p1": (20.0, 18.0, 100.0)}
MEASUREMENTS = [
    *(measurement(c, "laptop", *v, profile="host", minute=i)
      for i, (c, v) in enumerate(LAPTOP.items())),
    *(measurement(c, "pi", *v, profile="raspberry-pi-4", minute=10 + i, machine="pi4")
      for i, (c, v) in enumerate(PI.items())),
    # older pi measurement of p0 (superseded), a newer failed one (ignored), a rarer profile on
    # the laptop and another batch size on the pi (not chosen), the failed cell (not shown)
    measurement("p0", "pi", 99.0, 99.0, 99.0, profile="raspberry-pi-4", minute=0, machine="old"),
    measurement("p0", "pi", None, status="failed", profile="raspberry-pi-4", minute=30,
                machine="pi5"),
    measurement("f0", "laptop", 1.0, 1.0, 1.0, profile="edge-1core-1g", minute=40),
    measurement("f0", "pi", 2.0, 2.0, 2.0, profile="raspberry-pi-4", minute=41, batch_size=8),
    measurement("x0", "laptop", 3.0, 3.0, 3.0, profile="host", minute=42)]


def expected_row(cell_id: str, reference: str) -> dict[str, float]:
    a, b, ra, rb = LAPTOP[cell_id], PI[cell_id], LAPTOP[reference], PI[reference]
    return {"p50_ms@laptop": a[0], "p99_ms@laptop": a[1], "peak_mb@laptop": a[2],
            "p50_ms@pi": b[0], "p99_ms@pi": b[1], "peak_mb@pi": b[2],
            "p50_ratio@pi": b[0] / a[0], "p99_ratio@pi": b[1] / a[1], "mem_ratio@pi": b[2] / a[2],
            "p50_vs_fp32@laptop": a[0] / ra[0], "mem_vs_fp32@laptop": a[2] / ra[2],
            "p50_vs_fp32@pi": b[0] / rb[0], "mem_vs_fp32@pi": b[2] / rb[2]}


REFERENCES = {"f0": "f0", "p0": "f0", "k0": "f0", "f1": "f1", "p1": "f1"}


def test_ratios_between_devices_and_vs_fp32_are_exact():
    result = compare(CELLS, MEASUREMENTS, ["laptop", "pi"])
    rows = {r["cell_id"]: r for r in result.rows}
    assert list(rows) == ["f0", "f1", "p0", "p1", "k0"]
    for cell_id, reference in REFERENCES.items():
        assert rows[cell_id]["fp32_id"] == reference
        for key, value in expected_row(cell_id, reference).items():
            assert rows[cell_id][key] == pytest.approx(value, rel=1e-12), (cell_id, key)
    assert rows["p0"]["p50_ratio@pi"] == 3.0 and rows["p0"]["p50_vs_fp32@laptop"] == 0.4
    assert rows["f0"]["p50_vs_fp32@pi"] == 1.0 and rows["f0"]["mem_vs_fp32@laptop"] == 1.0
    laptop, pi = result.choices["laptop"], result.choices["pi"]
    assert (laptop.profile, laptop.batch_size, pi.profile, pi.batch_size) == (
        "host", 1, "raspberry-pi-4", 1)
    assert "laptop: profile host, batch size 1" in result.describe()[0]


def test_profile_selection_and_filters():
    chosen = compare(CELLS, MEASUREMENTS, ["laptop"], profile="edge-1core-1g")
    assert [(r["cell_id"], r["p50_ms@laptop"]) for r in chosen.rows] == [("f0", 1.0)]
    from bench.errors import UsageError

    with pytest.raises(UsageError, match="no successful measurement under profile 'host'"):
        compare(CELLS, MEASUREMENTS, ["laptop", "pi"], profile="host")
    only_ptq = compare(CELLS, MEASUREMENTS, ["laptop", "pi"],
                       selection=RecordFilter(methods=["ptq"]))
    assert [r["cell_id"] for r in only_ptq.rows] == ["p0", "p1"]
    assert only_ptq.rows[0]["p50_vs_fp32@pi"] == pytest.approx(12.0 / 40.0)


def test_three_devices_are_each_compared_with_the_first():
    extra = [measurement(c, "jetson", v[0] / 2, v[1] / 2, v[2], profile="jetson")
             for c, v in LAPTOP.items()]
    result = compare(CELLS, [*MEASUREMENTS, *extra], ["laptop", "pi", "jetson"])
    row = next(r for r in result.rows if r["cell_id"] == "p1")
    assert row["p50_ratio@jetson"] == 0.5 and row["p50_ratio@pi"] == 4.0
    assert "p50_ratio@laptop" not in result.columns()


def test_by_config_means_values_and_geometric_mean_of_ratios():
    rows = {r["config"]: r for r in by_config(compare(CELLS, MEASUREMENTS, ["laptop", "pi"])).rows}
    ptq = rows["ptq W8A8"]
    assert ptq["seeds"] == 2
    assert ptq["p50_ms@pi"] == pytest.approx((12.0 + 20.0) / 2)
    assert ptq["p50_ratio@pi"] == pytest.approx((3.0 * 4.0) ** 0.5)
    assert ptq["p50_vs_fp32@laptop"] == pytest.approx((0.4 * 0.25) ** 0.5)


def _store(root, db_url):
    store = ResultsStore(root, db_url)
    store.ingest(RecordBatch(cells=CELLS, measurements=MEASUREMENTS))
    return store


def test_store_table_equals_the_pure_function(tmp_path, db_url):
    store = _store(tmp_path / "s", db_url)
    selection = RecordFilter(w_bits=[8, 32])
    from_store = compare_source(store, ["laptop", "pi"], selection)
    assert from_store == compare(CELLS, MEASUREMENTS, ["laptop", "pi"], selection=selection)
    assert [r["cell_id"] for r in from_store.rows] == ["f0", "f1", "p0", "p1"]


def test_cli_json_csv_table_and_unknown_device(tmp_path, cli):
    _store(tmp_path / "s", None)
    args = ("compare", "--store", tmp_path / "s", "--devices", "laptop,pi")
    result = cli(*args, "--format", "json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["profiles"]["pi"]["profile"] == "raspberry-pi-4"
    p0 = next(r for r in body["rows"] if r["cell_id"] == "p0")
    assert p0["p50_ratio@pi"] == 3.0 and p0["mem_ratio@pi"] == 1.6
    csv = cli(*args, "--format", "csv", "--method", "ptq").stdout.splitlines()
    assert csv[0].startswith("cell_id,dataset") and len(csv) == 3
    table = cli(*args)
    assert table.exit_code == 0 and "pi/laptop" in table.stdout and "3.00" in table.stdout
    assert "profile raspberry-pi-4" in table.stdout
    bad = cli("compare", "--store", tmp_path / "s", "--devices", "laptop,jetson")
    assert bad.exit_code == 2
    assert "unknown device jetson; devices present: gpu-server, laptop, pi" in bad.output
    both = cli("compare", "--devices", "pi")
    assert both.exit_code == 2 and "--store DIR or --server URL" in both.output


def test_server_gives_the_same_comparison_as_the_store(tmp_path, db_url):
    from fastapi.testclient import TestClient

    from bench.exchange.client import ServerClient
    from bench.server.app import create_app
    from bench.server.settings import ServerSettings

    store = _store(tmp_path / "local", None)
    app = create_app(ServerSettings(db_url=db_url, data_dir=tmp_path / "server"))
    app.state.store.ingest(RecordBatch(cells=CELLS, measurements=MEASUREMENTS))
    server = ServerClient(TestClient(app))
    for devices, selection in ((["laptop", "pi"], RecordFilter()),
                               (["pi", "laptop"], RecordFilter(methods=["ptq", "pact"]))):
        expected = compare_source(store, devices, selection)
        assert compare_source(server, devices, selection) == expected
        assert len(expected.rows) == (3 if selection.methods else 5)


def test_cli_server_and_store_print_the_same(tmp_path, cli):
    from tests.server_helpers import LiveServer

    _store(tmp_path / "local", None)
    _store(tmp_path / "served", None)
    live = LiveServer(tmp_path / "served").start()
    try:
        args = ("--devices", "pi,laptop", "--dataset", "synthetic", "--w-bits", "8")
        for fmt in ("json", "csv", "table"):
            remote = cli("compare", "--server", live.url, *args, "--format", fmt)
            local = cli("compare", "--store", tmp_path / "local", *args, "--format", fmt)
            assert remote.exit_code == 0 and remote.stdout == local.stdout, remote.output
        unknown = cli("compare", "--server", live.url, "--devices", "pi,nano")
        assert unknown.exit_code == 2
        assert "unknown device nano; devices present: gpu-server, laptop, pi" in unknown.output
    finally:
        live.kill()


def test_report_devices_section_uses_the_comparison(tmp_path):
    from bench.report import build_report, report_context
    from bench.report import fmt as F

    store = _store(tmp_path / "s", None)
    context = report_context(store, figures=False)
    expected = by_config(compare(CELLS, MEASUREMENTS, ["laptop", "pi"]))
    assert context["compared"] == expected
    rows = {r["config"]: r for b in context["comparison"].blocks for r in b.rows}
    assert list(rows) == ["fp32", "ptq W8A8", "pact W4A4"]
    assert rows["ptq W8A8"]["p50_ratio@pi"] == pytest.approx(12 ** 0.5)
    html = build_report(store, tmp_path / "r.html").read_text()
    assert 'id="device-comparison-table"' in html and "laptop is the reference" in html
    assert F.ratio(12 ** 0.5) in html and F.ratio((0.4 * 0.25) ** 0.5) in html
    assert "pi: profile raspberry-pi-4, batch size 1" in html
    doc = json.loads(build_report(store, tmp_path / "r.json", "json").read_text())
    assert doc["device_comparison"]["devices"] == ["laptop", "pi"]
    one_device = ResultsStore(tmp_path / "one")
    one_device.ingest(RecordBatch(cells=CELLS, measurements=[
        m for m in MEASUREMENTS if m.device == "pi"]))
    assert report_context(one_device, figures=False)["comparison"] is None
    assert 'id="device-comparison-table"' not in build_report(
        one_device, tmp_path / "one.html").read_text()
