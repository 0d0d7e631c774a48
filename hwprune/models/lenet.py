"""LeNet-5 (LeCun et al., 1998) with ReLU and max-pooling: the smallest built-in model.

conv5x5(6) - pool - conv5x5(16) - pool - fc120 - fc84 - fc. The convolutions are unpadded, so the
flattened feature size depends on the input side; it is computed from ``input_size`` so the same
definition works for 28 px (MNIST, digits) and 32 px (CIFAR) and exercises flatten -> Linear.
"""

from __future__ import annotations

from torch import nn

from hwprune.errors import HwpruneError
from hwprune.models.registry import register_model


@register_model("lenet5", num_classes=10, in_channels=1, input_size=28, min_input_size=16)
def lenet5(num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    """Build LeNet-5 for square inputs of side ``input_size``."""
    side = ((input_size - 4) // 2 - 4) // 2
    if side < 1:
        raise HwpruneError(f"lenet5 needs input_size >= 16, got {input_size}")
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 5),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * side * side, 120),
        nn.ReLU(inplace=True),
        nn.Linear(120, 84),
        nn.ReLU(inplace=True),
        nn.Linear(84, num_classes),
    )
