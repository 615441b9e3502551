"""The training loop and batched prediction; objectives and quantisers come from the methods."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from bench.config import TrainConfig
from bench.data import batches, normalize
from bench.objectives import Objective

EpochHook = Callable[[int, dict[str, float]], None]


def is_quantiser_parameter(name: str) -> bool:
    """A quantiser's own parameter (PACT alpha, LSQ step): it lives under a Brevitas
    ``*_quant`` module (``act_quant``, ``weight_quant``, ``input_quant``, ...)."""
    return any(part.endswith("_quant") for part in name.split(".")[:-1])


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters in two groups: the model's, with ``weight_decay``, and the
    quantisers' (clips and step sizes, whose methods regularise them or not), with none."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    quantiser = [p for n, p in named if is_quantiser_parameter(n)]
    regular = [p for n, p in named if not is_quantiser_parameter(n)]
    groups = [{"params": regular, "weight_decay": weight_decay}]
    if quantiser:
        groups.append({"params": quantiser, "weight_decay": 0.0})
    return groups


def make_optimizer(params: list[nn.Parameter] | list[dict[str, Any]], cfg: TrainConfig
                   ) -> torch.optim.Optimizer:
    """The configured optimizer over parameters or parameter groups (a group's own
    ``weight_decay`` overrides the configured one)."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    optim = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return optim(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_schedule(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps: int
                  ) -> torch.optim.lr_scheduler.LRScheduler:
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(steps // 3, 1), gamma=0.1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def fit(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig,
        objective: Objective, *, seed: int, torch_device: torch.device,
        penalty: Callable[[nn.Module], torch.Tensor] | None = None,
        val: tuple[torch.Tensor, torch.Tensor] | None = None,
        on_epoch: EpochHook | None = None) -> dict[str, Any]:
    """Train in place for cfg.epochs; returns the per-epoch history (loss, accuracies, seconds).
    With cfg.precision bf16 the forward pass and the loss run under bfloat16 autocast."""
    model.to(torch_device)
    optimizer = make_optimizer(param_groups(model, cfg.weight_decay), cfg)
    steps_per_epoch = math.ceil(len(labels) / cfg.batch_size)
    schedule = make_schedule(optimizer, cfg, cfg.epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    autocast = torch.autocast(torch_device.type, dtype=torch.bfloat16,
                              enabled=cfg.precision == "bf16")
    history: list[dict[str, float]] = []
    for epoch in range(cfg.epochs):
        model.train()
        start, total_loss, correct, seen = time.perf_counter(), 0.0, 0, 0
        for x, y in batches(images, labels, cfg.batch_size, generator):
            x, y = x.to(torch_device), y.to(torch_device)
            with autocast:
                loss, logits = objective.loss(model, x, y)
                if penalty is not None:
                    loss = loss + penalty(model)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss.item()} in epoch {epoch + 1}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        row = {"epoch": epoch + 1, "loss": total_loss / seen, "train_accuracy": correct / seen,
               "seconds": time.perf_counter() - start}
        if val is not None and len(val[1]):
            row["val_accuracy"] = float((predict(model, val[0], torch_device).argmax(1) == val[1])
                                        .float().mean())
        history.append(row)
        if on_epoch is not None:
            on_epoch(epoch + 1, row)
    return {"epochs": history}


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, torch_device: torch.device,
            batch_size: int = 256) -> torch.Tensor:
    """Logits (on the CPU) for uint8 images, in eval mode."""
    model.eval()
    outputs = [model(normalize(images[i:i + batch_size]).to(torch_device)).float().cpu()
               for i in range(0, len(images), batch_size)]
    return torch.cat(outputs)
