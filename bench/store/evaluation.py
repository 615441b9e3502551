"""The probability metrics of a cell (bench.metrics) as result columns.

``ece``, ``brier`` and ``auroc_macro`` are the deployed (ONNX Runtime) model's, from its deploy
stage's columns, or the torch model's (fake quantisation for quantised cells) where the cell has
no deploy stage; ``probability_source`` says which. ``torch_ece``, ``torch_brier`` and
``torch_auroc_macro`` are always the torch model's, in the record's ``metrics[EVALUATION]``.
"""

from __future__ import annotations

EVALUATION = "evaluation"
"""The key of the torch model's probability metrics in a cell's `metrics`."""
PROBABILITY_COLUMNS = ("ece", "brier", "auroc_macro")
TORCH_PROBABILITY_COLUMNS = ("torch_ece", "torch_brier", "torch_auroc_macro")
PROBABILITY_SOURCE = "probability_source"
EVALUATION_COLUMNS = (*PROBABILITY_COLUMNS, PROBABILITY_SOURCE, *TORCH_PROBABILITY_COLUMNS)
"""Every probability column a record may carry (None in records stored before them)."""
