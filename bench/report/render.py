"""Output formats: the full HTML report, and the main table as Markdown, LaTeX, CSV or JSON."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import math
from collections.abc import Callable
from functools import cache
from typing import Any

import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape

from bench.report import clinical, fmt
from bench.report.data import bits_label
from bench.report.tables import Column, Table, text

EMPTY = "The store has no records yet."
_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}", "±": r"$\pm$", "ρ": r"$\rho$",
                  "Δ": r"$\Delta$"}


@cache
def _environment() -> Environment:
    """The templates' environment, built once per process (jinja2 compiles each template once
    per environment)."""
    env = Environment(loader=PackageLoader("bench.report", "templates"),
                      autoescape=select_autoescape(["html", "j2"]), trim_blocks=True,
                      lstrip_blocks=True)
    env.globals.update(text=text, fmt=fmt, bits_label=bits_label)
    return env


SCRIPT = "_table.js"
"""The report's one inline script: table sorting and filtering (no network, no eval)."""


@cache
def script_text() -> str:
    return _environment().get_template(SCRIPT).render()


def content_security_policy(script: str | None = None) -> str:
    """The report's CSP: nothing may be fetched (default-src 'none'; images only as data: URIs);
    the inline script runs by its sha256, any other script is blocked. Styles stay
    'unsafe-inline': matplotlib's SVG draws with style attributes, which a hash cannot allow
    one by one, and CSS cannot reach the network under default-src 'none'."""
    digest = hashlib.sha256((script_text() if script is None else script).encode()).digest()
    return (f"default-src 'none'; script-src 'sha256-{base64.b64encode(digest).decode()}'; "
            "style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'")


def html(context: dict[str, Any]) -> str:
    script = script_text()
    return _environment().get_template("report.html.j2").render(
        **context, script=script, csp=content_security_policy(script))


def full_label(column: Column) -> str:
    """A column's label with its device, for formats that have one header row."""
    if column.group and column.group not in ("deployed", "saliency"):
        return f"{column.group} {column.label}"
    return column.label


TABLES = ("headline", "main")
"""The tables the one-table formats (md, csv, latex) can write (`bench report --table`)."""
DEFAULT_TABLE = {"latex": "headline"}
"""The table a format writes unless told: LaTeX the headline table, the others the main one."""


def export_name(context: dict[str, Any], format: str) -> str:
    """The table a one-table format writes: ``context["export_table"]`` (`--table`), else the
    format's default."""
    return context.get("export_table") or DEFAULT_TABLE.get(format, "main")


def markdown(context: dict[str, Any]) -> str:
    table: Table = context[export_name(context, "md")]
    lines = ["# medq-bench report", "",
             f"Store `{context['store']}`: {context['n_records']} records, generated "
             f"{context['generated']}. Accuracy: mean ± half-width of the 95% t-interval over "
             "seeds; **bold**: best in the column within a data set and backbone.", ""]
    if not context["n_records"]:
        return "\n".join([*lines, EMPTY, ""])
    for block in table.blocks:
        lines += [f"## {block.name}", "",
                  "| " + " | ".join(full_label(c) for c in table.columns) + " |",
                  "|" + "|".join(" --- " if c.kind == "text" else " ---: "
                                 for c in table.columns) + "|"]
        for i, row in enumerate(block.rows):
            cells = [text(c, row).replace("|", "\\|") for c in table.columns]
            cells = [f"**{v}**" if (i, c.key) in block.best else v
                     for c, v in zip(table.columns, cells, strict=True)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def latex_escape(value: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in value)


def _latex_groups(table: Table) -> list[str]:
    """A header row of the column groups with a \\cmidrule under each named one."""
    if all(not label for label, _ in table.groups):
        return []
    cells, rules, start = [], [], 1
    for label, span in table.groups:
        cells.append(f"\\multicolumn{{{span}}}{{c}}{{{latex_escape(label)}}}" if label else
                     " & ".join([""] * span))
        if label:
            rules.append(f"\\cmidrule(lr){{{start}-{start + span - 1}}}")
        start += span
    return [" & ".join(cells) + " \\\\", " ".join(rules)]


def latex(context: dict[str, Any]) -> str:
    """The headline table (or, with ``export_table="main"``, the main one) as a booktabs
    tabular (needs \\usepackage{booktabs}); the headline's sentences follow as comments."""
    name = export_name(context, "latex")
    table: Table = context[name]
    head = [f"% medq-bench {name} table, store {context['store']}, {context['generated']}",
            "% needs \\usepackage{booktabs}"]
    if not context["n_records"]:
        return "\n".join([*head, f"% {EMPTY}", ""])
    n = len(table.columns)
    header = (_latex_groups(table) if name == "headline" else [])
    lines = [*head, "\\begin{tabular}{" + "".join("l" if c.kind == "text" else "r"
                                                  for c in table.columns) + "}", "\\toprule",
             *header,
             " & ".join(latex_escape(c.label if name == "headline" else full_label(c))
                        for c in table.columns) + " \\\\",
             "\\midrule"]
    for b, block in enumerate(table.blocks):
        if b:
            lines.append("\\midrule")
        lines.append(f"\\multicolumn{{{n}}}{{l}}{{\\textit{{{latex_escape(block.name)}}}}} \\\\")
        for i, row in enumerate(block.rows):
            cells = [latex_escape(text(c, row)) for c in table.columns]
            cells = [f"\\textbf{{{v}}}" if (i, c.key) in block.best else v
                     for c, v in zip(table.columns, cells, strict=True)]
            lines.append(" & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    if name == "headline":
        lines += [f"% {b.name}: {r['sentence']}" for b in table.blocks for r in b.rows]
    return "\n".join([*lines, ""])


def table_records(table: Table) -> list[dict[str, Any]]:
    """The table's raw values, one flat dict per row (CI bounds as `<key>_low/_high`)."""
    keys = []
    for c in table.columns:
        keys += [c.key, f"{c.key}_low", f"{c.key}_high"] if c.kind == "ci" else [c.key]
    return [{"dataset": b.dataset, "backbone": b.backbone, "method": r.get("method"),
             "w_bits": r.get("w_bits"), "a_bits": r.get("a_bits"),
             **{k: r.get(k) for k in keys}} for b in table.blocks for r in b.rows]


def csv(context: dict[str, Any]) -> str:
    records = table_records(context[export_name(context, "csv")])
    buffer = io.StringIO()
    pd.DataFrame(records, columns=list(records[0]) if records else ["dataset", "backbone"]
                 ).to_csv(buffer, index=False)
    return buffer.getvalue()


def _plain(value: Any) -> Any:
    """JSON-able data: dataclasses as dicts, NaN as null, sets sorted."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, set):
        return sorted(_plain(v) for v in value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and callable(value.item):
        return _plain(value.item())
    return value


def as_json(context: dict[str, Any]) -> str:
    doc = {"store": context["store"], "generated": context["generated"],
           "n_records": context["n_records"], "summary": context["summary"],
           "flagged": context["flagged"], "main_table": table_records(context["main"]),
           "devices": table_records(context["device_table"]),
           "device_comparison": context["compared"],
           "device_answers": [{k: v for k, v in dataclasses.asdict(a).items() if k != "differing"}
                              | {"differing": [{**dataclasses.asdict(d), "thumbnail": None}
                                               for d in a.differing]}
                              for a in context.get("answers", [])],
           "verified": context.get("verified", []),
           "saliency": table_records(context["saliency"]["table"]),
           "significance": context["significance"],
           "headline_table": [{**r, "sentence": row["sentence"]} for r, row in zip(
               table_records(context["headline"]),
               (row for b in context["headline"].blocks for row in b.rows), strict=True)],
           "clinical": [clinical.describe(c["block"]) for c in context["clinical"]]}
    return json.dumps(_plain(doc), indent=1, default=str) + "\n"


FORMATS: dict[str, Callable[[dict[str, Any]], str]] = {
    "html": html, "md": markdown, "csv": csv, "json": as_json, "latex": latex}
SUFFIXES = {"html": "html", "md": "md", "csv": "csv", "json": "json", "latex": "tex"}
