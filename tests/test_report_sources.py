"""The report from a local store (`bench report`) and from the server (`GET /report`) shows the
same sections under the same CSP; large overlays are downscaled for the gallery (the 84-cell
size budget itself is checked by tests/benchmarks/test_bench_report.py)."""

from __future__ import annotations

import io
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from bench.report.render import content_security_policy
from bench.report.saliency import OVERLAY_MAX_BYTES, small_png
from bench.saliency.overlay import save_overlay_png
from bench.server.app import create_app
from bench.server.settings import ServerSettings
from tests.test_report import Spec, generate

SMALL = Spec(seeds=3, devices=(("host", "m1"), ("raspberry-pi-4", "pi")), n_test=40,
             overlays=True, flagged=True, failed=1)


class Sections(HTMLParser):
    """The ids and text of a page's h2/h3 headings, every element id, the CSP meta's policy."""

    def __init__(self) -> None:
        super().__init__()
        self.headings: list[tuple[str, str | None, str]] = []
        self.ids: list[str] = []
        self.policy: str | None = None
        self._open: list[Any] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs).get("id")
        if tag == "meta" and dict(attrs).get("http-equiv") == "Content-Security-Policy":
            self.policy = dict(attrs).get("content")
        if found:
            self.ids.append(found)
        if tag in ("h2", "h3"):
            self._open = [tag, found, ""]

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._open[2] += data

    def handle_endtag(self, tag: str) -> None:
        if self._open is not None and tag == self._open[0]:
            self.headings.append((self._open[0], self._open[1], self._open[2].strip()))
            self._open = None


def sections(html: str) -> Sections:
    parser = Sections()
    parser.feed(html)
    return parser


@pytest.fixture(scope="module")
def small_store(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return generate(tmp_path_factory.mktemp("sources") / "s", SMALL)


@pytest.fixture(scope="module")
def both(small_store: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from typer.testing import CliRunner

    from bench.cli import app

    out = tmp_path_factory.mktemp("cli") / "index.html"
    result = CliRunner().invoke(app, ["report", "--store", str(small_store.store.root),
                                      "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    server = create_app(ServerSettings.of(None, small_store.store.root), small_store.store)
    with TestClient(server) as client:
        response = client.get("/report")
    assert response.status_code == 200
    return {"cli": out.read_text(encoding="utf-8"), "server": response}


def test_the_server_and_the_cli_show_the_same_sections(both):
    local, served = sections(both["cli"]), sections(both["server"].text)
    assert local.headings == served.headings
    assert local.ids == served.ids
    h2 = {i for tag, i, _ in local.headings if tag == "h2"}
    assert {"summary", "main", "tradeoffs", "saliency", "devices", "significance",
            "cells"} <= h2, h2


def test_the_server_sends_the_reports_csp_as_a_header(both):
    policy = both["server"].headers["content-security-policy"]
    assert policy == content_security_policy()
    assert sections(both["server"].text).policy == policy


def test_a_large_overlay_is_downscaled_for_the_gallery(tmp_path: Path):
    rng = np.random.default_rng(0)
    big = save_overlay_png(rng.random((3, 224, 224)), rng.random((224, 224)),
                           rng.random((224, 224)), tmp_path / "big.png", panel=224)
    small = small_png(big)
    assert big.stat().st_size > 4 * OVERLAY_MAX_BYTES
    assert len(small) <= OVERLAY_MAX_BYTES
    with Image.open(io.BytesIO(small)) as image:
        assert 96 <= image.width < 3 * 224
    tiny = save_overlay_png(np.zeros((3, 16, 16)), None, np.ones((16, 16)), tmp_path / "t.png")
    assert small_png(tiny) == tiny.read_bytes()
