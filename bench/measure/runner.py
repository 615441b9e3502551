"""Measure every deployed cell of a store under one hardware profile on this machine.

Where a cell's test inputs are present (pulled with it, or made here by its deploy stage) and
accuracy mode is on, the worker also runs the deployed model over them after timing, and the
measurement records the device's accuracy, its agreement with the workstation's deployed
predictions, the largest logit difference and its per-image predictions (bench.store.accuracy).

A cell is measured once per (profile, device, machine fingerprint hash, batch size): cells with a
successful measurement under that key are skipped, failed ones are measured again. Each
measurement is stored (with its samples, summary, fingerprint, or its error) in its own
transaction as soon as it is taken.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench.deploy.runtime import session_config, u8s8_saturates
from bench.errors import UsageError
from bench.measure.accuracy import accuracy_details
from bench.measure.fingerprint import HASH_KEY, machine_fingerprint
from bench.measure.isolation import (
    IsolationUnavailable,
    Measurement,
    MeasurementError,
    WorkerStillRunning,
    check_isolation,
    measure_isolated,
    worker_guard,
)
from bench.measure.profiles import Profile
from bench.measure.protocol import summarize
from bench.store import CellRecord, ResultsStore
from bench.store.accuracy import MODE
from bench.store.artifacts import file_sha256
from bench.store.bounds import clip_text
from bench.store.deploy import DEPLOY_STAGE, INPUT_KEYS, input_files
from bench.store.identity import local_device, valid_device
from bench.store.measurements import MeasurementRecord, measured_cells, save_measurement

MS = 1000.0


@dataclass(frozen=True)
class Target:
    """A deployed cell to measure."""

    cell: CellRecord
    onnx_path: Path
    packed_size_bytes: int | None
    input_shape: tuple[int, ...]
    session_config: dict[str, str] = field(default_factory=dict)
    """The session config the cell was deployed (evaluated) with."""
    shipped: str = ""
    """The file's path within the cell's artifact folder, as its deploy record names it."""
    problem: str | None = None
    """Why the cell cannot be measured (its record names a file outside its folder): it is
    stored as a failed measurement, the others are measured."""
    inputs_path: Path | None = None
    """The cell's test inputs, where present (accuracy mode)."""
    reference_path: Path | None = None
    """The workstation's deployed predictions over those inputs."""

    def files(self) -> list[Path]:
        """The artifact files measuring uses: the model and any accuracy-mode inputs."""
        extra = [self.inputs_path, self.reference_path] if self.inputs_path else []
        return [self.onnx_path, *extra]

    @property
    def label(self) -> str:
        c = self.cell
        bits = "" if c.w_bits >= 32 else f"/W{c.w_bits}A{c.a_bits}"
        return f"{c.backbone}/{c.method}{bits}/seed{c.seed}"


def verify_artifacts(targets: list[Target], store: ResultsStore) -> None:
    """Refuse (UsageError) if any target's ONNX file differs from the SHA-256 its cell
    recorded when it was committed, before anything is timed."""
    bad = []
    for target in (t for t in targets if t.problem is None):
        for path in target.files():
            name = path.relative_to(store.artifact_dir(target.cell.cell_id)).as_posix()
            expected = (target.cell.artifact_hashes or {}).get(name)
            if expected is None:
                bad.append(f"{path}: its cell records no SHA-256 for it")
            elif file_sha256(path) != expected:
                bad.append(f"{path}: SHA-256 differs from the one its cell recorded")
    if bad:
        raise UsageError("refusing to measure modified or unverifiable artifacts (nothing was "
                         "timed):\n  " + "\n  ".join(bad))


@dataclass
class MeasureSummary:
    device: str
    machine: str
    batch_size: int
    measured: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)


def deployed_targets(store: ResultsStore, backbones: tuple[str, ...] = (),
                     methods: tuple[str, ...] = ()) -> list[Target]:
    """Successful cells with a deployed ONNX file (the one the deploy stage names as shipped),
    filtered by backbone and method names."""
    records = [r for r in store.records() if r.status == "ok"]
    for flag, names, attr in (("--backbone", backbones, "backbone"),
                              ("--method", methods, "method")):
        present = {getattr(r, attr) for r in records}
        unknown = sorted(set(names) - present)
        if unknown:
            raise UsageError(f"{flag} {', '.join(unknown)}: not in the store; it has "
                             f"{', '.join(sorted(present)) or 'no cells'}")
        if names:
            records = [r for r in records if getattr(r, attr) in names]
    targets = []
    for r in records:
        deploy = (r.metrics or {}).get(DEPLOY_STAGE)
        if not isinstance(deploy, dict) or "onnx_file" not in deploy:
            continue
        folder = store.artifact_dir(r.cell_id)
        name = deploy.get("shipped_file", deploy["onnx_file"])
        problem = _outside(folder, name)
        if problem is not None:
            targets.append(Target(r, folder, None, (), problem=problem))
            continue
        path = folder / name
        inputs = {k: folder / n for k, n in input_files(r).items()
                  if _outside(folder, n) is None}
        if len(inputs) != len(INPUT_KEYS) or not all(p.is_file() for p in inputs.values()):
            inputs = {}
        if path.is_file():
            targets.append(Target(r, path, deploy["columns"].get("packed_size_bytes"),
                                  tuple(deploy["input_shape"]),
                                  dict(deploy.get("session_config") or {}), name,
                                  inputs_path=inputs.get(INPUT_KEYS[0]),
                                  reference_path=inputs.get(INPUT_KEYS[1])))
    return targets


def _outside(folder: Path, name: object) -> str | None:
    """Why the deploy stage's file ``name`` is not a file inside the cell's ``folder`` (an
    absolute path, '..' or a link out), or None if it is."""
    if not isinstance(name, str) or not name:
        return f"its deploy record names no file ({name!r})"
    path = Path(name)
    if path.is_absolute() or ".." in path.parts:
        return f"its deploy record names {name}, which is outside the cell's folder"
    if not (folder / path).resolve().is_relative_to(folder.resolve()):
        return f"its deploy file {name} links outside the cell's folder"
    return None


def accuracy_inputs(target: Target, profile: Profile, accuracy: bool) -> tuple[Path | None,
                                                                               str]:
    """The test inputs to run ``target`` over, if any, and the accuracy mode in words."""
    if not accuracy:
        return None, "off (--no-accuracy)"
    if target.inputs_path is None:
        return None, "no test inputs"
    if profile.runtime == "torch":
        return None, "unsupported runtime"
    return target.inputs_path, "on"


def measured_session_config(target: Target, profile: Profile) -> dict[str, str]:
    """The cell's deployed session config with the profile's ``kernels`` resolved on this
    machine in place of its kernel entry (the deploying machine's CPU may differ); none for a
    runtime other than ONNX Runtime."""
    if profile.runtime != "onnxruntime":
        return {}
    return {**target.session_config, **session_config(profile.kernels)}


def _latency_columns(samples_s: list[float]) -> dict[str, float]:
    s = summarize([v * MS for v in samples_s], (50, 90, 99))
    return {"latency_ms_mean": s["mean"], "latency_ms_std": s["std"], "latency_cv": s["cv"],
            "latency_ms_min": s["min"], "latency_ms_p50": s["p50"], "latency_ms_p90": s["p90"],
            "latency_ms_p99": s["p99"]}


def _record(target: Target, profile: Profile, device: str, fingerprint: dict[str, Any],
            batch_size: int, started: datetime, result: Measurement | MeasurementError,
            mode: str = "no test inputs") -> MeasurementRecord:
    record = MeasurementRecord(
        cell_id=target.cell.cell_id, profile=profile.name, device=device,
        machine=fingerprint[HASH_KEY],
        batch_size=batch_size, isolation=profile.isolation,
        size_bytes=None if target.problem else target.onnx_path.stat().st_size,
        packed_size_bytes=target.packed_size_bytes,
        fingerprint=fingerprint, profile_config=profile.model_dump(mode="json"),
        started_at=started, finished_at=datetime.now(UTC))
    if isinstance(result, MeasurementError):
        record.status, record.error, record.samples_s = "failed", clip_text(str(result)), []
        record.details = {"memory": result.memory, "input_shape": list(target.input_shape)}
        return record
    record.status, record.samples_s = "ok", list(result.samples_s)
    record.load_time_s, record.peak_rss_mb = result.load_time_s, result.peak_rss_mb
    for name, value in _latency_columns(result.samples_s).items():
        setattr(record, name, value)
    details = result.to_dict()
    for key in ("samples_s", "profile", "isolation", "batch_size", "load_time_s",
                "peak_rss_mb", "logits"):
        details.pop(key)
    # The model's path within the store: an absolute one would carry this machine's user
    # names and folder layout to every store and server the record goes to.
    details["model_path"] = f"artifacts/{target.cell.cell_id}/{target.shipped}"
    details[MODE] = mode
    # emulated: the answers are real, the latency is the emulator's, not a device's.
    details["emulated"] = bool(fingerprint.get("emulated"))
    if result.logits is not None and target.inputs_path and target.reference_path:
        try:
            details.update(accuracy_details(result.logits, target.inputs_path,
                                            target.reference_path))
        except ValueError as err:
            record.status, record.error = "failed", f"accuracy mode: {err}"
    if profile.runtime == "onnxruntime":
        saturates = u8s8_saturates()
        # exact_kernels: the timed kernels compute what the deployed accuracy was evaluated with.
        details.update(kernel_policy=profile.kernels, u8s8_saturates=saturates,
                       exact_kernels=profile.kernels == "exact" or not saturates)
    record.details = details
    return record


def _progress(quiet: bool) -> Progress:
    console = Console(stderr=True)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console,
                    disable=quiet or not console.is_terminal)


def measure_store(store: ResultsStore, profile: Profile, *, backbones: tuple[str, ...] = (),
                  methods: tuple[str, ...] = (), batch_size: int | None = None,
                  device: str | None = None, quiet: bool = False,
                  accuracy: bool = True) -> MeasureSummary:
    """Measure the store's deployed cells not yet measured under this profile on this device
    (default: `local_device()`), after checking every ONNX file (and test-input file) against
    its recorded hash; with ``accuracy``, over the cells' test inputs too where present."""
    batch = batch_size if batch_size is not None else profile.batch_sizes[0]
    try:
        device = device or local_device()
    except ValueError as err:
        raise UsageError(str(err)) from err
    if not valid_device(device):
        raise UsageError(f"device name {device!r}: use 1-64 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    try:
        check_isolation(profile)
    except IsolationUnavailable as err:
        raise UsageError(str(err)) from err
    try:
        with store.exclusive("measure"), worker_guard(store.root / ".measure-worker.lock") \
                as hold_fd:
            return _measure_todo(store, profile, backbones, methods, batch, device, quiet,
                                 hold_fd, accuracy)
    except WorkerStillRunning as err:
        raise UsageError(str(err)) from err


def _measure_todo(store: ResultsStore, profile: Profile, backbones: tuple[str, ...],
                  methods: tuple[str, ...], batch: int, device: str,
                  quiet: bool, hold_fd: int, accuracy: bool = True) -> MeasureSummary:
    fingerprint = machine_fingerprint()
    summary = MeasureSummary(device, fingerprint[HASH_KEY], batch)
    targets = deployed_targets(store, backbones, methods)
    done = measured_cells(store.engine, profile.name, device, summary.machine, batch)
    todo = [t for t in targets if t.cell.cell_id not in done]
    verify_artifacts(todo, store)
    summary.skipped = [t.cell.cell_id for t in targets if t.cell.cell_id in done]
    with _progress(quiet) as progress:
        task = progress.add_task("measure", total=len(todo))
        for target in todo:
            progress.update(task, description=f"measure  {target.label}")
            started = datetime.now(UTC)
            inputs, mode = accuracy_inputs(target, profile, accuracy)
            try:
                if target.problem is not None:
                    raise MeasurementError(f"not measured: {target.problem}")
                result: Measurement | MeasurementError = measure_isolated(
                    target.onnx_path, profile, target.input_shape, batch, hold_fd=hold_fd,
                    session_config=measured_session_config(target, profile), inputs=inputs)
            except MeasurementError as err:
                result = err
            record = _record(target, profile, device, fingerprint, batch, started, result,
                             mode)
            save_measurement(store.engine, record)
            if record.status == "ok":
                summary.measured.append(target.cell.cell_id)
            else:
                summary.failed.append(target.cell.cell_id)
                summary.errors[target.cell.cell_id] = f"{target.label}: {record.error}"
            progress.advance(task)
    return summary
