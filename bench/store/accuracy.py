"""A measurement's accuracy-mode fields: what a device computed over the cell's test inputs.

`bench measure` stores them in the measurement's ``details`` (a JSON column, so no migration):
``device_accuracy`` (top-1 accuracy on the test split), ``device_agreement`` (share of test
images whose top-1 equals the workstation's deployed prediction), ``device_max_logit_diff``
(largest absolute difference from the workstation's deployed logits), ``accuracy_images`` and
``predictions`` (the device's top-1 per test image, in the order of the inputs' ``index``).
``accuracy_mode`` says whether it ran (``on``) or why not. Records carrying these fields from
elsewhere (bundles, uploads) are checked against `check_accuracy_details`' bounds.
"""

from __future__ import annotations

import math
from typing import Any

ACCURACY_COLUMNS = ("device_accuracy", "device_agreement", "device_max_logit_diff",
                    "accuracy_images")
"""The accuracy-mode result columns of a measurement (`bench results`, `bench compare`)."""
PREDICTIONS = "predictions"
MODE = "accuracy_mode"
MODES = ("on", "off (--no-accuracy)", "no test inputs", "unsupported runtime")
MAX_IMAGES = 10_000_000
MAX_CLASS = 1_000_000


def accuracy_columns(details: dict[str, Any] | None) -> dict[str, Any]:
    """The accuracy-mode columns of a measurement's details (None where it has none)."""
    details = details or {}
    return {c: details.get(c) for c in ACCURACY_COLUMNS}


def _share(value: Any, name: str) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) \
            or not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"details.{name} must be a number in [0, 1]")


def check_accuracy_details(details: dict[str, Any]) -> None:
    """ValueError naming the field if the accuracy-mode fields of ``details`` are out of
    bounds: shares in [0, 1], a finite non-negative logit difference, an image count in
    [1, MAX_IMAGES] that the predictions (class indices in [0, MAX_CLASS)) match. Mode ``on``
    requires every result field."""
    mode = details.get(MODE)
    if mode is not None and mode not in MODES:
        raise ValueError(f"details.{MODE} must be one of {', '.join(MODES)}")
    present = [c for c in (*ACCURACY_COLUMNS, PREDICTIONS) if details.get(c) is not None]
    if not present and mode != "on":
        return
    if len(present) != len(ACCURACY_COLUMNS) + 1:
        raise ValueError("details: the accuracy-mode fields come all together: "
                         f"{', '.join((*ACCURACY_COLUMNS, PREDICTIONS))}")
    _share(details["device_accuracy"], "device_accuracy")
    _share(details["device_agreement"], "device_agreement")
    diff = details["device_max_logit_diff"]
    if not isinstance(diff, int | float) or isinstance(diff, bool) or not math.isfinite(diff) \
            or diff < 0:
        raise ValueError("details.device_max_logit_diff must be a finite number >= 0")
    n = details["accuracy_images"]
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_IMAGES:
        raise ValueError(f"details.accuracy_images must be an integer in [1, {MAX_IMAGES}]")
    predictions = details[PREDICTIONS]
    if not isinstance(predictions, list) or len(predictions) != n:
        raise ValueError("details.predictions must list one class per test image "
                         "(accuracy_images)")
    if not all(isinstance(p, int) and not isinstance(p, bool) and 0 <= p < MAX_CLASS
               for p in predictions):
        raise ValueError(f"details.predictions must be class indices in [0, {MAX_CLASS})")
