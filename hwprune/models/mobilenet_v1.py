"""MobileNet v1 (Howard et al., 2017), width 1.0: the classic depthwise-separable network.

A stride-2 conv3x3(32) stem, thirteen depthwise-conv3x3 + pointwise-conv1x1 blocks (each conv
followed by BN + ReLU), global average pooling and a Linear. The pooling is adaptive so the
network also runs below its native 224 px (useful for fast tests).
"""

from __future__ import annotations

from torch import nn

from hwprune.models.registry import register_model

# (output channels, stride) of each depthwise-separable block.
BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]


def _conv_bn(cin: int, cout: int, kernel: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class MobileNetV1(nn.Module):
    """``features`` (stem + separable blocks), average pool, ``classifier``."""

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        layers, cin = [_conv_bn(in_channels, 32, 3, 2)], 32
        for cout, stride in BLOCKS:
            layers.append(nn.Sequential(_conv_bn(cin, cin, 3, stride, groups=cin), _conv_bn(cin, cout, 1, 1)))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.classifier(self.flatten(self.avgpool(self.features(x))))


@register_model("mobilenet_v1", num_classes=1000, in_channels=3, input_size=224, min_input_size=16)
def mobilenet_v1(num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    """Build MobileNet v1 (``input_size`` is not needed: the pooling is adaptive)."""
    return MobileNetV1(num_classes, in_channels)
