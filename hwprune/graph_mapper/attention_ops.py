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

Attention written out of plain ops (timm's ``qkv`` linear, reshape into heads, ``unbind``, then
``q @ k^T`` or ``F.scaled_dot_product_attention``) maps through the same rules: query and key
dimensions that meet in the scores are one channel, value dimensions pass to the output. The
reshape into heads ties a dimension across heads, so every head keeps the same width.
"""

from __future__ import annotations

import inspect
import math
import operator
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from hwprune.export.attention import PrunedMultiheadAttention
from hwprune.graph_mapper import label_rules as rules
from hwprune.graph_mapper.atoms import Frozen, fixed_label, labelled, right_align
from hwprune.graph_mapper.ops import OPS
from hwprune.graph_mapper.rewrites import AttentionRewrite, KwargsRewrite, resized_by
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


def _resize_multihead_attention(m: nn.MultiheadAttention, shrunk) -> PrunedMultiheadAttention:
    """nn.MultiheadAttention derives head widths from ``embed_dim``: it becomes a module with explicit widths."""
    rows = np.ones(3 * m.embed_dim, dtype=bool)
    for site, k in shrunk.get("in_proj_weight", []):
        if site.axis == 0:
            rows = k
    e = m.embed_dim
    return PrunedMultiheadAttention.from_module(m, int(rows[:e].sum()), int(rows[2 * e :].sum()))


@OPS.register(nn.MultiheadAttention)
@resized_by(_resize_multihead_attention)
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


# ----------------------------------------------------------------------------- attention written out


def _both_labels(ctx: MapContext, node: fx.Node, a, b):
    """Right-aligned labels of two tensor operands, or None after failing closed."""
    la, lb = ctx.label(a), ctx.label(b)
    if not (isinstance(la, np.ndarray) and isinstance(lb, np.ndarray)):
        ctx.unknown(node, f"{node.name} multiplies an untracked or frozen tensor")
        return None
    shape_a, shape_b = ctx.shape(a), ctx.shape(b)
    if len(shape_a) < 2 or len(shape_b) < 2:
        ctx.unknown(node, f"matmul {node.name} of a vector")
        return None
    return right_align(la, len(shape_a)), right_align(lb, len(shape_b))


@OPS.register(torch.matmul, operator.matmul, "matmul", torch.bmm, "bmm")
def matmul(ctx: MapContext, node: fx.Node):
    """Product of two activations, as written-out attention uses it (see ``label_rules.matmul``)."""
    labels = _both_labels(ctx, node, node.args[0], node.args[1])
    if labels is None:
        return Frozen(f"matmul {node.name}")
    out = rules.matmul(ctx.atoms, *labels, len(ctx.shape(node)), f"matmul {node.name}")
    return ctx.unknown(node, f"matmul {node.name}: channels on an axis it cannot follow") if out is None else out


@OPS.register(torch.einsum)
def einsum(ctx: MapContext, node: fx.Node):
    """Two-operand einsum, with the rules of :func:`matmul` (scores, weighted values)."""
    operands = node.args[1:] if len(node.args) > 2 else node.args[1]
    if not isinstance(node.args[0], str) or len(operands) != 2:
        return ctx.unknown(node, f"einsum {node.name}: only explicit two-operand equations are followed")
    labels = _both_labels(ctx, node, operands[0], operands[1])
    if labels is None:
        return Frozen(f"einsum {node.name}")
    out = rules.einsum(ctx.atoms, node.args[0], *labels, f"einsum {node.name}")
    return ctx.unknown(node, f"einsum {node.name}: channels on an axis it cannot follow") if out is None else out


@OPS.register(F.scaled_dot_product_attention)
def scaled_dot_product_attention(ctx: MapContext, node: fx.Node):
    """Fused attention: query/key dimensions meet in the scores, value dimensions pass through.

    The default scale is ``1/sqrt(query width)``; compaction writes the original value in, so
    removing query/key dimensions keeps the softmax temperature.
    """
    q, k, v = (node.args[i] if len(node.args) > i else node.kwargs[n] for i, n in enumerate(("query", "key", "value")))
    if any(isinstance(ctx.label(t), Frozen) or ctx.label(t) is None for t in (q, k, v)):
        return ctx.unknown(node, f"attention {node.name} reads frozen channels")
    lq, lk, lv = (right_align(ctx.label(t), len(ctx.shape(t))) for t in (q, k, v))
    if lq.shape[-2] > 1 or lk.shape[-2] > 1 or lv.shape[-2] > 1:
        return ctx.unknown(node, f"attention {node.name}: channels vary along the token axis")
    if not rules.tie_contraction(ctx.atoms, lq[..., 0, :], lk[..., 0, :], f"attention {node.name}"):
        return Frozen(f"attention {node.name} contracts channels with fixed ones")
    if not _tie_whole_heads(ctx, node, lq, lk, lv):
        return Frozen(f"attention {node.name} mixes whole heads with head dimensions")
    mask = node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")
    if isinstance(mask, fx.Node) and not _tie_mask_heads(ctx, node, mask, lq):
        return Frozen(f"attention {node.name}: its mask has per-head values the heads cannot follow")
    if labelled(lq) and node.kwargs.get("scale") is None and len(node.args) < 7:
        ctx.record_rewrite(node, KwargsRewrite({"scale": 1.0 / math.sqrt(ctx.shape(q)[-1])}))
    return right_align(lv, len(ctx.shape(node)))


def _tie_whole_heads(ctx: MapContext, node: fx.Node, lq, lk, lv) -> bool:
    """Tie whole heads: head ``h`` of the query, key and value is one unit, so all three keep the same heads.

    Whole heads are channels varying along a batch axis of the attention, not along its width. With
    grouped-query attention the key/value head repeated for several query heads ties them all. False
    (everything frozen) when one operand loses whole heads and another loses dimensions within heads.
    """
    operands = (lq, lk, lv)
    whole = [lab.shape[-1] == 1 and any(n > 1 for n in lab.shape[:-2]) for lab in operands]
    if not any(whole):
        return True
    if any(lab.shape[-1] > 1 for lab in operands):
        ctx.atoms.freeze(np.concatenate([lab.reshape(-1) for lab in (lq, lk, lv)]), f"attention {node.name} "
                         "mixes whole heads with head dimensions")  # fmt: skip
        return False
    heads = np.broadcast_arrays(*(lab[..., 0, 0] for lab in operands))
    what = f"attention {node.name}"
    return rules.tie_contraction(ctx.atoms, heads[0], heads[1], what) and rules.tie_contraction(
        ctx.atoms, heads[0], heads[2], what
    )


def _tie_mask_heads(ctx: MapContext, node: fx.Node, mask: fx.Node, lq: np.ndarray) -> bool:
    """A mask (or additive bias, T5's relative positions) with one slice per head loses the heads the query loses.

    Its head axis is tied to the query heads; a per-head mask whose heads carry no channels (computed from
    constants) freezes the heads, and one whose channels vary along the token axes is frozen.
    """
    shape = ctx.shape(mask)
    if shape is None or len(shape) < 3 or shape[-3] == 1:
        return True  # one mask for every head
    label = ctx.label(mask)
    lm = right_align(label, len(shape)) if isinstance(label, np.ndarray) else fixed_label(len(shape))
    what = f"attention {node.name} mask"
    if lm.shape[-1] > 1 or lm.shape[-2] > 1:
        ctx.atoms.freeze(np.concatenate([lm.reshape(-1), lq.reshape(-1)]), f"{what} varies along the token axes")
        return False
    return rules.tie_contraction(ctx.atoms, lq[..., 0, 0], lm[..., 0, 0], what)


def _swin_attention(ctx: MapContext, node: fx.Node):
    """Swin's window attention (torchvision), an fx leaf: one qkv and one output projection.

    Mapped like nn.MultiheadAttention. Compaction calls
    :func:`hwprune.export.attention.pruned_shifted_window_attention`, which takes the kept
    per-head widths and the original scale instead of deriving them from the input width.
    """
    from torchvision.models.swin_transformer import shifted_window_attention

    args = inspect.signature(shifted_window_attention).bind(*node.args, **node.kwargs).arguments
    tensors = [args.get(k) for k in ("qkv_weight", "proj_weight", "qkv_bias", "proj_bias")]
    if any(isinstance(t, fx.Node) and t.op != "get_attr" for t in tensors) or not isinstance(args["num_heads"], int):
        return ctx.unknown(node, f"window attention {node.name} with computed weights")
    qkv_w, proj_w, qkv_b, proj_b = tensors
    heads, shape = args["num_heads"], ctx.shape(args["input"])
    width = shape[-1]
    vec = ctx.channel_labels(node, args["input"], dim=-1, size=width, what="window attention input")
    if vec is None:
        return ctx.unknown(node, f"window attention {node.name} reads frozen channels")
    for per_head in (args.get("relative_position_bias"), args.get("logit_scale")):  # heads never shrink
        if isinstance(ctx.label(per_head), np.ndarray):
            ctx.atoms.freeze(ctx.label(per_head), f"per-head tensor of window attention {node.name}")
    qk, v, out = ctx.atoms.new(width), ctx.atoms.new(width), ctx.atoms.new(width)
    ctx.keep_equal_per_block(qk.reshape(heads, -1), f"attention heads of {node.name} (query/key)")
    ctx.keep_equal_per_block(v.reshape(heads, -1), f"attention heads of {node.name} (value)")
    win = args["window_size"]  # the projections run on the map padded to whole windows
    tokens = math.prod(-(-size // w) * w for size, w in zip(shape[1:-1], win, strict=True))
    rows = np.concatenate([qk, qk, v])
    ctx.site(qkv_w.target, 1, vec, CONSUMER, node, macs=3 * width * width * tokens)
    ctx.site(qkv_w.target, 0, rows, PRODUCER, node, macs=3 * width * width * tokens)
    ctx.site(proj_w.target, 1, v, CONSUMER, node, macs=width * width * tokens)
    ctx.site(proj_w.target, 0, out, PRODUCER, node, macs=width * width * tokens)
    for bias, atoms in ((qkv_b, rows), (proj_b, out)):
        if isinstance(bias, fx.Node):
            ctx.site(bias.target, 0, atoms, PRODUCER, node)
    ctx.record_rewrite(node, AttentionRewrite(qk, v, heads, (width // heads) ** -0.5))
    return out.reshape((1,) * (len(shape) - 1) + (-1,))


def _swin_patch_merging(ctx: MapContext, node: fx.Node):
    """Swin's patch merging gathers 2x2 neighbours along channels: [..., C] -> [..., 4C], C tiled 4x."""
    shape = ctx.shape(node.args[0])
    vec = ctx.channel_labels(node, node.args[0], dim=-1, size=shape[-1], what="patch merging")
    if vec is None:
        return Frozen(f"patch merging {node.name} sees frozen channels")
    return np.tile(vec, 4).reshape((1,) * (len(shape) - 1) + (-1,))


def _register_swin() -> None:
    try:
        from torchvision.models.swin_transformer import _patch_merging_pad, shifted_window_attention
    except ImportError:  # torchvision is optional for the mapper
        return
    OPS.register(shifted_window_attention)(_swin_attention)
    OPS.register(_patch_merging_pad)(_swin_patch_merging)


_register_swin()
