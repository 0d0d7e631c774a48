"""Synaptic-Flow's weight initialisation, so prune-at-init runs start where the reference's do.

The reference models (``_initialize_weights`` of its VGG and ResNet) draw every Conv/Linear weight from
Kaiming-normal (fan-in, ReLU gain: std sqrt(2 / fan_in)), zero every bias and set BatchNorm to weight 1,
bias 0. PyTorch's own default (Kaiming-uniform with a = sqrt(5), std sqrt(1 / (3 fan_in)), and random
biases) shrinks the signal's second moment about 6x per ReLU layer; in a network without batch norm
the masking's further factor of d per layer then leaves logits that hardly depend on the input, and SGD
stays on the ln(C) plateau (benchmarks/results/digits_sweep_diagnosis.md).
"""

from __future__ import annotations

import torch
from torch import nn

INITS = ("reference", "model")

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


@torch.no_grad()
def reference_init(model: nn.Module) -> nn.Module:
    """Re-draw ``model``'s weights as Synaptic-Flow's models do (in place, from torch's global generator).

    Returns:
        ``model`` itself.
    """
    for m in model.modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, _NORMS) and getattr(m, "weight", None) is not None:
            m.weight.fill_(1.0)
            if m.bias is not None:
                m.bias.zero_()
    return model
