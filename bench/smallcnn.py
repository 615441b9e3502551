"""The small CNN backbone (`smallcnn`): fast runs and tests on tiny images."""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import nn


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU blocks, global pooling, a linear head (130,851 parameters, 3 classes)."""

    def __init__(self, num_classes: int, width: int = 32) -> None:
        super().__init__()
        chans = [3, width, width * 2, width * 2, width * 4]
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(pairwise(chans)):
            layers += [nn.Conv2d(cin, cout, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                       nn.BatchNorm2d(cout), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(chans[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))
