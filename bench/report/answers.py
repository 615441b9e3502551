"""The report's answers on each device: what each device computed in accuracy mode.

Per cell and device (the record's ``device``, and its profile): the device's accuracy on the
test split with its Wilson 95% interval (bench.stats.wilson_interval), its agreement with the
deploying machine's deployed predictions, the largest logit difference, and the exact McNemar
test between the device's and the deploying machine's per-image predictions on the same
images (bench.stats.mcnemar_exact). A cell and device whose agreement is below 1 is flagged
with the images that differ: a thumbnail of the test image (from the cell's
``test_inputs.npz``) and both predictions. The headline's verification line counts, per
configuration, the devices it was verified on and the lowest agreement seen.
"""

from __future__ import annotations

import base64
import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from bench.stats import mcnemar_exact, wilson_interval
from bench.store.accuracy import MODE, PREDICTIONS, check_accuracy_details
from bench.store.artifacts import ArtifactMismatchError, checked_artifact
from bench.store.database import ResultsStore
from bench.store.deploy import DEPLOY_STAGE
from bench.store.schema import CellRecord, MeasurementRecord

MAX_DIFFERING = 6
"""Differing images shown per cell and device."""
THUMB_PX = 48


@dataclass(frozen=True)
class Differing:
    """One test image on which the device's top-1 differs from the deploying machine's."""

    index: int
    label: int
    device_prediction: int
    workstation_prediction: int
    thumbnail: str | None
    """A PNG data URI of the test image, where its inputs are in the store."""


@dataclass(frozen=True)
class Answer:
    """A cell's accuracy-mode result on one device."""

    cell_id: str
    dataset: str
    backbone: str
    config: str
    seed: int
    device: str
    profile: str
    images: int
    accuracy: float
    ci_low: float | None
    ci_high: float | None
    agreement: float
    max_logit_diff: float
    mcnemar_p: float | None
    mcnemar_reason: str | None
    differing: list[Differing] = field(default_factory=list)
    emulated: bool = False
    """Measured under user-mode emulation: its answers are real, its latency is not a
    device's."""

    @property
    def flagged(self) -> bool:
        return self.agreement < 1.0


def _config(cell: CellRecord) -> str:
    return cell.method if cell.w_bits >= 32 and cell.a_bits >= 32 else \
        f"{cell.method} W{cell.w_bits}A{cell.a_bits}"


def _thumbnail(image: np.ndarray) -> str | None:
    """uint8 (3, H, W) as a small PNG data URI (nearest-neighbour upscaled if tiny)."""
    from PIL import Image

    picture = Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)))
    scale = max(1, THUMB_PX // max(picture.size))
    picture = picture.resize((picture.width * scale, picture.height * scale),
                             Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _files(store: ResultsStore, cell: CellRecord) -> tuple[Path | None, Path | None]:
    """The cell's deployed predictions and test inputs, each only if it is inside the cell's
    folder with the SHA-256 its record states (None otherwise: "not here")."""
    deploy = (cell.metrics or {}).get(DEPLOY_STAGE)
    if not isinstance(deploy, dict) or not cell.artifacts:
        return None, None
    folder = store.root / cell.artifacts
    found: list[Path | None] = []
    for key in ("deployed_predictions", "test_inputs_file"):
        try:
            name = deploy.get(key)
            found.append(checked_artifact(folder, cell.cell_id, cell.artifact_hashes, name)
                         if isinstance(name, str) and ".." not in name.split("/") else None)
        except ArtifactMismatchError:
            found.append(None)
    return found[0], found[1]


UNREADABLE = (OSError, ValueError, KeyError, zipfile.BadZipFile)
"""What reading a damaged or foreign .npz raises: the file is then treated as not here."""


def _answer(store: ResultsStore, cell: CellRecord, m: MeasurementRecord,
            images: bool = True) -> Answer:
    d = m.details
    n = int(d["accuracy_images"])
    low, high = wilson_interval(round(d["device_accuracy"] * n), n)
    mine = np.asarray(d[PREDICTIONS])
    reference, inputs = _files(store, cell)
    p_value, reason, differing = None, "the deploying machine's predictions are not here", []
    read = _reference(reference)
    if read is not None:
        theirs, labels, index = read
        if theirs.shape == mine.shape:
            test = mcnemar_exact(mine, theirs, labels)
            p_value, reason = test.p_value, test.reason
            differing = _differing(mine, theirs, labels, index, inputs if images else None)
        else:
            reason = "the device ran other test images than the deploying machine"
    return Answer(cell.cell_id, cell.dataset, cell.backbone, _config(cell), cell.seed,
                  m.device, m.profile, n, float(d["device_accuracy"]), low, high,
                  float(d["device_agreement"]), float(d["device_max_logit_diff"]), p_value,
                  reason, differing, bool(d.get("emulated")))


def _reference(path: Path | None) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The deploying machine's predictions, labels and image index, or None if unreadable."""
    if path is None:
        return None
    try:
        with np.load(path, allow_pickle=False) as ref:
            return ref["predictions"], ref["labels"], ref["index"]
    except UNREADABLE:
        return None


def _differing(mine: np.ndarray, theirs: np.ndarray, labels: np.ndarray, index: np.ndarray,
               inputs: Path | None) -> list[Differing]:
    where = np.flatnonzero(mine != theirs)[:MAX_DIFFERING]
    if not len(where):
        return []
    images = None
    if inputs is not None:
        try:
            with np.load(inputs, allow_pickle=False) as data:
                images = data["images"][where]
        except UNREADABLE:
            images = None
    return [Differing(int(index[i]), int(labels[i]), int(mine[i]), int(theirs[i]),
                      _thumbnail(images[k]) if images is not None else None)
            for k, i in enumerate(where)]


def _complete(details: dict[str, Any] | None) -> bool:
    """Whether ``details`` ran accuracy mode and carries every in-bounds result field."""
    if not details or details.get(MODE) != "on":
        return False
    try:
        check_accuracy_details(details)
    except ValueError:
        return False
    return True


def device_answers(store: ResultsStore, cell_ids: set[str], images: bool = True
                   ) -> list[Answer]:
    """The latest accuracy-mode measurement per cell (of ``cell_ids``), device and profile;
    ``images=False`` shows no thumbnail of a test image (a public report: patients' images)."""
    with Session(store.engine, expire_on_commit=False) as session:
        rows = list(session.scalars(select(MeasurementRecord).where(
            MeasurementRecord.status == "ok").order_by(MeasurementRecord.finished_at,
                                                       MeasurementRecord.id)))
        cells = {c.cell_id: c for c in session.scalars(select(CellRecord).where(
            CellRecord.cell_id.in_(sorted(cell_ids))))}
    latest: dict[tuple[str, str, str], MeasurementRecord] = {}
    for m in rows:
        if m.cell_id in cells and _complete(m.details):
            latest[(m.cell_id, m.device, m.profile)] = m
    answers = [_answer(store, cells[c], m, images) for (c, _, _), m in latest.items()]
    return sorted(answers, key=lambda a: (a.dataset, a.backbone, a.config, a.seed, a.device,
                                          a.profile))


def verification(answers: list[Answer]) -> list[dict[str, Any]]:
    """Per data set, backbone and configuration: the devices it was verified on (accuracy mode
    ran) and the lowest agreement seen on any of them."""
    groups: dict[tuple[str, str, str], list[Answer]] = {}
    for a in answers:
        groups.setdefault((a.dataset, a.backbone, a.config), []).append(a)
    return [{"dataset": dataset, "backbone": backbone, "config": config,
             "devices": sorted({a.device for a in members}),
             "lowest_agreement": min(a.agreement for a in members),
             "lowest_on": min(members, key=lambda a: a.agreement).device}
            for (dataset, backbone, config), members in groups.items()]
