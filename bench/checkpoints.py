"""Save a cell's trained model as a state dict, and rebuild it from the cell's config.

Brevitas graph models do not pickle, so a method's model is rebuilt the way the method built
it (backbone, then the method's graph of it: `Method.rebuild`) and its state dict loaded on
top.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from bench.config import CellConfig
from bench.models import build_model
from methods import get_method

WEIGHTS = "model.pt"


def save_model(model: nn.Module, folder: Path) -> Path:
    path = folder / WEIGHTS
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)
    return path


def load_model(cfg: CellConfig, folder: Path, num_classes: int, example_input: torch.Tensor
               ) -> nn.Module:
    """The cell's model in eval mode: the FP32 backbone, or the graph its method made of it
    (`Method.rebuild`: the quantised graph, the folded float graph)."""
    method = get_method(cfg.method)
    model = method.rebuild(build_model(cfg.backbone, num_classes), cfg.w_bits, cfg.a_bits,
                           method.parse_params(cfg.params), example_input)
    state = torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()
