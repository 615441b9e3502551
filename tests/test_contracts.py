"""Contracts over everything registered (as benchopt's tests/test_benchmarks.py and timm's
tests/test_models.py parametrise over their registries): a method, backbone, stage or hardware
profile that is registered, built in or from a plugin, is tested here without anyone writing a
test for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from bench.deploy.export import export_fp32, export_quantized
from bench.deploy.kernels import graph_coverage
from bench.deploy.stage import deployed_session
from bench.measure.profiles import PROFILES, load_profile
from bench.models import BACKBONES
from bench.runner import RunOptions, plan_grid, run_grid
from bench.runner.stages import STAGES
from bench.store import ResultsStore
from bench.store.records import CellData
from methods import METHODS
from tests.backbones import backbone_with_data_statistics, quantised_backbone
from tests.conftest import tiny_grid_dict

TINY_STAGE_SETTINGS: dict[str, dict[str, Any]] = {
    "saliency": {"methods": ["gradient", "gradcam"], "n_samples": 4, "sensitivity_samples": 1,
                 "deletion_steps": 2, "sanity_images": 2, "sanity_checkpoints": 1,
                 "overlays": 1, "threads": 1},
    "robustness": {"corruptions": ["contrast", "specular_glare"], "severities": [2],
                   "bootstrap": 20},
}
"""Cheap settings of the stages that have costly defaults; any other stage runs with its
defaults."""
QUANT_BITS = [[4, 4]]


def method_entry(name: str) -> dict[str, Any]:
    return {"name": name, "bits": QUANT_BITS} if METHODS[name].quantized else {"name": name}


@pytest.fixture(scope="module")
def every_method_and_stage(tmp_path_factory: pytest.TempPathFactory) -> ResultsStore:
    """One seed of every registered method, with every registered stage, on the tiny grid."""
    root = tmp_path_factory.mktemp("contracts")
    grid = root / "grid.yaml"
    stages = {name: TINY_STAGE_SETTINGS.get(name, {}) for name in STAGES.names()}
    grid.write_text(yaml.safe_dump(tiny_grid_dict(
        methods=[method_entry(name) for name in METHODS.names()], seeds=1, stages=stages)))
    store = ResultsStore(root / "store")
    options = RunOptions(grid=str(grid), store=store.root, torch_device="cpu", quiet=True)
    summary = run_grid(plan_grid(options), store, options)
    assert not summary.failed, summary
    return store


def records_of(store: ResultsStore, method: str) -> list[CellData]:
    return [CellData.of(r) for r in store.records() if r.method == method]


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_runs_a_tiny_cell_and_stores_a_valid_record(every_method_and_stage, method):
    records = records_of(every_method_and_stage, method)
    expected = len(QUANT_BITS) if METHODS[method].quantized else 1
    assert len(records) == expected
    for record in records:
        again = CellData.model_validate(record.model_dump(mode="json"))
        assert again.content_hash() == record.content_hash()
        assert record.status == "ok", record.error
        assert 0.0 <= record.accuracy <= 1.0 and 0.0 <= record.macro_f1 <= 1.0
        bits = (record.w_bits, record.a_bits)
        assert (bits != (32, 32)) == METHODS[method].quantized, bits
        for stage in STAGES.names():
            assert stage in record.metrics, f"stage '{stage}' did not run on {method}"


@pytest.mark.parametrize("stage", STAGES.names())
def test_every_stage_returns_its_declared_columns(every_method_and_stage, stage):
    declaration = STAGES[stage]
    settings = declaration.Settings.model_validate(TINY_STAGE_SETTINGS.get(stage, {}))
    declared = declaration.declared_columns(settings)
    assert declared, f"stage '{stage}' declares no columns"
    for record in every_method_and_stage.records():
        returned = record.metrics[stage].get("columns", {})
        assert sorted(returned) == sorted(declared), (stage, record.method)


NO_INTEGER_KERNEL = {"mobilenet_v3_small": {"HardSigmoid", "Mul"}}
"""Backbones with ops ONNX Runtime (1.32) has no integer kernel for: Hardswish exports as
HardSigmoid and Mul, and the squeeze-excitation gate is a Hardsigmoid."""


def _deployed_logits(path: Path, x: torch.Tensor) -> np.ndarray:
    session = deployed_session(path)
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("backbone", BACKBONES.names())
def test_every_backbone_builds_and_deploys_at_32px(backbone, tmp_path):
    """FP32 export gives the torch logits under ONNX Runtime; the W8A8 export runs every compute
    node as an integer kernel (but the ops of ``NO_INTEGER_KERNEL``) and gives the fake-quantised
    model's logits on most images, to within a fraction of the logits' range (random weights give
    EfficientNet-B0 logits in the hundreds). Not on every image: torch's own fake-quantised logits
    of an image change with the batch it is in (the convolution algorithm moves values across
    rounding boundaries; ResNet-18 by up to 8% of the range on other inputs), and on a random
    EfficientNet-B0 one image in eight differs by 23% of the range. These are the inputs of
    tests/test_integer_deploy.py, which checks exactness on chosen backbones."""
    x, example = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(4)), \
        torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model = backbone_with_data_statistics(backbone, 32)
    fp32 = export_fp32(model, example, tmp_path / "fp32.onnx")
    with torch.no_grad():
        reference = model(x).numpy()
    assert np.abs(_deployed_logits(fp32, x) - reference).max() <= 1e-3 * np.abs(reference).max()

    qmodel = quantised_backbone(backbone, 32, 8, 8)
    quantised = export_quantized(qmodel, example, tmp_path / "w8a8.onnx")
    coverage = graph_coverage(quantised)
    assert coverage.integer or set(coverage.float_nodes) == NO_INTEGER_KERNEL.get(backbone), \
        coverage.float_nodes
    with torch.no_grad():
        fake_quant = qmodel(x).numpy()
    deployed = _deployed_logits(quantised, x)
    assert deployed.shape == fake_quant.shape
    error = (np.abs(deployed - fake_quant) / np.abs(fake_quant).max()).max(axis=1)
    assert np.median(error) <= 0.01 and np.isfinite(deployed).all(), (backbone, error)


@pytest.mark.parametrize("name", PROFILES.names())
def test_every_registered_profile_validates(name):
    profile = load_profile(name)
    assert profile.name == name and profile.description.strip()
    assert profile.limits_text()
