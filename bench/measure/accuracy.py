"""Accuracy mode: compare a device's logits over a cell's test inputs with the workstation's.

numpy only (a device's light install has no torch). The workstation's side is the deploy
stage's ``deployed_predictions.npz`` (ONNX Runtime logits on the deploying machine) and the
labels of ``test_inputs.npz``; their ``index`` arrays must match, so both describe the same
images in the same order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bench.store.accuracy import MODE, PREDICTIONS


def _arrays(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        missing = [k for k in keys if k not in data.files]
        if missing:
            raise ValueError(f"{path.name} lacks {', '.join(missing)}")
        return {k: data[k] for k in keys}


def accuracy_details(logits: list[list[float]], inputs: Path, reference: Path
                     ) -> dict[str, Any]:
    """The accuracy-mode fields (bench.store.accuracy) of ``logits``, the device's outputs over
    the test inputs in ``inputs``, against the deployed logits in ``reference``."""
    mine = np.asarray(logits, dtype=np.float32)
    given = _arrays(inputs, ("labels", "index"))
    ref = _arrays(reference, ("logits", "index"))
    if not np.array_equal(given["index"], ref["index"]):
        raise ValueError(f"{inputs.name} and {reference.name} list different test images")
    if mine.ndim != 2 or mine.shape != ref["logits"].shape:
        raise ValueError(f"the device's logits have shape {mine.shape}, the deployed ones "
                         f"{ref['logits'].shape}")
    if not np.isfinite(mine).all():
        raise ValueError("the device's logits are not all finite (NaN or infinity)")
    top1 = mine.argmax(axis=1)
    labels = given["labels"]
    if labels.shape != top1.shape or len(given["index"]) != len(top1):
        raise ValueError(f"{inputs.name} lists {labels.shape} labels and {len(given['index'])} "
                         f"indices for {len(top1)} images")
    return {MODE: "on",
            "device_accuracy": float((top1 == labels).mean()),
            "device_agreement": float((top1 == ref["logits"].argmax(axis=1)).mean()),
            "device_max_logit_diff": float(np.abs(mine - ref["logits"]).max()),
            "accuracy_images": len(top1),
            PREDICTIONS: [int(p) for p in top1]}
