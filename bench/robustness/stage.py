"""The `robustness` post-training stage: the cell's models on the test images under corruptions.

Every corruption at every severity of the settings is applied to the same test images for every
cell of a data set (bench.robustness.cache: made once, cached, hash-checked); the cell's torch
model (fake-quant for quantised cells) and, when the `deploy` stage ran before this one, its
deployed ONNX model are evaluated on them. Stored in the cell's folder: ``robustness.npz``
(per engine, per-image correctness, clean and (C, S, n) corrupted); in its record: accuracy per
corruption and severity, CE / mCE / relative mCE against the FP32 parent's stored correctness
(bench.robustness.metrics; an FP32 cell is its own reference: mCE 100), with bootstrap
intervals, and per corruption the clustered McNemar test against the parent, Holm within the
cell's corruptions; with `saliency_images`, saliency stability under corruption
(bench.robustness.saliency).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.data import cache_dir, normalize
from bench.robustness.cache import corrupted_images
from bench.robustness.metrics import corruption_errors, corruption_tests
from bench.robustness.saliency import saliency_stability
from bench.robustness.settings import RobustnessSettings
from bench.runner.stages import StageInput
from bench.train import predict
from methods.base import FP32

log = logging.getLogger(__name__)
RESULT_FILE = "robustness.npz"
ONNX_FILE = "model.onnx"     # bench.deploy.stage.ONNX_FILE (not imported: onnxruntime is heavy)


def evaluated_images(test: np.ndarray, cfg: RobustnessSettings) -> np.ndarray:
    """Sorted data-set indices of the images evaluated: the test split, or n_images of it drawn
    with the settings' seed."""
    test = np.asarray(test, dtype=np.int64)
    if cfg.n_images is None or cfg.n_images >= len(test):
        return np.sort(test)
    return np.sort(np.random.default_rng(cfg.seed).choice(test, cfg.n_images, replace=False))


def onnx_engine(path: Path, batch_size: int) -> Any:
    from bench.deploy.stage import deployed_session

    session = deployed_session(path)
    name = session.get_inputs()[0].name

    def run(images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(images)
        return np.concatenate([session.run(None, {name: normalize(x[i:i + batch_size]).numpy()})[0]
                               for i in range(0, len(x), batch_size)])
    return run


def engines(inp: StageInput, cfg: RobustnessSettings) -> dict[str, Any]:
    """The models evaluated, by name: "torch", and "onnx" when the deploy stage exported one."""
    device = torch.device(inp.torch_device)
    out = {"torch": lambda x: predict(inp.model, torch.from_numpy(x), device,
                                      cfg.batch_size).numpy()}
    if cfg.onnx and (inp.folder / ONNX_FILE).exists():
        out["onnx"] = onnx_engine(inp.folder / ONNX_FILE, cfg.batch_size)
    return out


def evaluate(run_fns: dict[str, Any], clean: np.ndarray, labels: np.ndarray,
             corrupted: dict[tuple[str, int], np.ndarray], cfg: RobustnessSettings
             ) -> dict[str, dict[str, np.ndarray]]:
    """Per engine: per-image correctness on the clean images (n,) and the corrupted ones
    (C, S, n)."""
    out = {}
    for name, fn in run_fns.items():
        grid = np.stack([np.stack([fn(corrupted[c, s]).argmax(1) == labels
                                   for s in cfg.severities]) for c in cfg.corruptions])
        out[name] = {"clean": fn(clean).argmax(1) == labels, "corrupted": grid}
    return out


def load_reference(folder: Path, index: np.ndarray, cfg: RobustnessSettings
                   ) -> tuple[dict[str, dict[str, np.ndarray]] | None, str | None]:
    """A stored robustness result in `folder` on the same images and corruptions, or why not."""
    path = folder / RESULT_FILE
    if not path.exists():
        return None, f"no {RESULT_FILE} in the reference cell"
    with np.load(path) as f:
        same = (np.array_equal(f["index"], index)
                and list(f["corruptions"]) == cfg.corruptions
                and list(f["severities"]) == cfg.severities)
        if not same:
            return None, "the reference cell evaluated other images or corruptions"
        engines_ = sorted({k.split("/")[0] for k in f.files if "/" in k})
        return {e: {"clean": f[f"{e}/clean"], "corrupted": f[f"{e}/corrupted"]}
                for e in engines_}, None


def save_result(folder: Path, index: np.ndarray, labels: np.ndarray, cfg: RobustnessSettings,
                correct: dict[str, dict[str, np.ndarray]]) -> None:
    arrays = {f"{e}/{k}": v for e, d in correct.items() for k, v in d.items()}
    np.savez_compressed(folder / RESULT_FILE, index=index, labels=labels,
                        corruptions=np.array(cfg.corruptions), severities=np.array(cfg.severities),
                        **arrays)


def summarise(correct: dict[str, dict[str, np.ndarray]],
              ref: dict[str, dict[str, np.ndarray]] | None, cfg: RobustnessSettings
              ) -> dict[str, Any]:
    """Accuracy, CE figures and tests per engine (against the reference's same engine)."""
    out: dict[str, Any] = {}
    for engine, d in correct.items():
        acc = d["corrupted"].mean(axis=2)
        entry: dict[str, Any] = {
            "clean_accuracy": float(d["clean"].mean()),
            "accuracy": {c: [float(a) for a in acc[i]] for i, c in enumerate(cfg.corruptions)},
            "mean_accuracy": {c: float(acc[i].mean()) for i, c in enumerate(cfg.corruptions)},
        }
        r = None if ref is None else ref.get(engine)
        if r is None:
            entry["mce"] = {"skipped": f"the reference has no {engine} result"}
        else:
            entry["mce"] = corruption_errors(d["corrupted"], d["clean"], r["corrupted"],
                                             r["clean"], cfg.corruptions, cfg.bootstrap, cfg.seed)
            entry["tests"] = corruption_tests(d["corrupted"], r["corrupted"], cfg.corruptions)
        out[engine] = entry
    return out


def columns(summary: dict[str, Any], cfg: RobustnessSettings, saliency: dict[str, Any]
            ) -> dict[str, float | None]:
    def mce(engine: str, key: str) -> float | None:
        return (summary.get(engine) or {}).get("mce", {}).get(key)

    cols: dict[str, float | None] = {
        "robustness_mce": mce("torch", "mce"),
        "robustness_relative_mce": mce("torch", "relative_mce"),
        "robustness_onnx_mce": mce("onnx", "mce"),
        "robustness_onnx_relative_mce": mce("onnx", "relative_mce"),
        "robustness_saliency_spearman": saliency.get("mean"),
    }
    for c in cfg.corruptions:
        cols[f"robustness_acc_{c}"] = summary["torch"]["mean_accuracy"][c]
    return cols


def robustness_stage(inp: StageInput) -> dict[str, Any]:
    """Accuracy and mCE of the cell's models under corruption; see the module docstring."""
    cfg: RobustnessSettings = inp.settings  # type: ignore[assignment]
    start = time.perf_counter()
    imgs, split = inp.data.images, inp.data.split
    index = evaluated_images(split.test, cfg)
    clean, labels = imgs.images[index].numpy(), imgs.labels[index].numpy()
    made = time.perf_counter()
    corrupted = {(c, s): corrupted_images(cache_dir(), clean, index, imgs.fingerprint,
                                          split.manifest_hash, c, s, cfg.seed)
                 for c in cfg.corruptions for s in cfg.severities}
    corrupt_seconds = time.perf_counter() - made
    correct = evaluate(engines(inp, cfg), clean, labels, corrupted, cfg)
    parent = inp.cell.config.parent_id
    if parent:
        record = inp.store.get(parent)
        if record is not None and RESULT_FILE in (record.artifact_hashes or {}):
            inp.store.checked_file(record, RESULT_FILE)   # a changed reference fails the cell
        ref, skipped = load_reference(inp.store.artifact_dir(parent), index, cfg)
        reference = {"cell_id": parent, "relation": "parent", "skipped": skipped}
    elif not inp.quantized and inp.cell.config.method == FP32:
        ref, reference = correct, {"cell_id": inp.cell.cell_id, "relation": "self",
                                   "skipped": None}
    else:
        ref, reference = None, {"cell_id": None, "relation": None,
                                "skipped": "no FP32 parent to compare with"}
    save_result(inp.folder, index, labels, cfg, correct)
    summary = summarise(correct, ref, cfg)
    saliency = saliency_stability(inp, cfg)
    seconds = time.perf_counter() - start
    log.info("robustness of %s: %d images, %d corruptions x %d severities, %.2fs",
             inp.cell.label, len(index), len(cfg.corruptions), len(cfg.severities), seconds)
    return {
        "images": len(index),
        "corruptions": cfg.corruptions,
        "severities": cfg.severities,
        "engines": list(correct),
        "reference": reference,
        "results": summary,
        "saliency": saliency,
        "file": RESULT_FILE,
        "corrupt_seconds": corrupt_seconds,
        "seconds": seconds,
        "columns": columns(summary, cfg, saliency),
    }
