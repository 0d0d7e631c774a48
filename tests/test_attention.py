"""nn.MultiheadAttention: mapped as query/key, value and output groups; compacted exactly."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from hwprune.errors import MaskMismatchError
from hwprune.export.attention import PrunedMultiheadAttention
from hwprune.export.compact import compact_model, masked_model
from hwprune.graph_mapper import build_channel_graph
from hwprune.graph_mapper.flops import count_flops
from hwprune.prune.channel import random_scores, uniform_channel_mask
from hwprune.prune.masks import ChannelMask


class Block(nn.Module):
    """A pre-norm transformer block with a residual stream through attention and an MLP."""

    def __init__(self, dim=16, heads=4, batch_first=True, **call):
        super().__init__()
        self.embed = nn.Linear(6, dim)
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=batch_first)
        self.mlp = nn.Sequential(nn.Linear(dim, 32), nn.GELU(), nn.Linear(32, dim))
        self.head = nn.Linear(dim, 3)
        self.call = call

    def forward(self, x):
        x = self.embed(x)
        y = self.norm(x)
        x = x + self.attn(y, y, y, **self.call)[0]
        x = x + self.mlp(x)
        return self.head(x)


def _groups_by_tensor(graph):
    return {(s.tensor, s.axis): g for g in graph.groups for s in g.slices}


@pytest.mark.parametrize("batch_first", [True, False])
def test_query_key_and_value_dims_are_head_blocked_groups(batch_first):
    model = Block(batch_first=batch_first).eval()
    x = torch.randn(2, 5, 6) if batch_first else torch.randn(5, 2, 6)
    graph = build_channel_graph(model, x)
    by = _groups_by_tensor(graph)
    groups = {g.id: g for g in graph.groups if any(s.tensor == "attn.in_proj_weight" and s.axis == 0 for s in g.slices)}
    assert len(groups) == 2
    qk, v = sorted(groups.values(), key=lambda g: g.slices[0].inner, reverse=True)
    assert qk.size == v.size == 16 and qk.prunable and v.prunable and qk.exact and v.exact
    # query row i and key row 16 + i are one channel; value rows 32.. pair with out_proj columns
    qk_rows = next(s for s in qk.slices if s.tensor == "attn.in_proj_weight")
    assert qk_rows.inner == 2 and sorted(qk_rows.index) == list(range(32))
    assert [s.tensor for s in v.consumers] == ["attn.out_proj.weight"]
    assert len(qk.blocks) == len(v.blocks) == 4 and all(len(b) == 4 for b in qk.blocks)
    # the residual stream runs through the attention output and the MLP, and its LayerNorm (exact: zero-padded)
    stream = by[("attn.out_proj.weight", 0)]
    assert stream is by[("mlp.2.weight", 0)] and stream.prunable and stream.exact


@pytest.mark.parametrize("batch_first", [True, False])
def test_pruned_attention_equals_masked_attention(batch_first):
    torch.manual_seed(0)
    model = Block(batch_first=batch_first).eval()
    x = torch.randn(2, 5, 6) if batch_first else torch.randn(5, 2, 6)
    graph = build_channel_graph(model, x)
    mask = uniform_channel_mask(graph, random_scores(graph, seed=3), 0.5)
    pruned = {graph.groups[g].name for g in mask.pruned_groups()}
    assert "attn" in pruned and "mlp.0" in pruned
    compacted = compact_model(graph, mask)
    assert isinstance(compacted.attn, PrunedMultiheadAttention)
    assert (compacted.attn.qk_dim, compacted.attn.v_dim) == (2, 2)  # half of 4 per head
    stream = next(g for g in graph.groups if any(s.tensor == "attn.out_proj.weight" and s.axis == 0 for s in g.slices))
    assert compacted.attn.in_proj_weight.shape == (3 * 8, int(mask.keep[stream.id].sum()))
    with torch.no_grad():
        want = masked_model(model, graph, mask)(x)
        got = compacted(x)
        dense = model(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, dense, atol=1e-3)


def test_mask_must_keep_equal_width_per_head():
    model = Block().eval()
    graph = build_channel_graph(model, torch.randn(1, 5, 6))
    qk = next(g for g in graph.groups if g.blocks)
    keep = np.ones(qk.size, dtype=bool)
    keep[list(qk.blocks[0][:2])] = False  # two channels from the first head only
    with pytest.raises(MaskMismatchError, match="same number of channels in each of its 4 blocks"):
        ChannelMask({qk.id: keep}, graph.model_name, graph.fingerprint()).validate(graph)


def test_unsupported_attention_calls_fail_closed():
    mask = torch.zeros(5, 5, dtype=torch.bool)
    model = Block(attn_mask=mask).eval()
    graph = build_channel_graph(model, torch.randn(2, 5, 6))
    by = _groups_by_tensor(graph)
    stream = by[("embed.weight", 0)]
    assert not stream.prunable and "MultiheadAttention attn with attention masks" in stream.reason
    assert by[("mlp.0.weight", 0)].prunable  # the MLP hidden channels do not meet the attention


def test_pruned_attention_matches_module_with_weights():
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(12, 3, batch_first=False).eval()
    ours = PrunedMultiheadAttention.from_module(copy.deepcopy(mha), 12, 12).eval()
    q, kv = torch.randn(4, 2, 12), torch.randn(6, 2, 12)
    with torch.no_grad():
        want, want_w = mha(q, kv, kv, need_weights=True)
        got, got_w = ours(q, kv, kv, need_weights=True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_w, want_w, rtol=1e-5, atol=1e-6)


def test_flops_of_fused_attention_match_the_unfused_count():
    mha = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    ours = PrunedMultiheadAttention.from_module(copy.deepcopy(mha), 16, 16).eval()
    x = torch.randn(2, 5, 16)

    class Self(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x, x, x, need_weights=False)[0]

    fused, unfused = count_flops(Self(mha), x), count_flops(Self(ours), x)
    # 4 projections of 10 tokens x 16 x 16, and two 5 x 5 x 16 attention matmuls per sample
    assert fused.flops == unfused.flops == 4 * 10 * 16 * 16 + 2 * 2 * 5 * 5 * 16
    assert "aten::_native_multi_head_attention" not in fused.unsupported_ops


class WrittenOutAttention(nn.Module):
    """Attention as timm writes it: one qkv linear, reshape into heads, unbind, then SDPA or matmuls."""

    def __init__(self, dim=16, heads=4, fused=True, indexed=False):
        super().__init__()
        self.indexed = indexed
        self.embed = nn.Linear(6, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.heads, self.head_dim, self.fused = heads, dim // heads, fused
        self.scale = self.head_dim**-0.5
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        x = self.embed(x)
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = (qkv[0], qkv[1], qkv[2]) if self.indexed else qkv.unbind(0)
        if self.fused:
            y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            y = attn.softmax(dim=-1) @ v
        y = y.transpose(1, 2).reshape(b, n, c)
        return self.head(x + self.proj(y))


@pytest.mark.parametrize(("fused", "indexed"), [(True, False), (False, False), (False, True)])
def test_written_out_attention_prunes_head_dims_exactly(fused, indexed):
    torch.manual_seed(0)
    model = WrittenOutAttention(fused=fused, indexed=indexed).eval()
    x = torch.randn(2, 5, 6)
    graph = build_channel_graph(model, x)
    by = _groups_by_tensor(graph)
    inner = by[("qkv.weight", 0)]
    # dimension j of every head, for q, k and v alike, is one channel: 4 channels of 12 rows each
    assert inner.prunable and inner.exact and inner.size == 4
    assert by[("proj.weight", 1)] is inner
    mask = uniform_channel_mask(graph, random_scores(graph, seed=2), 0.5)
    assert inner.id in mask.pruned_groups()
    compacted = compact_model(graph, mask)
    assert compacted.qkv.weight.shape[0] == 3 * 4 * 2  # 2 of 4 dims kept in every head
    with torch.no_grad():
        torch.testing.assert_close(compacted(x), masked_model(model, graph, mask)(x), rtol=1e-5, atol=1e-5)
    if fused:  # the original softmax temperature is written into the compacted call
        sdpa = next(n for n in compacted.graph.nodes if n.target is torch.nn.functional.scaled_dot_product_attention)
        assert sdpa.kwargs["scale"] == pytest.approx(0.5)


class FunctionalLayers(nn.Module):
    """F.linear and F.batch_norm on parameters read directly (as timm's fused norm-act layers do)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.fc1 = nn.Linear(8, 12)
        self.fc2 = nn.Linear(12, 4)

    def forward(self, x):
        bn = self.bn
        x = torch.nn.functional.batch_norm(self.conv(x), bn.running_mean, bn.running_var, bn.weight, bn.bias)
        x = x.mean((2, 3))
        x = torch.relu(torch.nn.functional.linear(x, self.fc1.weight, self.fc1.bias))
        return torch.nn.functional.linear(x, self.fc2.weight, self.fc2.bias)


def test_functional_linear_and_batch_norm_map_like_their_modules():
    model = FunctionalLayers().eval()
    x = torch.randn(2, 3, 8, 8)
    graph = build_channel_graph(model, x)
    by = _groups_by_tensor(graph)
    conv, hidden = by[("conv.weight", 0)], by[("fc1.weight", 0)]
    assert conv.prunable and hidden.prunable and conv.size == 8 and hidden.size == 12
    assert {s.tensor for s in conv.params} == {"bn.running_mean", "bn.running_var", "bn.weight", "bn.bias"}
    assert [(s.tensor, s.axis) for s in conv.consumers] == [("fc1.weight", 1)]
    assert [(s.tensor, s.axis) for s in hidden.consumers] == [("fc2.weight", 1)]
    assert graph.prunable_macs_share() == 1.0
    mask = uniform_channel_mask(graph, random_scores(graph, seed=0), 0.5)
    compacted = compact_model(graph, mask)
    with torch.no_grad():
        torch.testing.assert_close(compacted(x), masked_model(model, graph, mask)(x), rtol=1e-5, atol=1e-5)


def test_functional_linear_on_frozen_input_freezes_its_weight_columns():
    class Frozen(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(5, 4)

        def forward(self, x):  # the network input is fixed: fc's input columns cannot shrink
            return torch.nn.functional.linear(x, self.fc.weight, self.fc.bias)

    graph = build_channel_graph(Frozen().eval(), torch.randn(2, 5))
    assert not any(s.axis == 1 for g in graph.prunable_groups for s in g.slices)


@pytest.mark.parametrize(
    ("size", "shift", "v2"), [((8, 8), (2, 2), False), ((9, 7), (2, 2), True), ((4, 4), (0, 0), False)]
)
def test_window_attention_rewrite_equals_torchvision_at_full_width(size, shift, v2):
    from torchvision.models.swin_transformer import shifted_window_attention

    from hwprune.export.attention import pruned_shifted_window_attention

    torch.manual_seed(0)
    dim, heads, window = 12, 3, [4, 4]
    x = torch.randn(2, *size, dim)
    qkv_w, qkv_b = torch.randn(3 * dim, dim) / 4, torch.randn(3 * dim)
    proj_w, proj_b = torch.randn(dim, dim) / 4, torch.randn(dim)
    bias = torch.randn(1, heads, 16, 16)
    logit_scale = torch.log(10 * torch.rand(heads, 1, 1) + 1) if v2 else None
    common = dict(
        window_size=window,
        num_heads=heads,
        shift_size=list(shift),
        qkv_bias=qkv_b,
        proj_bias=proj_b,
        logit_scale=logit_scale,
        training=False,
    )
    want = shifted_window_attention(x, qkv_w, proj_w, bias, **common)
    got = pruned_shifted_window_attention(x, qkv_w, proj_w, bias, **common, qk_dim=4, v_dim=4, scale=0.5)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
