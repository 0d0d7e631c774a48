"""CIFAR-style VGG-11/13/16/19 with BatchNorm (Simonyan & Zisserman, 2015; CIFAR variant).

A stack of conv3x3-BN-ReLU layers and five 2x2 max-pools, then flatten -> Linear. There is no
global pooling: the classifier's ``in_features`` is 512 x side x side where side is what the five
pools leave of ``input_size`` (1 at 32 px), so pruning the last conv must also prune the Linear
input through a flatten.

Narrow variants for prune-at-init sweeps on a CPU (digits at 32 px): ``vgg11_slim`` is VGG11-BN's plan
(8 conv-BN-ReLU layers) at 1/16 of the width (4 to 32 channels, 37k parameters), the embedded sweep's
model (30 runs in about two minutes); ``vgg16_quarter`` is VGG16-BN's plan (13 layers, the SynFlow
paper's network) at 1/4 of the width (16 to 128 channels, 0.92M parameters): of the widths 1/16, 1/8 and
1/4, the narrowest whose random and magnitude masks at 1 % density connect input to output (as the
paper's VGG16 does), which the fidelity benchmark needs.
"""

from __future__ import annotations

from torch import nn

from hwprune.errors import HwpruneError
from hwprune.models.registry import register_model

CFGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M"] + [512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
for _narrow, (_plan, _divisor) in {"vgg11_slim": ("vgg11", 16), "vgg16_quarter": ("vgg16", 4)}.items():
    CFGS[_narrow] = [c if c == "M" else int(c) // _divisor for c in CFGS[_plan]]


class VGG(nn.Module):
    """Conv stack (``features``) followed by flatten -> Linear (``classifier``)."""

    def __init__(self, cfg: list[int | str], num_classes: int, in_channels: int, input_size: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, side = in_channels, input_size
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                side //= 2
            else:
                layers += [nn.Conv2d(channels, int(item), 3, padding=1), nn.BatchNorm2d(int(item))]
                layers.append(nn.ReLU(inplace=True))
                channels = int(item)
        if side < 1:
            raise HwpruneError(f"CIFAR VGG needs input_size >= 32, got {input_size}")
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(channels * side * side, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


def _register(name: str) -> None:
    @register_model(name, num_classes=10, in_channels=3, input_size=32, min_input_size=32)
    def build(num_classes: int, in_channels: int, input_size: int) -> nn.Module:
        return VGG(CFGS[name], num_classes, in_channels, input_size)


for _name in CFGS:
    _register(_name)
