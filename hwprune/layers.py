"""Layers that compaction puts into compacted models.

A LayerNorm normalises over all its channels, so removing channels changes what the kept ones compute,
unless the compacted norm still divides by the original width. In the masked model the pruned channels of
a LayerNorm's input are zero (every producer of the group is masked), so its mean and variance are those of
the kept channels padded with zeros to the original width. :class:`ZeroPaddedLayerNorm` computes exactly
that on the kept channels alone: compaction of a LayerNorm's channels is exact, as RMSNorm's is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ZeroPaddedLayerNorm(nn.LayerNorm):
    """LayerNorm over ``h`` kept channels of an original ``width``, as if the removed ones were zero.

    ``mean = sum(x) / width`` and ``var = (sum((x - mean)**2) + (width - h) * mean**2) / width``: the
    statistics of the zero-padded input, computed in O(h). With ``h == width`` it is ``nn.LayerNorm``.
    A subclass, so code that checks ``isinstance(m, nn.LayerNorm)`` (weight decay groups, optimisers) still
    treats it as a norm; its state dict keys are LayerNorm's.
    """

    def __init__(self, kept: int, width: int, eps: float = 1e-5, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(kept, eps=eps, elementwise_affine=True, bias=bias, device=device, dtype=dtype)
        self.width = width

    @classmethod
    def from_layer_norm(cls, norm: nn.LayerNorm, width: int) -> ZeroPaddedLayerNorm:
        """A norm holding ``norm``'s (already sliced) weight and bias, normalising as over ``width`` channels."""
        new = cls(norm.weight.shape[0], width, norm.eps, norm.bias is not None, device=norm.weight.device)
        new.weight, new.bias = norm.weight, norm.bias
        return new.train(norm.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return zero_padded_layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps, width=self.width)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, width={self.width}"


def zero_padded_layer_norm(x, normalized_shape, weight=None, bias=None, eps: float = 1e-5, *, width: int):
    """``F.layer_norm`` over the last axis as if it had ``width`` channels, the missing ones zero.

    What compaction puts where a traced graph called ``F.layer_norm`` on channels that lose some (the fx
    front-end rewrites the call); :class:`ZeroPaddedLayerNorm` is the module form.
    """
    kept = x.shape[-1]
    if kept == width:
        return F.layer_norm(x, normalized_shape, weight, bias, eps)
    mean = x.sum(-1, keepdim=True) / width
    centred = x - mean
    var = (centred.square().sum(-1, keepdim=True) + (width - kept) * mean.square()) / width
    y = centred * torch.rsqrt(var + eps)
    y = y * weight if weight is not None else y
    return y + bias if bias is not None else y
