"""The listings: `bench profiles`, `bench datasets`, `bench backbones`, `bench methods`."""

from __future__ import annotations

from rich.table import Table

from bench.cli.common import out


def profiles() -> None:
    """List the hardware profiles."""
    from bench.measure import list_profiles, load_profile

    names = list_profiles()
    table = Table()
    table.add_column("profile", no_wrap=True, min_width=max(map(len, names)))
    for column in ("isolation", "threads", "limits", "description"):
        table.add_column(column)
    for name in names:
        p = load_profile(name)
        threads = f"intra {p.threads.intra_op or 'auto'}, inter {p.threads.inter_op or 'auto'}"
        table.add_row(name, p.isolation, threads, p.limits_text(), " ".join(p.description.split()))
    out.print(table)


def datasets() -> None:
    """List the data sets."""
    from bench.data import DATASETS

    listing("data set", {n: d.description + (" [masks]" if d.has_masks else "")
                         for n, d in DATASETS.items()})


def backbones() -> None:
    """List the backbones."""
    from bench.models import BACKBONES

    listing("backbone", {n: b.description for n, b in BACKBONES.items()})


def methods() -> None:
    """List the methods with their parameters and defaults."""
    from methods import METHODS

    table = Table()
    for column in ("method", "quantised", "parameters (defaults)", "description"):
        table.add_column(column)
    for name, m in sorted(METHODS.items()):
        params = ", ".join(f"{k}={v.default!r}" for k, v in m.Params.model_fields.items())
        table.add_row(name, "yes" if m.quantized else "no", params or "-", m.description)
    out.print(table)


def listing(kind: str, items: dict[str, str]) -> None:
    table = Table()
    table.add_column(kind)
    table.add_column("description")
    for name, text in sorted(items.items()):
        table.add_row(name, text)
    out.print(table)
