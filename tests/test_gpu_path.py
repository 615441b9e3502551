"""The GPU path on a machine without one: what CUDA changes is covered where the CPU can cover it
(a CUDA request without CUDA is refused up front, tensors follow the model's device, stages take
a model that is not on the CPU), and scripts/gpu_check.py's comparison is checked on its own.
The CUDA half itself runs in scripts/gpu_check.sh, on a machine with an NVIDIA GPU."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Iterator
from types import ModuleType

import pytest
import torch
from torch import nn

from bench.data import normalize
from bench.deploy.stage import _cpu_model
from bench.saliency.stage import on_torch_device
from tests.device_venv import ROOT


def load_gpu_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


gpu_check = load_gpu_check()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_cuda_run_without_cuda_is_refused_before_anything_is_written(cli, write_grid,
                                                                        tmp_path):
    store = tmp_path / "s"
    result = cli("run", "--grid", write_grid(seeds=1), "--store", store, "--device", "cuda",
                 "--quiet")
    assert result.exit_code == 2, result.output
    assert "--device cuda: this machine has no CUDA device" in result.output
    assert not store.exists()


def test_normalize_keeps_the_images_device():
    images = torch.zeros(2, 3, 4, 4, dtype=torch.uint8, device="meta")
    assert normalize(images).device.type == "meta"
    cpu = normalize(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8))
    expected = (1.0 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(cpu[0, :, 0, 0], expected)


@contextlib.contextmanager
def parameters_report(device: str) -> Iterator[None]:
    """Every nn.Parameter claims to be on ``device`` (the data stays on the CPU): what a stage
    sees of a model trained on CUDA, on a machine without CUDA."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(nn.Parameter, "device", property(lambda self: torch.device(device)),
                   raising=False)
        yield


def _saliency_to_cpu(model: nn.Module) -> nn.Module:
    return on_torch_device(model, torch.device("cpu"))


@pytest.mark.parametrize("to_cpu", [_cpu_model, _saliency_to_cpu], ids=["deploy", "saliency"])
def test_stages_work_on_a_cpu_copy_of_a_model_on_another_device(to_cpu):
    """Deploy exports a CPU copy; the saliency stage runs on the cell's torch device
    (StageInput.torch_device) and copies a model that is elsewhere (here: asked for the CPU)."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    assert to_cpu(model) is model                   # on the CPU already: no copy
    with parameters_report("cuda"):
        copy = to_cpu(model)
    assert copy is not model
    for own, copied in zip(model.parameters(), copy.parameters(), strict=True):
        assert copied.data_ptr() != own.data_ptr() and torch.equal(copied, own)


def cell(cell_id: str = "c1", method: str = "ptq", torch_device: str = "cuda",
         accuracy: float = 0.95, **changes) -> object:
    saliency = {"stats": {"gradient": {"deletion_auc": {"mean": 0.3},
                                       "spearman_fp32": {"mean": 0.9}}},
                "reference": {"cell_id": "p", "relation": "parent", "skipped": None},
                "device": torch_device}
    fields = dict(cell_id=cell_id, label=f"resnet18/{method}/seed 0", method=method,
                  status="ok", torch_device=torch_device, accuracy=accuracy,
                  deployed_accuracy=accuracy, saliency=saliency)
    return gpu_check.Cell(**{**fields, **changes})


def test_matching_stores_pass_the_gpu_comparison():
    cuda = {"c1": cell(), "c2": cell("c2", "fp32")}
    cpu = {"c1": cell(torch_device="cpu", accuracy=0.94), "c2": cell("c2", "fp32", "cpu")}
    assert gpu_check.compare(cuda, cpu) == []


@pytest.mark.parametrize(("cpu_cell", "message"), [
    (cell(torch_device="cpu", accuracy=0.92), "accuracy 0.9500 on cuda, 0.9200 on cpu: 3.0 points"),
    (cell(torch_device="cuda"), "ran on cuda, not cpu"),
    (cell(torch_device="cpu", status="failed"), "status failed"),
    (cell(torch_device="cpu", deployed_accuracy=None), "no deployed accuracy"),
    (cell(torch_device="cpu", saliency=None), "no saliency statistics"),
    (cell(torch_device="cpu", saliency={"stats": {"gradient": {"deletion_auc": {"mean": 0.3}}},
                                  "reference": {"skipped": "no parent"}, "device": "cpu"}),
     "no FP32 reference maps (no parent)"),
    (cell(torch_device="cpu", saliency={"stats": {"gradient": {"deletion_auc": {"mean": 0.3}}},
                                  "reference": {"skipped": None}, "device": "cuda:0"}),
     "saliency ran on cuda:0, not cpu"),
    (cell("c9", torch_device="cpu"), "is in the cpu store only"),
])
def test_each_difference_is_a_named_mismatch(cpu_cell, message):
    problems = gpu_check.compare({"c1": cell()}, {cpu_cell.cell_id: cpu_cell})
    assert any(message in p for p in problems), problems


def test_without_cuda_the_script_stops_first_with_exit_3(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert gpu_check.main(["require-cuda"]) == gpu_check.NO_CUDA
    assert "no CUDA device here" in capsys.readouterr().err
