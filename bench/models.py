"""Backbones by name: torchvision classifiers and a small CNN for fast runs.

`pretrained: true` loads torchvision's ImageNet weights from the local torch hub cache only
(no download at run time); the classifier head is then replaced for the data set's classes.
The registry imports without torch (grids are planned without it): a builder imports what it
builds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench.config import BackboneConfig
from bench.errors import ConfigError
from bench.registry import Registry

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    build: Callable[[int], nn.Module]
    weights: str | None
    description: str


def _tv(name: str) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        import torchvision

        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    return build


def _small_cnn(num_classes: int) -> nn.Module:
    from bench.smallcnn import SmallCNN

    return SmallCNN(num_classes)


BACKBONES: Registry[BackboneInfo] = Registry("backbone", "backbones")
"""Backbones by name: the ones below and plugins' (entry points `medq_bench.backbones`)."""


def register_backbone(name: str, build: Callable[[int], nn.Module], weights: str | None,
                      description: str) -> BackboneInfo:
    """Make a backbone available to grids: ``build(num_classes)`` returns a fresh model (import
    torch inside it), ``weights`` is the torchvision weights enum for `pretrained: true`."""
    return BACKBONES.register(name, BackboneInfo(name, build, weights, description))


register_backbone("smallcnn", _small_cnn, None, "4-block CNN for fast runs (~131k params)")
for _name, _weights, _description in (
        ("resnet18", "ResNet18_Weights", "torchvision ResNet-18"),
        ("mobilenet_v2", "MobileNet_V2_Weights", "torchvision MobileNetV2"),
        ("mobilenet_v3_small", "MobileNet_V3_Small_Weights", "torchvision MobileNetV3-Small"),
        ("efficientnet_b0", "EfficientNet_B0_Weights", "torchvision EfficientNet-B0")):
    register_backbone(_name, _tv(_name), f"{_weights}.IMAGENET1K_V1", _description)


def get_backbone(name: str) -> BackboneInfo:
    return BACKBONES.get(name)


def build_model(cfg: BackboneConfig, num_classes: int) -> nn.Module:
    """A fresh backbone for num_classes; pretrained weights come from the local cache only."""
    info = get_backbone(cfg.name)
    model = info.build(num_classes)
    if cfg.pretrained:
        load_pretrained(model, info)
    return model


def pretrained_path(info: BackboneInfo) -> Path:
    if info.weights is None:
        raise ConfigError(f"backbone '{info.name}' has no pretrained weights; "
                          "set pretrained: false")
    import torch
    import torchvision

    weights = torchvision.models.get_weight(info.weights)
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def load_pretrained(model: nn.Module, info: BackboneInfo) -> None:
    """Load ImageNet weights into every layer except the (re-sized) classifier head."""
    import torch

    path = pretrained_path(info)
    if not path.is_file():
        raise ConfigError(
            f"pretrained weights for '{info.name}' not found at {path}; medq-bench never "
            f"downloads at run time. Put the file there (torchvision's {info.weights}), set "
            "TORCH_HOME to a folder that has it, or use pretrained: false")
    state = torch.load(path, map_location="cpu", weights_only=True)
    own = model.state_dict()
    compatible = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(compatible, strict=False)
