"""The `saliency` post-training stage: maps and stability statistics of one cell's model.

Every cell of a data set is evaluated on the same images: `n_samples` drawn from the test split
with the settings' `seed` (never the cell's). Maps attribute the true class, on the model the
cell produced (the Brevitas fake-quant model for quantised cells). Stored in the cell's folder:
`saliency_maps.npz` (see bench.saliency.mapfile) and `saliency_overlays/*.png`; stored in its
record: per-method mean, std and per-sample values of every metric, and the `saliency_*`
columns (see bench.saliency.columns). Quantisation stability is measured against the stored
maps of the FP32 reference cell (see bench.saliency.reference); beside it, for quantised cells,
the same statistics of the null control (bench.saliency.null). Every cell, quantised ones too
(on their fake-quant model), gets the model-parameter-randomisation sanity check of every
saliency method (bench.saliency.sanity), so each configuration reports its own verdict.

The stage runs on the cell's torch device (`StageInput.torch_device`: CUDA when the cell trained
there; stored as the result's `device` key): the model stays where the cell left it, the images
are moved there once, and only maps and probabilities come back as CPU arrays for the statistics.
Metrics computed on a subset of the images (max-sensitivity under `sensitivity_images`, the
sanity check) name theirs in the record's `subsets`.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.config import FP32_BITS
from bench.data import normalize
from bench.runner.stages import StageInput
from bench.saliency.columns import json_float, method_stats, result_columns
from bench.saliency.mapfile import MAPS_FILE, StoredMaps, save_maps
from bench.saliency.null import NullControl, null_control, null_graph
from bench.saliency.overlay import save_overlay_png
from bench.saliency.reference import Reference, find_reference
from bench.saliency.sanity import randomisation_check
from bench.saliency.settings import detail_positions
from bench.saliency.suite import SaliencyConfig, maps_for, stability_suite, subsets

log = logging.getLogger(__name__)
OVERLAY_DIR = "saliency_overlays"


def evaluation_subset(test: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted data-set indices of min(n, len(test)) test images drawn without replacement."""
    pick = np.random.default_rng(seed).choice(len(test), size=min(n, len(test)), replace=False)
    return np.sort(np.asarray(test)[pick])


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to n for the block (None: left as it is)."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n is not None:
            torch.set_num_threads(before)


def on_torch_device(model: nn.Module, torch_device: torch.device) -> nn.Module:
    """The model itself when its parameters are on `torch_device`, else a copy moved there (the
    cell's model is left as it is)."""
    if all(p.device == torch_device for p in model.parameters()):
        return model
    return copy.deepcopy(model).to(torch_device)


def _cell_title(config: Any) -> str:
    bits = "" if config.w_bits == FP32_BITS else f" W{config.w_bits}A{config.a_bits}"
    return f"{config.method}{bits}"


def write_overlays(folder: Path, images: torch.Tensor, index: np.ndarray, method: str,
                   maps: np.ndarray, ref: Reference, title: str, count: int) -> list[str]:
    """Input | FP32 reference map | this cell's map for the first `count` images."""
    paths = []
    ref_maps = ref.maps.get(method)
    for i in range(min(count, len(index))):
        rel = f"{OVERLAY_DIR}/{method}-{int(index[i]):05d}.png"
        save_overlay_png(images[i], None if ref_maps is None else ref_maps[i], maps[i],
                         folder / rel, titles=("FP32", f"{title} {method}"))
        paths.append(rel)
    return paths


def run_null_control(inp: StageInput, cfg: SaliencyConfig, ref: Reference, images: torch.Tensor,
                     targets: torch.Tensor, torch_device: torch.device) -> NullControl:
    """The null control of a quantised cell (see bench.saliency.null), or why there is none."""
    if not inp.quantized:
        return NullControl(skipped="float cell: no quantisation to disable")
    if ref.relation != "parent" or not ref.maps:
        return NullControl(skipped=ref.skipped or "no FP32 parent maps to compare with")
    from bench.runner.cell import load_fp32_model
    from methods import get_method

    config, split = inp.cell.config, inp.data.split
    method = get_method(config.method)
    parent = load_fp32_model(inp.store, inp.cell, inp.data.num_classes).to(torch_device)
    example = normalize(inp.data.images.images[split.train[:2]]).to(torch_device)
    graph = null_graph(method, parent, config.w_bits, config.a_bits,
                       method.parse_params(config.params), example)
    return null_control(graph, images, targets, ref.maps, cfg, built_from=ref.cell_id or "")


def run_sanity_check(inp: StageInput, cfg: SaliencyConfig, model: nn.Module,
                     images: torch.Tensor, targets: torch.Tensor, index: np.ndarray,
                     maps: dict[str, np.ndarray]) -> dict[str, Any]:
    """The cascading-randomisation check of the cell's own model (FP32, float control or
    fake-quant: a quantised cell's maps are its straight-through-gradient maps, its layers are
    the Brevitas ones, randomised through their trained quantisers) on the first
    `sanity_images` images of the evaluated images' seeded permutation (`detail_positions`)."""
    if cfg.sanity_images == 0:
        return {"skipped": "sanity_images is 0"}
    k = min(cfg.sanity_images, len(index))
    ids = np.sort(np.asarray(detail_positions(len(index), cfg.seed)[:k], dtype=np.int64))
    rows = torch.from_numpy(ids).to(images.device)

    def explain(m: nn.Module, method: str, x: torch.Tensor, t: torch.Tensor) -> np.ndarray:
        return maps_for(m, method, cfg)(x, t, ids)

    result = randomisation_check(model, cfg.methods, images[rows], targets[rows],
                                 {m: v[ids] for m, v in maps.items()}, explain,
                                 checkpoints=cfg.sanity_checkpoints,
                                 threshold=cfg.sanity_threshold, seed=cfg.seed)
    return result.describe(index[ids].tolist())


def saliency_stage(inp: StageInput) -> dict[str, Any]:
    """Maps, overlays and stability statistics of the cell's model; see the module docstring."""
    cfg: SaliencyConfig = inp.settings  # type: ignore[assignment]
    start = time.perf_counter()
    imgs = inp.data.images
    index = evaluation_subset(inp.data.split.test, cfg.n_samples, cfg.seed)
    raw, labels = imgs.images[index], imgs.labels[index]
    masks = None if imgs.masks is None else imgs.masks[index].numpy()
    ref = find_reference(inp.store, inp.cell.config, index)
    torch_device = torch.device(inp.torch_device)
    model = on_torch_device(inp.model, torch_device)
    images = normalize(raw.to(torch_device))
    targets = labels.to(torch_device)
    with torch_threads(cfg.threads):
        results = stability_suite(model, None, images, targets, masks, cfg,
                                  reference_maps=ref.maps)
        maps = {m: r["maps"] for m, r in results.items()}
        null = run_null_control(inp, cfg, ref, images, targets, torch_device).describe()
        sanity = run_sanity_check(inp, cfg, model, images, targets, index, maps)
    save_maps(inp.folder, StoredMaps(index, labels.numpy(), maps))
    primary = cfg.methods[0]
    overlays = write_overlays(inp.folder, raw, index, primary, maps[primary], ref,
                              _cell_title(inp.cell.config), cfg.overlays)
    stats = method_stats(results)
    seconds = time.perf_counter() - start
    log.info("saliency of %s: %d images, %s, %.2fs", inp.cell.label, len(index),
             ", ".join(cfg.methods), seconds)
    return {
        "attributed_on": "fake-quant" if inp.quantized else "float",
        "target": "label",
        "methods": cfg.methods,
        "primary": primary,
        "device": str(torch_device),
        "images": index.tolist(),
        "subsets": subsets(cfg, index),
        "reference": ref.describe(),
        "localisation": ({"skipped": "the data set has no masks"} if masks is None else
                         {"mask_fraction": json_float(masks.mean())}),
        "stats": stats,
        "null": null,
        "sanity": sanity,
        "maps_file": MAPS_FILE,
        "overlays": overlays,
        "seconds": seconds,
        "columns": result_columns(stats, cfg.methods, null, sanity),
    }
