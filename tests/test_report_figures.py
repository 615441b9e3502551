"""The report's figures on a crowded store (the paper grid's 19 configurations, 5 seeds, 3 devices,
samples stored per measurement): each figure draws, is drawn with seaborn where it shows a
distribution, and no two of its text labels overlap."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text

from bench.report import plots
from bench.report.build import _saliency, draw_figures
from bench.report.data import load
from bench.report.significance import block_tests
from bench.report.tables import main_table
from bench.store.measurements import save_measurement
from tests.test_report import Spec, _measurement, generate

PAPER_CONFIGS = (("fp32", 32, 32), ("fp32_ft", 32, 32), ("sgt", 32, 32), ("sgt_ft", 32, 32),
                 *((m, w, a) for m in ("ptq", "qat", "lsq", "pact", "pact_sgt")
                   for w, a in ((8, 8), (4, 4), (4, 2))))
CROWDED = Spec(backbones=("resnet18",), configs=PAPER_CONFIGS, seeds=5,
               devices=(("host", "m1"), ("raspberry-pi-4", "pi"), ("edge-1core-1g", "m1")),
               n_test=80)
SLACK_PX = 0.5


def text_boxes(fig: Figure) -> list[tuple[str, Any]]:
    """(text, window extent) of every non-empty text artist the figure draws (tick labels
    outside the view limits exist but are not drawn, so they are recorded at draw time)."""
    drawn: list[tuple[str, Any]] = []
    draw = Text.draw

    def record(self: Text, renderer: Any) -> None:
        draw(self, renderer)
        if self.get_visible() and self.get_text().strip():
            drawn.append((self.get_text(), self.get_window_extent(renderer)))

    with patch.object(Text, "draw", record):
        FigureCanvasAgg(fig).draw()
    return drawn


def overlaps(fig: Figure) -> list[tuple[str, str]]:
    """Pairs of text labels whose bounding boxes intersect (by more than SLACK_PX)."""
    boxes = text_boxes(fig)
    return [(a, b) for (a, ba), (b, bb) in itertools.combinations(boxes, 2)
            if min(ba.x1, bb.x1) - max(ba.x0, bb.x0) > SLACK_PX
            and min(ba.y1, bb.y1) - max(ba.y0, bb.y0) > SLACK_PX]


def _flatten(figs: dict[str, Any]) -> dict[str, Figure]:
    out = {}
    for b in figs["blocks"]:
        out |= {f"{b['name']} {k}": v for k, v in b.items() if isinstance(v, Figure)}
    out |= {f"saliency {d['name']}": d["svg"] for d in figs["saliency"] if d["svg"] is not None}
    out |= {f"cd {k}": v for k, v in figs["cd"].items() if v is not None}
    return out


@pytest.fixture(scope="module")
def crowded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Figure]:
    gen = generate(tmp_path_factory.mktemp("crowded") / "s", CROWDED)
    for i, cell in enumerate(gen.cells.cell_id):
        record = _measurement(cell, "host", "m1", 2.0, 50.0, 10_000 + i)
        record.samples_s = [0.002 * (1 + 0.001 * k) for k in range(200)]
        save_measurement(gen.store.engine, record)
    data = load(gen.store)
    main = main_table(data)
    return _flatten(draw_figures(data, main, _saliency(data), block_tests(data),
                                 draw=lambda fig: fig))


def test_every_figure_is_drawn(crowded):
    kinds = {name.split()[-1] for name in crowded}
    assert {"tradeoff", "bits", "latency", "pvalues"} <= kinds, sorted(crowded)
    assert sum(name.startswith("saliency") for name in crowded) == 1
    assert sum(name.startswith("cd") for name in crowded) == 1


@pytest.mark.parametrize("kind", ["tradeoff", "bits", "latency", "pvalues", "saliency", "cd"])
def test_no_two_labels_overlap(crowded, kind):
    mine = {n: f for n, f in crowded.items() if kind in n.split()}
    assert mine
    for name, fig in mine.items():
        assert not overlaps(fig), (name, overlaps(fig)[:5])


def test_labels_stay_inside_the_figure(crowded):
    for name, fig in crowded.items():
        width, height = fig.bbox.width, fig.bbox.height
        outside = [t for t, b in text_boxes(fig)
                   if b.x0 < -1 or b.y0 < -1 or b.x1 > width + 1 or b.y1 > height + 1]
        assert not outside, (name, outside[:5])


def test_overlap_check_sees_overlapping_labels():
    fig = Figure(figsize=(3, 2))
    ax = fig.subplots()
    ax.text(0.5, 0.5, "ptq W4A4")
    ax.text(0.52, 0.5, "qat W4A4")
    assert overlaps(fig) == [("ptq W4A4", "qat W4A4")]


def test_latency_spread_uses_the_stored_samples(crowded):
    fig = crowded["synthetic / resnet18 latency"]
    ax = fig.axes[0]
    low, high = ax.get_xlim()
    assert low < 2.0 < 2.4 < high   # host samples span 2.0-2.4 ms, generated p50s 1-8 ms


def test_svg_is_inline_and_text_stays_text(crowded):
    svg = plots.to_svg(crowded["synthetic / resnet18 pvalues"])
    assert svg.startswith("<svg") and "<text" in svg and "xmlns" not in svg


def test_figures_are_small(crowded, tmp_path: Path):
    sizes = {n: len(plots.to_svg(f)) for n, f in crowded.items()}
    assert max(sizes.values()) < 400_000, sizes
