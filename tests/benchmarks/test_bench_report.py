"""Wall time of `bench report` (HTML, every section) over 1,000 generated records.

Runs only with `make bench` (MEDQ_BENCH=1), or:

    MEDQ_BENCH=1 python -m pytest tests/benchmarks/test_bench_report.py -o addopts="" -s \\
        --benchmark-columns=min,median,max,rounds

The store: 2 data sets x 2 backbones x 10 configurations (FP32, SGT, four quantised methods at
W8A8 and W4A4) x 25 seeds, each cell with deploy and saliency columns, 200 stored test
predictions and an overlay PNG, measured on two device profiles. 25 seeds means every test
runs (Wilcoxon, bootstrap CI, Friedman/CD). Target: <= 10 s on 2 cores.
Environment: MEDQ_BENCH_ROUNDS (3).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.report import build_report
from tests.test_report import QUANT, Generated, Spec, generate

ROUNDS = int(os.environ.get("MEDQ_BENCH_ROUNDS", "3"))
SPEC = Spec(datasets=("kvasir", "synthetic"), backbones=("resnet18", "mobilenet_v2"),
            configs=(("fp32", 32, 32), ("sgt", 32, 32), *QUANT, ("pact", 8, 8),
                     ("pact_sgt", 8, 8), ("pact_sgt", 4, 4)),
            seeds=25, devices=(("host", "m1"), ("raspberry-pi-4", "pi")), n_test=200,
            overlays=True)


@pytest.fixture(scope="module")
def thousand(tmp_path_factory: pytest.TempPathFactory) -> Generated:
    return generate(tmp_path_factory.mktemp("bench-report") / "s", SPEC)


def test_report_time(benchmark: object, thousand: Generated, tmp_path: Path) -> None:
    assert len(thousand.cells) == 1000
    out = tmp_path / "index.html"
    benchmark.pedantic(build_report, args=(thousand.store, out), rounds=ROUNDS, iterations=1)
    benchmark.extra_info.update(records=len(thousand.cells), html_bytes=out.stat().st_size)
    assert 'id="main-table"' in out.read_text()
