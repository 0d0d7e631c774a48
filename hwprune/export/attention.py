"""Multi-head attention whose query/key, value and model widths differ: what compaction leaves.

``nn.MultiheadAttention`` ties its inner width, head width and output width to one
``embed_dim``, so an attention module that lost query/key or value dimensions (or residual
channels) cannot be one any more. This module computes what it computed, with the original
softmax scale, from the same parameter names (``in_proj_weight``, ``in_proj_bias``,
``out_proj``), so state dicts and the fx graph's call sites stay valid.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class PrunedMultiheadAttention(nn.Module):
    """Self- or cross-attention with per-head query/key width ``qk_dim`` and value width ``v_dim``."""

    def __init__(
        self,
        in_proj_weight: torch.Tensor,
        in_proj_bias: torch.Tensor | None,
        out_proj: nn.Linear,
        num_heads: int,
        qk_dim: int,
        v_dim: int,
        scale: float,
        batch_first: bool,
        dropout: float,
    ) -> None:
        super().__init__()
        self.in_proj_weight = nn.Parameter(in_proj_weight)
        self.in_proj_bias = nn.Parameter(in_proj_bias) if in_proj_bias is not None else None
        self.out_proj = out_proj
        self.num_heads, self.qk_dim, self.v_dim = num_heads, qk_dim, v_dim
        self.scale, self.batch_first, self.dropout = scale, batch_first, dropout

    @classmethod
    def from_module(cls, m: nn.MultiheadAttention, qk_width: int, v_width: int) -> PrunedMultiheadAttention:
        """Wrap ``m``'s (already shrunk) parameters; ``*_width`` are the kept inner widths (all heads)."""
        heads = m.num_heads
        if qk_width % heads or v_width % heads:
            raise ValueError(f"kept widths {qk_width}/{v_width} are not multiples of {heads} heads")
        scale = 1.0 / math.sqrt(m.embed_dim // heads)
        return cls(
            m.in_proj_weight.data,
            None if m.in_proj_bias is None else m.in_proj_bias.data,
            m.out_proj,
            heads,
            qk_width // heads,
            v_width // heads,
            scale,
            m.batch_first,
            m.dropout,
        )

    def _heads(self, x: torch.Tensor, rows: slice, width: int) -> torch.Tensor:
        bias = None if self.in_proj_bias is None else self.in_proj_bias[rows]
        y = F.linear(x, self.in_proj_weight[rows], bias)
        return y.unflatten(-1, (self.num_heads, width)).transpose(-3, -2)  # [..., heads, tokens, width]

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: None = None,
        need_weights: bool = True,
        attn_mask: None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Same call as ``nn.MultiheadAttention`` (masks are refused by the mapper before compaction)."""
        if key_padding_mask is not None or attn_mask is not None:
            raise ValueError("PrunedMultiheadAttention does not take attention masks")
        batched = query.dim() == 3
        if batched and not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        qk = self.num_heads * self.qk_dim
        q = self._heads(query, slice(0, qk), self.qk_dim)
        k = self._heads(key, slice(qk, 2 * qk), self.qk_dim)
        v = self._heads(value, slice(2 * qk, None), self.v_dim)
        weights = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        weights = F.dropout(weights, self.dropout, self.training)
        out = (weights @ v).transpose(-3, -2).flatten(-2)  # [..., tokens, heads * v_dim]
        out = self.out_proj(out)
        if batched and not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, weights.mean(-3) if average_attn_weights else weights
