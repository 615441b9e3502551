"""A report of many devices: every table and figure keys a measurement by the record's device
(two identical boards share profile and machine fingerprint, and neither hides the other), and
50 devices draw with distinct colours and markers and readable legends."""

from __future__ import annotations

import json

import pytest
from matplotlib.figure import Figure

from bench.compare import device_labels
from bench.report import report_context
from bench.report.data import load
from bench.report.plots import latency_spread, styles, to_svg, tradeoff
from bench.report.tables import main_table
from tests.test_report import Spec, generate
from tests.test_report_figures import overlaps, text_boxes

CONFIGS = (("fp32", 32, 32), ("ptq", 8, 8))


def _json(cli, store, tmp_path) -> dict:
    out = tmp_path / "report.json"
    result = cli("report", "--store", store.root, "--out", out, "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


def test_twelve_identical_boards_and_a_workstation_are_thirteen_devices(tmp_path, cli):
    boards = tuple(("raspberry-pi-5", "a1b2c3d4", f"clinic-{i:02d}") for i in range(12))
    gen = generate(tmp_path / "s", Spec(configs=CONFIGS, seeds=1, saliency=False, n_test=20,
                                        devices=(*boards, ("host", "ws", "workstation"))))
    doc = _json(cli, gen.store, tmp_path)
    names = [f"clinic-{i:02d}" for i in range(12)] + ["workstation"]
    row = next(r for r in doc["devices"] if r["config"] == "fp32")
    assert sorted(k.removeprefix("p50@") for k in row if k.startswith("p50@")) == names
    fp32 = gen.latency.merge(gen.cells[gen.cells.method == "fp32"][["cell_id"]], on="cell_id")
    for d, p50 in enumerate(fp32.p50):   # each board its own latency, none replaced
        assert row[f"p50@{names[d]}"] == pytest.approx(p50)
    assert doc["device_comparison"]["devices"] == names
    context = report_context(gen.store, figures=False)
    assert [g for g, _ in context["device_table"].groups][1:] == names
    from fastapi.testclient import TestClient

    from bench.server.app import create_app
    from bench.server.settings import ServerSettings

    with TestClient(create_app(ServerSettings.of(None, gen.store.root), gen.store)) as client:
        response = client.get("/report")
    assert response.status_code == 200
    assert all(f'data-device="{n}"' in response.text for n in names)


def test_fifty_devices_render(tmp_path, cli):
    devices = tuple(("host", "m", f"dev-{i:02d}") for i in range(50))
    gen = generate(tmp_path / "s", Spec(configs=CONFIGS, seeds=1, saliency=False, n_test=20,
                                        devices=devices))
    out = tmp_path / "index.html"
    result = cli("report", "--store", gen.store.root, "--out", out)
    assert result.exit_code == 0, result.output
    html = out.read_text()
    assert all(f"dev-{i:02d}" in html for i in range(50))
    context = report_context(gen.store, figures=False)
    assert len(context["devices"]) == 50


@pytest.mark.parametrize("n", [8, 50])
def test_device_figures_give_each_device_its_own_look_and_no_label_overlaps(tmp_path, n):
    devices = tuple(("host", "m", f"dev-{i:02d}") for i in range(n))
    gen = generate(tmp_path / "s", Spec(configs=CONFIGS, seeds=1, saliency=False, n_test=20,
                                        devices=devices))
    data = load(gen.store)
    block = main_table(data).blocks[0]
    spread = latency_spread(data.ok, data.measured)
    trade = tradeoff(block, data.ok, data.measured, data.devices)
    assert isinstance(spread, Figure) and isinstance(trade, Figure)
    handles = spread.legends[0].legend_handles
    looks = {(tuple(h.get_color()), h.get_marker()) for h in handles}
    assert len(handles) == n and len(looks) == n
    assert len(trade.axes) == 2   # packed size, and one panel over the devices
    for fig in (spread, trade):
        to_svg(fig)   # lays the figure out
        assert not overlaps(fig), overlaps(fig)[:5]
        width, height = fig.bbox.width, fig.bbox.height
        assert all(b.x0 >= -1 and b.y0 >= -1 and b.x1 <= width + 1 and b.y1 <= height + 1
                   for _, b in text_boxes(fig))


@pytest.mark.parametrize("n", [1, 10, 11, 50, 100, 250])
def test_styles_are_distinct(n):
    pairs = styles(n)
    assert len(pairs) == n and len({(tuple(c), m) for c, m in pairs}) == n


def test_device_labels_add_profile_and_batch_only_where_a_device_has_several():
    labels = device_labels([("pi", "edge", 1), ("pi", "edge", 8), ("pi", "host", 1),
                            ("lab", "host", 1), ("lab", "host", 1)])
    assert labels == {("pi", "edge", 1): "pi (edge, b1)", ("pi", "edge", 8): "pi (edge, b8)",
                      ("pi", "host", 1): "pi (host)", ("lab", "host", 1): "lab"}
