"""Hugging Face ``transformers`` layers, registered by qualified name so that hwprune never imports the library.

Two kinds of entries: a leaf layer the mapper follows as one op (GPT-2's ``Conv1D``, a dense layer whose
weight is stored ``[in, out]``), and composite modules the front-end traces through but whose code reads
a size from an attribute (GPT-2's attention splits its fused q/k/v projection at ``split_size``): their
compaction step sets that attribute from the sliced weights, so the compacted module runs as written.
"""

from __future__ import annotations

import math

from torch import fx, nn

from hwprune.graph_mapper import label_rules as rules
from hwprune.graph_mapper.ops import COMPOSITE_RESIZERS, OPS
from hwprune.graph_mapper.rewrites import resized_by

GPT2 = "transformers.models.gpt2.modeling_gpt2"


def _resize_transposed_linear(m: nn.Module, shrunk) -> None:
    m.nx, m.nf = m.weight.shape


@OPS.register("transformers.pytorch_utils.Conv1D")
@resized_by(_resize_transposed_linear)
def transposed_linear(ctx, node: fx.Node):
    """Hugging Face's Conv1D (GPT-2): a dense layer whose weight is stored ``[in, out]``."""
    m = ctx.module(node)
    name, out_shape = node.target, ctx.shape(node)
    c_in, c_out = m.weight.shape
    vec = ctx.channel_labels(node, node.args[0], dim=-1, size=c_in, what="linear input")
    bias = (f"{name}.bias", 0) if m.bias is not None else None
    out = rules.linear_sites(ctx, node, vec, f"{name}.weight", 1, c_out, m.weight.numel() * math.prod(out_shape[1:-1]),
                             bias)  # fmt: skip
    return rules.channel_shaped(out, len(out_shape), -1)


@COMPOSITE_RESIZERS.register(f"{GPT2}.GPT2Attention")
def _resize_gpt2_attention(m: nn.Module, shrunk) -> None:
    """Whole heads removed: the fused projection now splits at the new width, with that many heads."""
    width = m.c_attn.weight.shape[1] // 3
    m.split_size = m.embed_dim = width
    m.num_heads = width // m.head_dim


@COMPOSITE_RESIZERS.register("transformers.models.t5.modeling_t5.T5Attention")
def _resize_t5_attention(m: nn.Module, shrunk) -> None:
    """Whole heads removed: the head count and width its code reads (``n_heads``, ``inner_dim``) follow q."""
    m.inner_dim = m.q.weight.shape[0]
    m.n_heads = m.inner_dim // m.key_value_proj_dim
