"""Backbones build for any class count and input size; pretrained weights never download."""

from __future__ import annotations

import pytest
import torch

from bench.config import BackboneConfig
from bench.errors import ConfigError
from bench.models import BACKBONES, build_model, get_backbone, pretrained_path


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_builds_and_runs(name):
    model = build_model(BackboneConfig(name=name), num_classes=5).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 5)


def test_unknown_backbone_lists_known():
    with pytest.raises(ConfigError, match="resnet18"):
        get_backbone("vgg99")


def test_missing_pretrained_weights_say_how_to_provide(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ConfigError, match="never downloads.*TORCH_HOME"):
        build_model(BackboneConfig(name="resnet18", pretrained=True), num_classes=3)


def test_pretrained_weights_from_local_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    source = build_model(BackboneConfig(name="resnet18"), num_classes=1000)
    path = pretrained_path(get_backbone("resnet18"))
    path.parent.mkdir(parents=True)
    torch.save(source.state_dict(), path)
    model = build_model(BackboneConfig(name="resnet18", pretrained=True), num_classes=3)
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert model.fc.out_features == 3


def test_smallcnn_has_no_pretrained_weights():
    with pytest.raises(ConfigError, match="no pretrained"):
        build_model(BackboneConfig(name="smallcnn", pretrained=True), num_classes=3)
