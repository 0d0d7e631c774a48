"""A sparse execution path for unstructured masks: Linear and Conv2d as CSR matrix products on CPU.

A weight-masked model keeps its dense shapes, so dense kernels do every multiply-add whatever the
compression: its testing time does not fall with density. :func:`to_sparse_csr` returns a copy whose
Linear layers compute ``W_csr @ x^T`` and whose Conv2d layers (one group, zero padding) unfold the
input (im2col) and compute ``W_csr @ columns``, so only the kept weights are multiplied. Other layers
(grouped or depthwise convs, norms, pools) run as they were.
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import nn


class CsrLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` held in CSR layout."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight = linear.weight.detach().to_sparse_csr()
        self.bias = None if linear.bias is None else linear.bias.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        y = (self.weight @ flat.t()).t()
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], y.shape[-1])


class CsrConv2d(nn.Module):
    """A single-group, zero-padded Conv2d as im2col followed by ``W_csr @ columns``."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.out_channels = conv.out_channels
        self.kernel_size, self.stride = conv.kernel_size, conv.stride
        self.padding, self.dilation = conv.padding, conv.dilation
        self.weight = conv.weight.detach().reshape(conv.out_channels, -1).to_sparse_csr()
        self.bias = None if conv.bias is None else conv.bias.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # [N, C*k*k, L]
        out_h = (h + 2 * self.padding[0] - self.dilation[0] * (self.kernel_size[0] - 1) - 1) // self.stride[0] + 1
        out_w = (w + 2 * self.padding[1] - self.dilation[1] * (self.kernel_size[1] - 1) - 1) // self.stride[1] + 1
        y = self.weight @ cols.transpose(0, 1).reshape(cols.shape[1], -1)  # [O, N*L]
        y = y.reshape(self.out_channels, n, out_h, out_w).transpose(0, 1)
        if self.bias is not None:
            y = y + self.bias.reshape(1, -1, 1, 1)
        return y.contiguous()


def _convertible(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return (
        isinstance(module, nn.Conv2d)
        and module.groups == 1
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


@torch.no_grad()
def to_sparse_csr(model: nn.Module) -> nn.Module:
    """A CPU copy of ``model`` (weights as they are, masked ones zero) running Linear/Conv2d in CSR.

    Returns:
        The copy in eval mode; ``model`` itself is not changed.
    """
    net = copy.deepcopy(model).cpu().eval()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        for parent in list(net.modules()):
            for name, child in list(parent.named_children()):
                if _convertible(child):
                    setattr(parent, name, CsrLinear(child) if isinstance(child, nn.Linear) else CsrConv2d(child))
    return net
