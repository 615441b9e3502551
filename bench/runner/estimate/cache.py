"""Measured estimate costs kept between dry runs, so a second `bench run --dry-run` answers at once.

A cell's cost terms depend on what its probe measured: the machine, the software, the torch
device and threads a cell gets, and everything about the cell a probe or a stage's cost reads
(its kind, bit-widths, shape and stage settings; not its seed). The cache keeps the terms under
a fingerprint of the first three and a key of the last, in `$MEDQ_CACHE/estimates.json`, with
the time it took to start workers; `--re-estimate` measures again and replaces them. A cache
that cannot be read is ignored (and rewritten); one that cannot be written leaves the estimate
as measured.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.data.base import cache_dir
from bench.runner.estimate.costs import Assumptions, CellShape
from bench.runner.plan import Cell

CACHE_FILE = "estimates.json"
VERSION = 1
"""Part of the fingerprint: raise it when what a probe measures, or how, changes."""


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def machine_fingerprint(chosen: Assumptions) -> str:
    """The machine (CPU model, architecture, usable cores, GPUs), the software versions and
    where a cell runs (torch device, threads), hashed."""
    from bench.provenance import machine_info, package_versions

    machine = machine_info()
    gpus: list[str] = []
    if chosen.torch_device.startswith("cuda"):
        import torch

        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return _digest({"version": VERSION, "packages": package_versions(), "gpus": gpus,
                    "machine": {k: machine[k] for k in ("cpu_model", "arch", "cores_usable")},
                    "torch_device": chosen.torch_device,
                    "threads_per_cell": chosen.threads_per_cell})


def cell_key(cell: Cell, shape: CellShape) -> str:
    """What a cell's terms depend on besides the machine (its seed does not count)."""
    c = cell.config
    return _digest({"backbone": c.backbone.model_dump(mode="json"),
                    "image_size": c.dataset.image_size, "method": c.method, "params": c.params,
                    "bits": [c.w_bits, c.a_bits], "train": c.train.model_dump(mode="json"),
                    "calibration_batches": c.calibration_batches, "stages": c.stages,
                    "shape": asdict(shape)})


class EstimateCache:
    """The measured terms of this machine's fingerprint; `save` writes them back."""

    def __init__(self, fingerprint: str, path: Path | None = None, fresh: bool = False) -> None:
        self.path = path or cache_dir() / CACHE_FILE
        self.fingerprint = fingerprint
        self._all = self._read()
        self._mine: dict[str, Any] = {} if fresh else self._all.get(fingerprint, {})
        self._mine.setdefault("cells", {})
        self.changed = False

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def terms(self, key: str) -> tuple[float, dict[str, float]] | None:
        """(step seconds, cost terms) measured for a cell of ``key``, if any."""
        found = self._mine["cells"].get(key)
        if not isinstance(found, dict):
            return None
        return float(found["step_s"]), {k: float(v) for k, v in found["terms"].items()}

    def put(self, key: str, step_s: float, terms: dict[str, float]) -> None:
        self._mine["cells"][key] = {"step_s": step_s, "terms": terms}
        self.changed = True

    @property
    def workers_start_s(self) -> float | None:
        value = self._mine.get("workers_start_s")
        return float(value) if value is not None else None

    @workers_start_s.setter
    def workers_start_s(self, seconds: float) -> None:
        self._mine["workers_start_s"] = seconds
        self.changed = True

    def save(self) -> None:
        """Write the cache (atomically); a cache that cannot be written is left as it was."""
        if not self.changed:
            return
        self._all[self.fingerprint] = self._mine
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}")
            partial.write_text(json.dumps(self._all, indent=1))   # terms keep their order
            os.replace(partial, self.path)
        except OSError:
            return
        self.changed = False
