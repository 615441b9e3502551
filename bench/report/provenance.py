"""Summary and provenance: what was run where and when, and every cell that needs a look."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import pandas as pd

from bench.report import fmt
from bench.report.data import ReportData, bits_label

FLAG_REASONS = {
    "low_agreement": "deployed model agrees with the PyTorch model on {agreement} of test images "
                     "(below the deploy stage's min_agreement)",
    "no_integer_kernels": "quantised model runs on float kernels in ONNX Runtime "
                          "(int_kernels={int_kernels}): not an integer model",
    "partially_integer": "ONNX Runtime runs {int_coverage} of its compute nodes "
                         "({int_coverage_macs} of their MACs) as integer kernels, the rest in "
                         "float: its latency is not an integer model's latency",
}


@dataclass(frozen=True)
class Flagged:
    """A cell (or one of its measurements) listed with the reason it needs attention."""

    cell_id: str
    what: str
    kind: str
    reason: str


def _error_line(text: str | None) -> str:
    """The last line of an error (a traceback's exception message)."""
    lines = (text or "").strip().splitlines()
    return lines[-1] if lines else "no error message stored"


def _describe(row: Any) -> str:
    return (f"{row.dataset}/{row.backbone}/{row.method} {bits_label(row.w_bits, row.a_bits)} "
            f"seed {row.seed}")


def flagged(data: ReportData) -> list[Flagged]:
    """Failed cells, cells with deploy flags, failed measurements (latest attempt)."""
    out = [Flagged(r.cell_id, _describe(r), "failed", _error_line(r.error))
           for r in data.cells[data.cells.status != "ok"].itertuples(index=False)]
    if "deploy_flags" in data.cells:
        for r in data.cells[data.cells.deploy_flags.fillna("").astype(bool)].itertuples(
                index=False):
            values = {"agreement": fmt.num(getattr(r, "agreement", None)),
                      "int_coverage": fmt.num(getattr(r, "int_coverage", None)),
                      "int_coverage_macs": fmt.num(getattr(r, "int_coverage_macs", None)),
                      "int_kernels": fmt.DASH if fmt.missing(getattr(r, "int_kernels", None))
                      else int(r.int_kernels)}
            for flag in str(r.deploy_flags).split(","):
                reason = FLAG_REASONS.get(flag, "flagged by the deploy stage").format(**values)
                out.append(Flagged(r.cell_id, _describe(r), flag, reason))
    cells = data.cells.set_index("cell_id")
    for m in data.failed_measurements.itertuples(index=False):
        what = _describe(cells.loc[m.cell_id].rename(None)) if m.cell_id in cells.index else ""
        out.append(Flagged(m.cell_id, what, f"measurement failed ({m.profile}, batch "
                           f"{m.batch_size})", _error_line(m.error)))
    return out


def _packages(records: list[Any]) -> dict[str, dict[str, int]]:
    versions: dict[str, Counter[str]] = defaultdict(Counter)
    for r in records:
        for name, version in ((r.provenance or {}).get("packages") or {}).items():
            versions[name][str(version)] += 1
    return {name: dict(v) for name, v in sorted(versions.items())}


def _machines(records: list[Any]) -> dict[str, int]:
    machines: Counter[str] = Counter()
    for r in records:
        m = (r.provenance or {}).get("machine") or {}
        machines[f"{m.get('cpu_model')} ({m.get('cores_logical')} cores, {m.get('ram_gb')} GB, "
                 f"{m.get('os')}), {(r.provenance or {}).get('device', 'cpu')}"] += 1
    return dict(machines)


def _commits(records: list[Any]) -> dict[str, int]:
    commits: Counter[str] = Counter()
    for r in records:
        git = (r.provenance or {}).get("git") or {}
        commits[f"{git.get('commit', 'no git')}{' (dirty)' if git.get('dirty') else ''}"] += 1
    return dict(commits)


def _when(moment: Any) -> str:
    return "-" if moment is None or pd.isna(moment) else f"{moment:%Y-%m-%d %H:%M:%S}"


def summary(data: ReportData) -> dict[str, Any]:
    """Counts, grids, data sets with their split manifests, packages, machines, dates."""
    records = list(data.records.values())
    cells = data.cells
    manifests: dict[str, list[str]] = defaultdict(list)
    for dataset, manifest in sorted({(r.dataset, r.split_manifest) for r in records}):
        manifests[dataset].append(manifest)
    measured = data.measured
    return {
        "n_cells": len(cells),
        "n_ok": int((cells.status == "ok").sum()) if len(cells) else 0,
        "n_failed": int((cells.status != "ok").sum()) if len(cells) else 0,
        "n_configs": int(cells.groupby(["dataset", "backbone", "config"]).ngroups)
        if len(cells) else 0,
        "seeds": sorted(int(s) for s in cells.seed.unique()) if len(cells) else [],
        "superseded": data.superseded,
        "grids": sorted({r.grid for r in records}),
        "manifests": dict(manifests),
        "packages": _packages(records),
        "machines": _machines(records),
        "commits": _commits(records),
        "first": _when(min((r.started_at for r in records), default=None)),
        "last": _when(max((r.finished_at for r in records), default=None)),
        "devices": [{"device": d, "profile": g.profile.iloc[0], "machine": g.machine.iloc[0],
                     "batch_size": int(g.batch_size.iloc[0]), "cpu": g.cpu.iloc[0],
                     "cells": int(g.cell_id.nunique()),
                     "last": _when(g.finished_at.max())}
                    for d, g in measured.groupby("device")] if len(measured) else [],
        "n_measurements": len(measured),
        "signatures": data.signatures,
        "replacements": data.replacements,
    }
