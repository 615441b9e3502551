"""What a device needs of a cell: the files its deploy stage recorded."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.store.records import CellData

DEPLOY_STAGE = "deploy"
"""The key of the deploy stage's entry in a cell's `metrics`."""

DEPLOY_COLUMNS = ("size_bytes", "shipped_size_bytes", "packed_size_bytes", "int_kernels",
                  "int_coverage", "deployed_accuracy", "agreement", "params", "macs",
                  "deploy_flags", "deployed_macro_f1", "ece", "brier", "auroc_macro",
                  "int_coverage_macs")
"""The result columns of the deploy stage (bench/deploy/stage.py), the one list of them:
the store fills them with None for cells it did not run on, the report reads them."""
DEPLOY_TEXT_COLUMNS = frozenset({"deploy_flags"})
"""The deploy columns that are not numbers."""


INPUT_KEYS = ("test_inputs_file", "deployed_predictions")
"""The deploy stage's entries naming a device's accuracy-mode inputs: the test images (of
patients, on real data) and the workstation's deployed logits they are compared with."""


def deploy_files(cell: CellData, inputs: bool = True) -> list[str]:
    """The artifact files a device needs to measure the cell: every `*_file` its deploy stage
    recorded (the ONNX model, a packed weight file, the test inputs) and the deployed
    predictions, that the cell lists; ``inputs=False`` leaves out the accuracy-mode inputs
    (`INPUT_KEYS`), for a device that only times."""
    deploy = cell.metrics.get(DEPLOY_STAGE)
    if not isinstance(deploy, dict):
        return []
    names = {v for k, v in deploy.items() if k.endswith("_file") and isinstance(v, str)
             and k not in INPUT_KEYS}
    if inputs:
        names |= {deploy[k] for k in INPUT_KEYS if isinstance(deploy.get(k), str)}
    return sorted(names & cell.artifact_hashes.keys())


FILE_SIZES = {"onnx_file": "size_bytes", "shipped_file": "shipped_size_bytes",
              "packed_file": "packed_size_bytes"}
"""The deploy stage's file keys and the column holding each file's size on disk (the packed
size is the packed file's size when the stage wrote one)."""


def recorded_sizes(cell: CellData) -> dict[str, int]:
    """The size in bytes the cell's deploy stage recorded for each of its deploy files."""
    deploy = cell.metrics.get(DEPLOY_STAGE)
    if not isinstance(deploy, dict) or not isinstance(deploy.get("columns"), dict):
        return {}
    sizes: dict[str, int] = {}
    for key, column in FILE_SIZES.items():
        name, size = deploy.get(key), deploy["columns"].get(column)
        if key == "packed_file" and deploy.get("packed_size_source") != "packed file":
            continue
        if isinstance(name, str) and isinstance(size, int) and not isinstance(size, bool) \
                and size >= 0:
            sizes[name] = min(size, sizes.get(name, size))
    return sizes


def input_files(cell: CellData) -> dict[str, str]:
    """The cell's accuracy-mode input files by `INPUT_KEYS` entry, where it lists both."""
    deploy = cell.metrics.get(DEPLOY_STAGE)
    if not isinstance(deploy, dict):
        return {}
    found = {k: deploy[k] for k in INPUT_KEYS if isinstance(deploy.get(k), str)
             and deploy[k] in (cell.artifact_hashes or {})}
    return found if len(found) == len(INPUT_KEYS) else {}
