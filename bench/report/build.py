"""Turn a results store into one self-contained HTML file (inline CSS, no network requests)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape

from bench.store import ResultsStore

GROUP = ["dataset", "backbone", "method", "w_bits", "a_bits"]


def _environment() -> Environment:
    env = Environment(loader=PackageLoader("bench.report", "templates"),
                      autoescape=select_autoescape(["html", "j2"]))
    env.filters["num"] = lambda v, d=4: "-" if v is None or pd.isna(v) else f"{v:.{d}f}"
    return env


def summary_table(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds of the successful cells, per configuration."""
    ok = frame[frame.status == "ok"]
    if ok.empty:
        return []
    grouped = ok.groupby(GROUP, dropna=False)
    table = grouped.agg(seeds=("seed", "nunique"), accuracy_mean=("accuracy", "mean"),
                        accuracy_std=("accuracy", "std"), macro_f1_mean=("macro_f1", "mean"),
                        train_seconds_mean=("train_seconds", "mean")).reset_index()
    return table.to_dict("records")


def provenance_summary(records: list[Any]) -> dict[str, Any]:
    packages: Counter[str] = Counter()
    machines: Counter[str] = Counter()
    commits: Counter[str] = Counter()
    for r in records:
        prov = r.provenance or {}
        packages[", ".join(f"{k} {v}" for k, v in (prov.get("packages") or {}).items())] += 1
        m = prov.get("machine") or {}
        machines[f"{m.get('cpu_model')} ({m.get('cores_logical')} cores, {m.get('ram_gb')} GB, "
                 f"{m.get('os')})"] += 1
        git = prov.get("git") or {}
        commits[f"{git.get('commit', 'no git')}{' (dirty)' if git.get('dirty') else ''}"] += 1
    starts = [r.started_at for r in records]
    return {"packages": packages, "machines": machines, "commits": commits,
            "first": min(starts) if starts else None, "last": max(starts) if starts else None,
            "grids": sorted({r.grid for r in records}),
            "manifests": sorted({(r.dataset, r.split_manifest) for r in records})}


def report_context(store: ResultsStore) -> dict[str, Any]:
    records = store.records()
    frame = pd.DataFrame(store.rows())
    return {
        "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "store": str(store.root),
        "n_records": len(records),
        "rows": frame.to_dict("records") if len(frame) else [],
        "summary": summary_table(frame) if len(frame) else [],
        "failed": [r for r in records if r.status != "ok"],
        "provenance": provenance_summary(records),
    }


def build_report(store: ResultsStore, out: Path) -> Path:
    html = _environment().get_template("report.html.j2").render(**report_context(store))
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".part")
    partial.write_text(html, encoding="utf-8")
    partial.replace(out)
    return out
