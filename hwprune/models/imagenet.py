"""Seed ImageNet models that are torchvision's own definitions, built without weights.

ResNet-18/34/50 and MobileNet v2 are the standard reference networks for pruning papers; the
torchvision definitions are the standard ones, so the built-in versions wrap them (weights=None) and
only add a native ``in_channels`` by swapping the stem conv. The global pooling is adaptive, so
they run at 16 px and up.
"""

from __future__ import annotations

from torch import nn

from hwprune.models import _torchvision
from hwprune.models.registry import register_model


def _register(name: str) -> None:
    @register_model(name, num_classes=1000, in_channels=3, input_size=224, min_input_size=16)
    def build(num_classes: int, in_channels: int, input_size: int) -> nn.Module:
        return _torchvision.build(name, num_classes, in_channels, input_size)


for _name in ("resnet18", "resnet34", "resnet50", "mobilenet_v2"):
    _register(_name)
