"""Which extra of medq-bench installs a module, read from the installed package's metadata.

The base install is the light core every verb needs to start; `device` adds what measuring
needs, `server` the results server, `full` training, deployment, saliency and the report
(pyproject.toml). A verb that lacks a module tells which extra brings it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

DISTRIBUTION = "medq-bench"
# Smallest first: a module that several extras list is credited to the first of them.
EXTRAS = ("device", "openvino", "server", "ray", "full", "test")
# Distributions whose top-level module has another name.
IMPORT_NAMES = {"pillow": "PIL", "pyyaml": "yaml", "python-multipart": "multipart",
                "scikit-image": "skimage", "scikit-learn": "sklearn"}

_REQUIREMENT = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)[^;]*(?:;(.*))?")
_EXTRA_MARKER = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")


def import_name(distribution: str) -> str:
    """The top-level module a distribution installs (``scikit-learn`` -> ``sklearn``)."""
    name = re.sub(r"[-_.]+", "-", distribution).lower()
    return IMPORT_NAMES.get(name, name.replace("-", "_"))


def modules_by_extra(requirements: Iterable[str] | None = None) -> dict[str, set[str]]:
    """Top-level modules each extra lists ("" for the base), from requirement strings such as
    ``torch; extra == "full"`` (default: the installed medq-bench's). The extras' reference to
    medq-bench itself is left out."""
    if requirements is None:
        from importlib import metadata  # not at import: it costs every CLI start ~20 ms

        try:
            requirements = metadata.requires(DISTRIBUTION) or []
        except metadata.PackageNotFoundError:
            requirements = []
    own = import_name(DISTRIBUTION)
    modules: dict[str, set[str]] = {}
    for requirement in requirements:
        match = _REQUIREMENT.match(requirement)
        if match is None or (module := import_name(match[1])) == own:
            continue
        extra = _EXTRA_MARKER.search(match[2] or "")
        modules.setdefault(extra[1] if extra else "", set()).add(module)
    return modules


def extra_for(module: str) -> str | None:
    """The smallest extra that installs the top-level ``module``; None if no extra lists it
    (a module of the base, or one medq-bench does not depend on)."""
    listed = modules_by_extra()
    return next((extra for extra in EXTRAS if module in listed.get(extra, ())), None)
