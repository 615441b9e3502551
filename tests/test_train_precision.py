"""`train.precision`: bf16 autocast (for CUDA runs) trains correctly, is part of a cell's identity
only when asked for (FP32 cells keep the ids they had), and is in each record's provenance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from bench.config import BackboneConfig, TrainConfig
from bench.models import build_model
from bench.objectives import CrossEntropy
from bench.runner import RunOptions, plan_grid, run_grid
from bench.store import ResultsStore
from bench.train import fit, predict
from tests.conftest import tiny_grid_dict


def _blobs(n: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes of 16 px images a small CNN separates in a few epochs: dark and bright."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 2
    noise = torch.randint(0, 60, (n, 3, 16, 16), generator=generator, dtype=torch.uint8)
    images = noise + (labels * 150).to(torch.uint8)[:, None, None, None]
    return images, labels


def _train(precision: str, epochs: int = 3) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(0)
    model = build_model(BackboneConfig(name="smallcnn"), 2)
    images, labels = _blobs()
    cfg = TrainConfig(epochs=epochs, batch_size=16, lr=0.01, precision=precision)
    history = fit(model, images, labels, cfg, CrossEntropy(), seed=0,
                  torch_device=torch.device("cpu"))
    return model, history


def test_bf16_autocast_trains_as_well_as_fp32_on_the_cpu() -> None:
    images, labels = _blobs()
    accuracy = {}
    losses = {}
    for precision in ("fp32", "bf16"):
        model, history = _train(precision)
        losses[precision] = [row["loss"] for row in history["epochs"]]
        accuracy[precision] = float((predict(model, images, torch.device("cpu")).argmax(1)
                                     == labels).float().mean())
        assert all(p.dtype == torch.float32 for p in model.parameters())   # FP32 master weights
    assert accuracy["fp32"] >= 0.9 and accuracy["bf16"] >= 0.9
    assert losses["bf16"][-1] < losses["bf16"][0]
    assert losses["bf16"] != losses["fp32"]   # autocast really ran in bfloat16


def test_bf16_runs_the_forward_pass_in_bfloat16(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[torch.dtype] = []
    real = torch.nn.Conv2d.forward

    def forward(self: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        out = real(self, x)
        seen.append(out.dtype)
        return out

    monkeypatch.setattr(torch.nn.Conv2d, "forward", forward)
    _train("bf16", epochs=1)
    assert seen and set(seen) == {torch.bfloat16}


def _grid(tmp_path: Path, **train: Any) -> Path:
    path = tmp_path / f"grid-{len(train)}.yaml"
    path.write_text(yaml.safe_dump(tiny_grid_dict(
        seeds=1, train={"epochs": 1, "batch_size": 16, "lr": 0.003, **train})))
    return path


def test_precision_is_in_a_cells_identity_only_when_not_fp32(tmp_path: Path) -> None:
    def ids(**train: Any) -> list[str]:
        return [c.cell_id for c in plan_grid(RunOptions(grid=str(_grid(tmp_path, **train)))).cells]

    default = ids()
    assert ids(precision="fp32") == default   # the ids FP32 cells always had
    assert ids(precision="bf16") != default
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp16")


def test_a_bf16_cell_records_its_precision(tmp_path: Path) -> None:
    options = RunOptions(grid=str(_grid(tmp_path, precision="bf16")), store=tmp_path / "s",
                         torch_device="cpu", quiet=True)
    store = ResultsStore(options.store)
    summary = run_grid(plan_grid(options), store, options)
    assert summary.ran and not summary.failed
    record = store.records()[0]
    assert record.provenance["train_precision"] == "bf16"
    assert record.config["train"]["precision"] == "bf16"
