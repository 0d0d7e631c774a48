"""Attention for the fx front-end: nn.MultiheadAttention as one op with three channel groups.

Per attention module the mapper finds
- the *query/key* dimensions: query row ``i`` of ``in_proj_weight`` and key row ``E + i`` meet in
  the dot product ``q . k``, so they are one channel; removing a pair whose weights are zero
  leaves every attention score unchanged (the compacted module keeps the original
  ``1/sqrt(head_dim)`` scale);
- the *value* dimensions: value row ``2E + i`` is read only by column ``i`` of ``out_proj``;
- the output channels (``out_proj`` rows), which join the residual stream they are added to.

Heads must stay the same width, so both inner groups keep the same number of channels in every
head (a block constraint, like the conv groups of a grouped convolution). The input channels are
read by ``in_proj_weight``'s columns, as by a linear layer. Anything unusual (separate q/k/v
projection weights, bias_k/bias_v, zero attention, attention masks) fails closed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from torch import fx, nn

from hwprune.graph_mapper.atoms import fixed_label
from hwprune.graph_mapper.ops import OPS
from hwprune.graph_mapper.types import CONSUMER, PRODUCER

if TYPE_CHECKING:
    from hwprune.graph_mapper.fx_mapper import MapContext

MHA_ARGS = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask")


def _call_args(node: fx.Node) -> dict[str, object]:
    bound = dict(zip(MHA_ARGS, node.args, strict=False))
    bound.update(node.kwargs)
    return bound


def _unsupported(m: nn.MultiheadAttention, args: dict[str, object]) -> str | None:
    if not m._qkv_same_embed_dim:
        return "separate q/k/v projection weights (kdim/vdim)"
    if m.bias_k is not None or m.add_zero_attn:
        return "bias_k/bias_v or add_zero_attn"
    if any(args.get(a) is not None for a in ("attn_mask", "key_padding_mask")) or args.get("is_causal"):
        return "attention masks"
    return None


@OPS.register(nn.MultiheadAttention)
def multihead_attention(ctx: MapContext, node: fx.Node):
    m = ctx.module(node)
    name = node.target
    args = _call_args(node)
    why = _unsupported(m, args)
    if why:
        return ctx.unknown(node, f"MultiheadAttention {name} with {why}")
    embed, heads = m.embed_dim, m.num_heads
    inputs = [args["query"], args["key"], args["value"]]
    vecs = [ctx.channel_labels(node, x, dim=-1, size=embed, what="attention input") for x in inputs]
    if any(v is None for v in vecs):
        return ctx.unknown(node, f"MultiheadAttention {name} reads frozen channels")
    for other in vecs[1:]:  # one in_proj_weight reads query, key and value: their channels are one
        ctx.atoms.union(vecs[0], other)

    out_shape = ctx.shapes(node)[0]
    tokens = out_shape[-2] if len(out_shape) == 2 or m.batch_first else out_shape[0]
    qk, v, out = ctx.atoms.new(embed), ctx.atoms.new(embed), ctx.atoms.new(embed)
    ctx.keep_equal_per_block(qk.reshape(heads, -1), f"attention heads of {name} (query/key)")
    ctx.keep_equal_per_block(v.reshape(heads, -1), f"attention heads of {name} (value)")
    rows = np.concatenate([qk, qk, v])
    in_macs, out_macs = 3 * embed * embed * tokens, embed * embed * tokens
    ctx.site(f"{name}.in_proj_weight", 1, vecs[0], CONSUMER, node, macs=in_macs)
    ctx.site(f"{name}.in_proj_weight", 0, rows, PRODUCER, node, macs=in_macs)
    if m.in_proj_bias is not None:
        ctx.site(f"{name}.in_proj_bias", 0, rows, PRODUCER, node)
    ctx.site(f"{name}.out_proj.weight", 1, v, CONSUMER, node, macs=out_macs)
    ctx.site(f"{name}.out_proj.weight", 0, out, PRODUCER, node, macs=out_macs)
    if m.out_proj.bias is not None:
        ctx.site(f"{name}.out_proj.bias", 0, out, PRODUCER, node)
    weights_shape = ctx.shapes(node)[1]
    weights = fixed_label(len(weights_shape)) if weights_shape is not None else None
    return out.reshape((1,) * (len(out_shape) - 1) + (-1,)), weights
