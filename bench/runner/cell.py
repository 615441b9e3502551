"""One cell, worker side: train or quantise with its method, evaluate on the test split, run its
stages (`compute_cell`); the driver stores it (bench/runner/outcome.py `commit_cell`)."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.checkpoints import WEIGHTS, save_model
from bench.data import PreparedData, batches, normalize
from bench.errors import disk_full
from bench.metrics import DEFINITIONS, classification_metrics, probability_metrics
from bench.models import build_model
from bench.objectives import Objective
from bench.runner.outcome import CellOutcome, describe_error, mark_failed, new_record
from bench.runner.plan import Cell
from bench.runner.stages import STAGES, StageInput, load_stages
from bench.store import ResultsStore
from bench.store.evaluation import EVALUATION, PROBABILITY_COLUMNS, PROBABILITY_SOURCE
from bench.train import EpochHook, fit, predict
from methods import MethodContext, get_method


class ParentMissingError(RuntimeError):
    """The FP32 parent of a cell has no successful record."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_fp32_model(store: ResultsStore, cell: Cell, num_classes: int) -> nn.Module:
    """The FP32 parent's trained model, read only from a committed (status ok) record and only
    once its weights file has the SHA-256 the record states (ArtifactMismatchError naming the
    file otherwise; the driver recomputes such a parent before its children, see
    executors/driver.py, so this fails only if the file changes during the run)."""
    parent_id = cell.config.parent_id
    record = store.get(parent_id) if parent_id else None
    if record is None or record.status != "ok":
        raise ParentMissingError(f"FP32 parent {parent_id} of {cell.label} has not succeeded")
    model = build_model(cell.config.backbone, num_classes)
    state = torch.load(store.checked_file(record, WEIGHTS), weights_only=True)
    model.load_state_dict(state)
    return model


def _context(cell: Cell, data: PreparedData, store: ResultsStore, torch_device: torch.device,
             on_epoch: EpochHook | None) -> MethodContext:
    cfg, split, imgs = cell.config, data.split, data.images

    def train(model: nn.Module, objective: Objective,
              penalty: Callable[[nn.Module], torch.Tensor] | None) -> dict[str, Any]:
        return fit(model, imgs.images[split.train], imgs.labels[split.train], cfg.train, objective,
                   seed=cfg.seed, torch_device=torch_device, penalty=penalty,
                   val=(imgs.images[split.val], imgs.labels[split.val]), on_epoch=on_epoch)

    def calibration() -> Iterator[torch.Tensor]:
        generator = torch.Generator().manual_seed(cfg.seed)
        stream = batches(imgs.images[split.train], imgs.labels[split.train],
                         cfg.train.batch_size, generator)
        for _, (x, _y) in zip(range(cfg.calibration_batches), stream, strict=False):
            yield x.to(torch_device)

    def build() -> nn.Module:
        return build_model(cfg.backbone, data.num_classes)

    example = normalize(imgs.images[split.train[:2]]).to(torch_device)
    return MethodContext(
        w_bits=cfg.w_bits, a_bits=cfg.a_bits, build_backbone=build,
        load_parent=(lambda: load_fp32_model(store, cell, data.num_classes).to(torch_device))
        if cfg.parent_id else None,
        fit=train, calibration_batches=calibration, example_input=example)


def _write_artifacts(folder: Path, result_model: nn.Module, data: PreparedData,
                     logits: torch.Tensor, summary: dict[str, Any]) -> None:
    save_model(result_model, folder)
    test = data.split.test
    np.savez_compressed(folder / "predictions.npz", index=test,
                        labels=data.images.labels[test].numpy(), logits=logits.numpy(),
                        predictions=logits.argmax(1).numpy())
    (folder / "split.json").write_text(json.dumps(data.split.manifest))
    (folder / "metrics.json").write_text(json.dumps(summary, indent=1, default=str))


def evaluation(labels: np.ndarray, logits: torch.Tensor, stages: dict[str, Any]
               ) -> dict[str, Any]:
    """The torch model's probability metrics (``torch_*`` columns) and, where no stage reported
    the deployed model's (the deploy stage's ``ece``, ``brier``, ``auroc_macro``), the torch
    model's as those columns too; ``probability_source`` says whose they are."""
    own = probability_metrics(labels, logits.numpy())
    columns: dict[str, Any] = {f"torch_{k}": v for k, v in own.items()}
    deployed = any(isinstance(r, dict) and set(PROBABILITY_COLUMNS) <= set(r.get("columns") or {})
                   for r in stages.values())
    if not deployed:
        columns.update(own)
    columns[PROBABILITY_SOURCE] = "deployed" if deployed else "torch"
    return {"definitions": DEFINITIONS, "columns": columns}


def run_stages(cell: Cell, data: PreparedData, model: nn.Module, quantized: bool,
               logits: torch.Tensor, folder: Path, store: ResultsStore, torch_device: torch.device
               ) -> dict[str, Any]:
    """Run the cell's post-training stages in the order the grid lists them."""
    load_stages()
    results = {}
    for name, settings in cell.config.stages.items():
        stage = STAGES[name]
        results[name] = stage.run(StageInput(
            cell, data, model.eval(), quantized, logits, folder, store, torch_device,
            stage.Settings.model_validate(settings)))
    return results


def compute_cell(cell: Cell, data: PreparedData, store: ResultsStore, grid_name: str,
                 torch_device: torch.device, on_epoch: EpochHook | None = None,
                 provenance_extra: dict[str, Any] | None = None) -> CellOutcome:
    """Worker side: train and evaluate one cell into a staging folder; never writes the store.

    A failure is returned as a failed record, not raised; the store is only read (the FP32
    parent's model, stage references).
    """
    cfg = cell.config
    record = new_record(cell, grid_name, torch_device, provenance_extra)
    try:
        with store.staging(cell.cell_id) as staged:
            seed_everything(cfg.seed)
            method = get_method(cfg.method)
            ctx = _context(cell, data, store, torch_device, on_epoch)
            start = time.perf_counter()
            result = method.run(ctx, method.parse_params(cfg.params))
            train_seconds = time.perf_counter() - start
            logits = predict(result.model, data.images.images[data.split.test], torch_device)
            metrics = classification_metrics(data.images.labels[data.split.test].numpy(),
                                             logits.argmax(1).numpy(), data.num_classes)
            metrics.update(classes=data.images.classes, **result.extras)
            stages = run_stages(cell, data, result.model, result.quantized, logits, staged,
                                store, torch_device)
            metrics.update(stages)
            metrics[EVALUATION] = evaluation(data.images.labels[data.split.test].numpy(),
                                             logits, stages)
            record.status, record.accuracy, record.macro_f1 = "ok", metrics["accuracy"], \
                metrics["macro_f1"]
            record.train_seconds, record.metrics = train_seconds, metrics
            record.finished_at = datetime.now(UTC)
            _write_artifacts(staged, result.model, data, logits, metrics)
        return CellOutcome(record, staged)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as err:  # a failed cell is a result: return it and go on
        return CellOutcome(mark_failed(record, describe_error(err)),
                           disk_full=disk_full(err) is not None)
