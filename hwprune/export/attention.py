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


def _shift_mask(height: int, width: int, window: tuple[int, int], shift: tuple[int, int], like: torch.Tensor):
    """The [windows, tokens, tokens] additive mask of shifted windows.

    After a cyclic shift, tokens from different regions of the padded map must not attend to each
    other: -100 before the softmax, as Swin does.
    """

    def regions(size: int, win: int, sh: int) -> torch.Tensor:
        ids = torch.zeros(size, dtype=torch.long, device=like.device)
        ids[size - win :] = 1
        ids[size - sh :] = 2
        return ids

    ids = regions(height, window[0], shift[0])[:, None] * 3 + regions(width, window[1], shift[1])[None, :]
    ids = ids.view(height // window[0], window[0], width // window[1], window[1]).permute(0, 2, 1, 3)
    ids = ids.reshape(-1, window[0] * window[1])
    differ = ids[:, None, :] != ids[:, :, None]
    return torch.zeros(differ.shape, dtype=like.dtype, device=like.device).masked_fill(differ, -100.0)


def pruned_shifted_window_attention(
    input: torch.Tensor,
    qkv_weight: torch.Tensor,
    proj_weight: torch.Tensor,
    relative_position_bias: torch.Tensor,
    window_size: list[int],
    num_heads: int,
    shift_size: list[int],
    attention_dropout: float = 0.0,
    dropout: float = 0.0,
    qkv_bias: torch.Tensor | None = None,
    proj_bias: torch.Tensor | None = None,
    logit_scale: torch.Tensor | None = None,
    training: bool = True,
    *,
    qk_dim: int,
    v_dim: int,
    scale: float,
) -> torch.Tensor:
    """Swin's (shifted-)window attention with explicit per-head widths and the original scale.

    Same arguments as torchvision's ``shifted_window_attention`` (V1, and V2 when ``logit_scale``
    is given), which derives the head width from the input channels; after compaction the
    query/key width ``qk_dim``, value width ``v_dim`` and residual width differ.
    """
    batch, height, width, _ = input.shape
    win = (window_size[0], window_size[1])
    x = F.pad(input, (0, 0, 0, (-width) % win[1], 0, (-height) % win[0]))
    pad_h, pad_w = x.shape[1], x.shape[2]
    shift = (0 if win[0] >= pad_h else shift_size[0], 0 if win[1] >= pad_w else shift_size[1])
    if sum(shift) > 0:
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    rows, cols, tokens = pad_h // win[0], pad_w // win[1], win[0] * win[1]
    x = x.view(batch, rows, win[0], cols, win[1], -1).permute(0, 1, 3, 2, 4, 5).reshape(-1, tokens, x.shape[-1])

    qk = num_heads * qk_dim
    if logit_scale is not None and qkv_bias is not None:  # V2 has no key bias
        qkv_bias = torch.cat([qkv_bias[:qk], torch.zeros_like(qkv_bias[qk : 2 * qk]), qkv_bias[2 * qk :]])
    qkv = F.linear(x, qkv_weight, qkv_bias)

    def heads(part: torch.Tensor, dim: int) -> torch.Tensor:
        return part.unflatten(-1, (num_heads, dim)).transpose(1, 2)  # [windows, heads, tokens, dim]

    q, k, v = heads(qkv[..., :qk], qk_dim), heads(qkv[..., qk : 2 * qk], qk_dim), heads(qkv[..., 2 * qk :], v_dim)
    if logit_scale is not None:  # cosine attention
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * torch.clamp(logit_scale, max=math.log(100.0)).exp()
    else:
        attn = (q * scale) @ k.transpose(-2, -1)
    attn = attn + relative_position_bias
    if sum(shift) > 0:
        mask = _shift_mask(pad_h, pad_w, win, shift, attn)
        attn = (attn.view(batch, rows * cols, num_heads, tokens, tokens) + mask[None, :, None]).flatten(0, 1)
    attn = F.dropout(attn.softmax(dim=-1), p=attention_dropout, training=training)
    y = (attn @ v).transpose(1, 2).flatten(-2)
    y = F.dropout(F.linear(y, proj_weight, proj_bias), p=dropout, training=training)
    y = y.view(batch, rows, cols, win[0], win[1], -1).permute(0, 1, 3, 2, 4, 5).reshape(batch, pad_h, pad_w, -1)
    if sum(shift) > 0:
        y = torch.roll(y, shifts=shift, dims=(1, 2))
    return y[:, :height, :width, :].contiguous()
