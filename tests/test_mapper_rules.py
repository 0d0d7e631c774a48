"""Hand-built nets whose channel groups are known: the mapper must find exactly these groups, and
must fail closed (freeze, with a reason naming the cause) where it cannot see through an op."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hwprune.errors import MaskMismatchError
from hwprune.export.compact import compact_model, masked_model
from hwprune.export.verify import max_rel_diff, randomize_for_check
from hwprune.graph_mapper import build_channel_graph
from hwprune.graph_mapper.types import CONSUMER, GROUPED_IN, PARAM, PRODUCER
from hwprune.layers import zero_padded_layer_norm
from hwprune.prune.channel import random_scores, uniform_channel_mask
from hwprune.prune.masks import ChannelMask

# ----------------------------------------------------------------------------- helpers


def _build(model, shape=(2, 3, 8, 8), seed=0):
    model = randomize_for_check(model, seed).eval()
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return model, x, build_channel_graph(model, x)


def groups_with(graph, tensor, axis=0, role=None):
    """The groups with a slice on ``tensor``'s ``axis`` (and ``role``), in id order."""
    return [
        g
        for g in graph.groups
        if any(s.tensor == tensor and s.axis == axis and (role is None or s.role == role) for s in g.slices)
    ]


def group_of(graph, tensor, axis=0, role=None):
    found = groups_with(graph, tensor, axis, role)
    assert len(found) == 1, f"{tensor} axis {axis}: {len(found)} groups\n{graph.explain()}"
    return found[0]


def slice_of(group, tensor, axis):
    found = [s for s in group.slices if s.tensor == tensor and s.axis == axis]
    assert len(found) == 1, f"{tensor} axis {axis} in group {group.id}: {len(found)} slices\n{group.explain()}"
    return found[0]


def tensors(group, role):
    return {(s.tensor, s.axis) for s in group.slices if s.role == role}


def assert_compacts_exactly(model, x, graph, ratio=0.5, seed=1):
    """A random mask over the prunable groups compacts to a model equal to the masked model."""
    mask = uniform_channel_mask(graph, random_scores(graph, seed), ratio)
    assert mask.pruned_groups(), "the mask removes nothing"
    compacted = compact_model(graph, mask).eval()
    oracle = masked_model(model, graph, mask).eval()
    with torch.no_grad():
        diff = max_rel_diff(compacted(x), oracle(x))
    assert diff <= 1e-4, f"compacted differs from masked by {diff:.2e}\n{graph.explain()}"
    n_before = sum(p.numel() for p in model.parameters())
    n_after = sum(p.numel() for p in compacted.parameters())
    assert n_after < n_before
    return mask, compacted


def assert_well_formed(graph):
    for g in graph.groups:
        assert g.prunable != bool(g.reason), f"group {g.id}: prunable={g.prunable} reason={g.reason!r}"
        for s in g.slices:
            assert len(s.index) == g.size * s.inner, s
            assert len(set(s.index)) == len(s.index), s


# ----------------------------------------------------------------------------- nets


class ConvChain(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        x = F.relu(self.b2(self.c2(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def test_conv_chain_one_group_per_output():
    model, x, graph = _build(ConvChain())
    assert_well_formed(graph)
    assert [g.size for g in graph.groups] == [8, 6, 5]
    g1, g2, g3 = graph.groups
    assert tensors(g1, PRODUCER) == {("c1.weight", 0), ("c1.bias", 0)}
    assert tensors(g1, CONSUMER) == {("c2.weight", 1)}
    assert tensors(g1, PARAM) == {(f"b1.{a}", 0) for a in ("weight", "bias", "running_mean", "running_var")}
    assert tensors(g2, PRODUCER) == {("c2.weight", 0)}
    assert tensors(g2, CONSUMER) == {("fc.weight", 1)}
    assert g1.prunable and g2.prunable and g1.exact and g2.exact
    assert not g3.prunable and g3.reason == "reaches the model output"
    assert tensors(g3, PRODUCER) == {("fc.weight", 0), ("fc.bias", 0)}
    assert all(s.offset == 0 and s.inner == 1 for g in graph.groups for s in g.slices)
    # the input channels (RGB) belong to no group
    assert not groups_with(graph, "c1.weight", axis=1)
    mask, compacted = assert_compacts_exactly(model, x, graph)
    assert compacted.c1.out_channels == compacted.c2.in_channels == int(mask.keep[0].sum())
    assert compacted.b2.num_features == compacted.fc.in_features == int(mask.keep[1].sum())


def test_mask_on_frozen_or_empty_group_is_refused():
    _, _, graph = _build(ConvChain())
    keep = np.ones(5, dtype=bool)
    keep[0] = False
    with pytest.raises(MaskMismatchError, match="frozen group"):
        ChannelMask({2: keep}, graph.model_name, graph.fingerprint()).validate(graph)
    with pytest.raises(MaskMismatchError, match="keeps no channel"):
        ChannelMask({0: np.zeros(8, dtype=bool)}, graph.model_name, graph.fingerprint()).validate(graph)


class Residual(nn.Module):
    def __init__(self, projection: bool):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.c2, self.b2 = nn.Conv2d(6, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.c3, self.b3 = nn.Conv2d(4, 6 if not projection else 8, 3, padding=1), nn.BatchNorm2d(6 + 2 * projection)
        self.proj = nn.Conv2d(6, 8, 1, bias=False) if projection else None
        self.head = nn.Conv2d(6 + 2 * projection, 2, 1)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        short = x if self.proj is None else self.proj(x)
        y = self.b3(self.c3(F.relu(self.b2(self.c2(x)))))
        return self.head(F.relu(y + short))


def test_residual_identity_ties_block_output_to_its_input():
    model, x, graph = _build(Residual(projection=False))
    assert_well_formed(graph)
    g = group_of(graph, "c1.weight", 0)
    assert {"c1.weight", "c3.weight"} <= {s.tensor for s in g.producers}
    assert {("c2.weight", 1), ("head.weight", 1)} <= tensors(g, CONSUMER)
    assert {("b1.weight", 0), ("b3.weight", 0)} <= tensors(g, PARAM)
    assert g.prunable and g.size == 6
    inner = group_of(graph, "c2.weight", 0)
    assert inner.id != g.id and inner.prunable and tensors(inner, CONSUMER) == {("c3.weight", 1)}
    assert_compacts_exactly(model, x, graph)


def test_residual_projection_ties_projection_and_block_output():
    model, x, graph = _build(Residual(projection=True))
    assert_well_formed(graph)
    g = group_of(graph, "proj.weight", 0)
    assert {s.tensor for s in g.producers} >= {"proj.weight", "c3.weight", "c3.bias"}
    assert tensors(g, CONSUMER) == {("head.weight", 1)}
    # the block input is not tied to the output when a projection stands between them
    g_in = group_of(graph, "c1.weight", 0)
    assert g_in.id != g.id
    assert {("proj.weight", 1), ("c2.weight", 1)} == tensors(g_in, CONSUMER)
    assert g.prunable and g_in.prunable
    assert_compacts_exactly(model, x, graph)


class Concat(nn.Module):
    def __init__(self, c1=4, c2=6):
        super().__init__()
        self.a = nn.Conv2d(3, c1, 1)
        self.b = nn.Conv2d(3, c2, 3, padding=1)
        self.bn = nn.BatchNorm2d(c1 + c2)
        self.out = nn.Conv2d(c1 + c2, 3, 1)

    def forward(self, x):
        return self.out(F.relu(self.bn(torch.cat([self.a(x), self.b(x)], dim=1))))


def test_concat_consumer_offsets():
    model, x, graph = _build(Concat(4, 6))
    assert_well_formed(graph)
    ga, gb = group_of(graph, "a.weight", 0), group_of(graph, "b.weight", 0)
    assert ga.id != gb.id and ga.size == 4 and gb.size == 6
    sa, sb = slice_of(ga, "out.weight", 1), slice_of(gb, "out.weight", 1)
    assert (sa.offset, len(sa.index)) == (0, 4)
    assert (sb.offset, len(sb.index)) == (4, 6)
    assert slice_of(ga, "bn.weight", 0).index == tuple(range(4))
    assert slice_of(gb, "bn.running_var", 0).index == tuple(range(4, 10))
    assert_compacts_exactly(model, x, graph)


class DenseConcat(nn.Module):
    """DenseNet-style: the input itself is concatenated; its positions stay fixed."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 5, 3, padding=1)
        self.out = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.out(torch.cat([x, self.a(x)], 1))


def test_dense_concat_keeps_input_positions_fixed():
    model, x, graph = _build(DenseConcat())
    g = group_of(graph, "a.weight", 0)
    assert slice_of(g, "out.weight", 1).index == (3, 4, 5, 6, 7)
    out_site = next(s for s in graph.sites if s.tensor == "out.weight" and s.axis == 1)
    assert (out_site.roots[:3] == -1).all() and (out_site.roots[3:] >= 0).all()
    assert_compacts_exactly(model, x, graph)


class FlattenHead(nn.Module):
    def __init__(self, pool_to=2):
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(pool_to)
        self.fc1 = nn.Linear(4 * pool_to * pool_to, 7)
        self.fc2 = nn.Linear(7, 3)

    def forward(self, x):
        x = self.pool(F.relu(self.c1(x)))
        return self.fc2(F.relu(self.fc1(x.view(x.size(0), -1))))


@pytest.mark.parametrize("pool_to", [1, 2, 3])
def test_flatten_linear_inner_is_spatial_size(pool_to):
    model, x, graph = _build(FlattenHead(pool_to))
    assert_well_formed(graph)
    g = group_of(graph, "c1.weight", 0)
    s = slice_of(g, "fc1.weight", 1)
    assert s.role == CONSUMER and s.inner == pool_to * pool_to
    assert s.index == tuple(range(4 * pool_to * pool_to))  # channel k: features k*HW .. (k+1)*HW - 1
    hidden = group_of(graph, "fc1.weight", 0)
    assert hidden.prunable and tensors(hidden, CONSUMER) == {("fc2.weight", 1)}
    assert not group_of(graph, "fc2.weight", 0).prunable
    mask, compacted = assert_compacts_exactly(model, x, graph)
    assert compacted.fc1.in_features == int(mask.keep[g.id].sum()) * pool_to * pool_to


class Depthwise(nn.Module):
    def __init__(self, mult=1):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 6, 1), nn.BatchNorm2d(6)
        self.dw, self.b2 = nn.Conv2d(6, 6 * mult, 3, padding=1, groups=6), nn.BatchNorm2d(6 * mult)
        self.pw = nn.Conv2d(6 * mult, 4, 1)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        return self.pw(F.relu(self.b2(self.dw(x))))


@pytest.mark.parametrize("mult", [1, 2])
def test_depthwise_conv_passes_channels_through(mult):
    model, x, graph = _build(Depthwise(mult))
    assert_well_formed(graph)
    g = group_of(graph, "c1.weight", 0)
    assert group_of(graph, "dw.weight", 0).id == g.id
    assert groups_with(graph, "dw.weight", 1) == []  # one input column per group: nothing to slice
    dw = slice_of(g, "dw.weight", 0)
    assert dw.role == PRODUCER and dw.inner == mult
    assert slice_of(g, "pw.weight", 1).inner == mult
    assert slice_of(g, "b2.weight", 0).inner == mult
    # channel k of c1 -> dw rows k*mult .. k*mult + mult - 1
    assert dw.index == tuple(range(6 * mult))
    assert g.blocks is None and g.prunable
    mask, compacted = assert_compacts_exactly(model, x, graph)
    k = int(mask.keep[g.id].sum())
    assert (compacted.dw.groups, compacted.dw.in_channels, compacted.dw.out_channels) == (k, k, k * mult)


class Grouped(nn.Module):
    def __init__(self, groups=2):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 1)
        self.gc = nn.Conv2d(8, 4 * groups, 3, padding=1, groups=groups)
        self.c3 = nn.Conv2d(4 * groups, 3, 1)

    def forward(self, x):
        return self.c3(F.relu(self.gc(F.relu(self.c1(x)))))


@pytest.mark.parametrize("groups", [2, 4])
def test_grouped_conv_blocks_and_unequal_mask_refused(groups):
    model, x, graph = _build(Grouped(groups))
    assert_well_formed(graph)
    g = group_of(graph, "c1.weight", 0)
    assert g.prunable and g.blocks is not None and len(g.blocks) == groups
    per = 8 // groups
    assert [sorted(b) for b in g.blocks] == [list(range(i * per, (i + 1) * per)) for i in range(groups)]
    assert slice_of(g, "gc.weight", 1).kind == GROUPED_IN
    out = group_of(graph, "gc.weight", 0)
    assert out.blocks is not None and len(out.blocks) == groups  # output rows are blocked too
    unequal = np.ones(8, dtype=bool)
    unequal[0] = False  # one removed in the first conv group only
    with pytest.raises(MaskMismatchError, match="same number"):
        ChannelMask({g.id: unequal}, graph.model_name, graph.fingerprint()).validate(graph)
    equal = np.ones(8, dtype=bool)
    equal[[b[-1] for b in g.blocks]] = False  # one removed in every conv group
    mask = ChannelMask({g.id: equal}, graph.model_name, graph.fingerprint())
    mask.validate(graph)
    compacted = compact_model(graph, mask).eval()
    with torch.no_grad():
        assert max_rel_diff(compacted(x), masked_model(model, graph, mask).eval()(x)) <= 1e-4
    assert compacted.gc.in_channels == 8 - groups and compacted.gc.weight.shape[1] == per - 1
    assert_compacts_exactly(model, x, graph)


class UnknownOp(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 5, 1), nn.Conv2d(5, 2, 1)
        self.fn = fn

    def forward(self, x):
        return self.c3(F.relu(self.c2(self.fn(self.c1(x)))))


def _cumsum(t):
    return torch.cumsum(t, dim=1)


def _roll(t):
    return t.roll(1, dims=1)


def _fft(t):
    return torch.fft.fft(t, dim=1).real


def _flip(t):
    return t.flip(1)


@pytest.mark.parametrize(("fn", "op"), [(_cumsum, "cumsum"), (_roll, "roll"), (_fft, "fft"), (_flip, "flip")])
def test_op_without_handler_freezes_with_its_name(fn, op):
    model, x, graph = _build(UnknownOp(fn))
    assert_well_formed(graph)
    g = group_of(graph, "c1.weight", 0)
    assert not g.prunable and op in g.reason and "no handler" in g.reason
    # the channels after the unknown op are fresh (c2's output) and stay prunable
    g2 = group_of(graph, "c2.weight", 0)
    assert g2.prunable and tensors(g2, CONSUMER) == {("c3.weight", 1)}
    assert_compacts_exactly(model, x, graph)


class ChannelOps(nn.Module):
    """Weight-free ops that handlers must freeze: reduction over channels, softmax over channels,
    advanced indexing of channels."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.c1, self.c2 = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = self.c1(x)
        if self.kind == "sum":
            z = y.sum(1, keepdim=True) * torch.ones_like(y)
        elif self.kind == "softmax":
            z = torch.softmax(y, dim=1)
        else:
            z = y[:, [0, 2, 1, 3]]
        return self.c2(z)


@pytest.mark.parametrize(
    ("kind", "words"), [("sum", "reduces over channels"), ("softmax", "softmax"), ("index", "advanced indexing")]
)
def test_channel_mixing_ops_freeze(kind, words):
    _, _, graph = _build(ChannelOps(kind))
    g = group_of(graph, "c1.weight", 0)
    assert not g.prunable and words in g.reason


class SharedConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 5, 1), nn.Conv2d(3, 5, 3, padding=1)
        self.shared = nn.Conv2d(5, 6, 3, padding=1)
        self.out = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.out(F.relu(self.shared(self.a(x))) + F.relu(self.shared(self.b(x))))


def test_shared_conv_ties_its_inputs_across_calls():
    model, x, graph = _build(SharedConv())
    assert_well_formed(graph)
    g_in = group_of(graph, "a.weight", 0)
    assert {"a.weight", "b.weight"} <= {s.tensor for s in g_in.producers}
    assert tensors(g_in, CONSUMER) == {("shared.weight", 1)}
    g_out = group_of(graph, "shared.weight", 0)
    assert g_out.prunable and tensors(g_out, CONSUMER) == {("out.weight", 1)}
    # one site per tensor axis, even though the module ran twice
    assert sum(1 for s in graph.sites if s.tensor == "shared.weight") == 2
    assert_compacts_exactly(model, x, graph)


class SharedSquare(nn.Module):
    """The same cin == cout conv applied twice in a row: its input and output channels are one group."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.shared = nn.Conv2d(4, 4, 3, padding=1)
        self.out = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.out(self.shared(F.relu(self.shared(self.a(x)))))


def test_shared_conv_called_in_sequence_ties_input_and_output():
    model, x, graph = _build(SharedSquare())
    g = group_of(graph, "a.weight", 0)
    assert group_of(graph, "shared.weight", 0).id == g.id
    assert group_of(graph, "shared.weight", 1).id == g.id
    assert g.prunable
    assert_compacts_exactly(model, x, graph)


class OwnLayerNorm(nn.LayerNorm):
    """A LayerNorm subclass with code of its own (as torchvision's LayerNorm2d): traced through, inexact."""

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class ChannelsLastLayerNorm(nn.Module):
    def __init__(self, norm=nn.LayerNorm):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.ln = norm(6)
        self.c2 = nn.Conv2d(6, 4, 1)
        self.c3 = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        y = self.ln(self.c1(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.c3(F.relu(self.c2(y)))


@pytest.mark.parametrize("front_end", ["fx", "export"])
def test_layer_norm_over_channels_compacts_exactly_zero_padded(front_end):
    """nn.LayerNorm's channels are exact: the compacted norm normalises over the original width, counting the
    removed channels as the zeros the masked model feeds it. Negative control: the same compacted model with a
    standard LayerNorm over the kept channels differs from the masked model."""
    from hwprune.layers import ZeroPaddedLayerNorm

    model = ChannelsLastLayerNorm().eval()
    with torch.no_grad():
        model.ln.weight.uniform_(0.5, 1.5)
        model.ln.bias.normal_(0, 0.3)
    x = torch.randn(2, 3, 5, 5)
    graph = build_channel_graph(model, x, "ln", front_end=front_end)
    g = group_of(graph, "c1.weight", 0)
    assert g.prunable and g.exact
    assert tensors(g, PARAM) == {("ln.weight", 0), ("ln.bias", 0)}
    keep = np.array([True, False, True, True, False, True])
    mask = ChannelMask({g.id: keep}, graph.model_name, graph.fingerprint())
    compacted = compact_model(graph, mask).eval()
    assert isinstance(compacted.ln, ZeroPaddedLayerNorm) and compacted.ln.width == 6
    assert compacted.ln.normalized_shape == (4,) and compacted.c2.in_channels == 4
    with torch.no_grad():
        want = masked_model(model, graph, mask)(x)
        assert torch.allclose(compacted(x), want, atol=1e-5)
        compacted.ln.width = 4
        assert not torch.allclose(compacted(x), want, atol=1e-3)


def test_zero_padded_layer_norm_equals_layer_norm_of_the_zero_padded_input():
    from hwprune.layers import ZeroPaddedLayerNorm

    torch.manual_seed(0)
    full = nn.LayerNorm(10, eps=1e-3)
    with torch.no_grad():
        full.weight.uniform_(0.5, 1.5)
        full.bias.normal_()
    kept = torch.tensor([0, 2, 3, 7, 9])
    small = ZeroPaddedLayerNorm(5, 10, eps=1e-3)
    with torch.no_grad():
        small.weight.copy_(full.weight[kept])
        small.bias.copy_(full.bias[kept])
    x = 3 * torch.randn(4, 5) + 1
    padded = torch.zeros(4, 10)
    padded[:, kept] = x
    torch.testing.assert_close(small(x), full(padded)[:, kept])
    whole = ZeroPaddedLayerNorm(10, 10, eps=1e-3)
    whole.load_state_dict(full.state_dict())
    torch.testing.assert_close(whole(padded), full(padded))  # nothing removed: a LayerNorm


def test_layer_norm_with_code_of_its_own_is_exact_in_fx():
    """fx traces a LayerNorm subclass's forward to its F.layer_norm call and compaction rewrites that call into
    the zero-padded norm. Negative control: the same call with the kept width as its width differs."""
    model = ChannelsLastLayerNorm(OwnLayerNorm).eval()
    with torch.no_grad():
        model.ln.weight.uniform_(0.5, 1.5)
        model.ln.bias.normal_(0, 0.3)
    x = torch.randn(2, 3, 5, 5)
    graph = build_channel_graph(model, x, "own-ln", front_end="fx")
    g = group_of(graph, "c1.weight", 0)
    assert g.prunable and g.exact and tensors(g, PARAM) == {("ln.weight", 0), ("ln.bias", 0)}
    mask = ChannelMask({g.id: np.array([False, True, True, False, True, True])}, graph.model_name, graph.fingerprint())
    compacted = compact_model(graph, mask).eval()
    (call,) = [n for n in compacted.graph.nodes if n.target is zero_padded_layer_norm]
    assert call.kwargs["width"] == 6 and call.args[1] == (4,)
    with torch.no_grad():
        want = masked_model(model, graph, mask)(x)
        assert torch.allclose(compacted(x), want, atol=1e-5)
        call.kwargs = {**call.kwargs, "width": 4}
        compacted.recompile()
        assert not torch.allclose(compacted(x), want, atol=1e-3)


def test_layer_norm_with_code_of_its_own_is_inexact_in_export():
    """The export front-end compacts the user's module, whose F.layer_norm call it cannot rewrite: inexact,
    pruned only on request, and then its normalized_shape follows the weight."""
    model = ChannelsLastLayerNorm(OwnLayerNorm).eval()
    x = torch.randn(2, 3, 5, 5)
    graph = build_channel_graph(model, x, "own-ln", front_end="export")
    g = group_of(graph, "c1.weight", 0)
    assert g.prunable and not g.exact and "layer_norm" in g.inexact_reason
    assert tensors(g, PARAM) == {("ln.weight", 0), ("ln.bias", 0)}
    assert tensors(g, CONSUMER) == {("c2.weight", 1)}
    g2 = group_of(graph, "c2.weight", 0)
    assert g2.exact and g2.prunable
    # layer-uniform pruning leaves inexact groups alone unless asked
    mask = uniform_channel_mask(graph, random_scores(graph, 0), 0.5)
    assert g.id not in mask.keep and g2.id in mask.keep
    # compaction of the inexact group still runs and yields the right shapes
    mask = uniform_channel_mask(graph, random_scores(graph, 0), 0.5, include_inexact=True)
    compacted = compact_model(graph, mask).eval()
    k = int(mask.keep[g.id].sum())
    assert type(compacted.ln) is OwnLayerNorm and compacted.ln.normalized_shape == (k,)
    assert compacted.c2.in_channels == k
    with torch.no_grad():
        assert compacted(x).shape == model(x).shape


class Shuffle(nn.Module):
    """ShuffleNet-style: two branches concatenated, then view / transpose / view with 2 groups."""

    def __init__(self, c=4, literal=False):
        super().__init__()
        self.c, self.literal = c, literal
        self.a, self.b = nn.Conv2d(3, c, 1), nn.Conv2d(3, c, 3, padding=1)
        self.out = nn.Conv2d(2 * c, 5, 1)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], 1)
        if self.literal:
            y = y.view(2, 2, self.c, 8, 8).transpose(1, 2).reshape(2, 2 * self.c, 8, 8)
        else:
            n, c, h, w = y.shape
            y = y.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        return self.out(F.relu(y))


@pytest.mark.parametrize("literal", [False, True])
def test_channel_shuffle_ties_the_two_halves(literal):
    model, x, graph = _build(Shuffle(4, literal))
    assert_well_formed(graph)
    g = group_of(graph, "a.weight", 0)
    assert group_of(graph, "b.weight", 0).id == g.id
    assert g.size == 4 and g.prunable
    s = slice_of(g, "out.weight", 1)
    assert s.inner == 2
    # after the shuffle, channel j of branch a sits at 2j and channel j of branch b at 2j + 1
    assert [set(s.index[2 * k : 2 * k + 2]) for k in range(4)] == [{2 * k, 2 * k + 1} for k in range(4)]
    site = graph.sites[s.site]
    a_roots = next(t for t in graph.sites if t.tensor == "a.weight" and t.axis == 0).roots
    b_roots = next(t for t in graph.sites if t.tensor == "b.weight" and t.axis == 0).roots
    assert np.array_equal(site.roots[0::2], a_roots) and np.array_equal(site.roots[1::2], b_roots)
    mask, compacted = assert_compacts_exactly(model, x, graph)
    assert compacted.out.in_channels == 2 * int(mask.keep[g.id].sum())


class ChunkShuffle(nn.Module):
    """ShuffleNetV2 unit: chunk, transform one half, concat, shuffle."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 1)
        self.branch = nn.Conv2d(4, 4, 3, padding=1)
        self.out = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        x = F.relu(self.c1(x))
        x1, x2 = x.chunk(2, dim=1)
        y = torch.cat([x1, F.relu(self.branch(x2))], 1)
        n, c, h, w = y.shape
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.out(y)


def test_chunk_then_shuffle():
    model, x, graph = _build(ChunkShuffle())
    assert_well_formed(graph)
    first = group_of(graph, "branch.weight", 0)
    # the first half of c1 passes through and is tied to the branch output channel by channel
    assert {s.tensor for s in first.producers} >= {"c1.weight", "branch.weight"}
    assert slice_of(first, "c1.weight", 0).index == (0, 1, 2, 3)
    assert slice_of(first, "out.weight", 1).inner == 2
    second = group_of(graph, "branch.weight", 1)
    assert second.id != first.id and slice_of(second, "c1.weight", 0).index == (4, 5, 6, 7)
    assert first.prunable and second.prunable
    assert_compacts_exactly(model, x, graph)


class InputAdd(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 3, 3, padding=1)
        self.c2 = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return self.c2(self.c1(x) + x)


def test_adding_network_input_freezes_the_conv():
    _, _, graph = _build(InputAdd())
    g = group_of(graph, "c1.weight", 0)
    assert not g.prunable and "fixed-size tensor" in g.reason
    # the sum carries c1's (frozen) channels into c2: one frozen group, nothing prunable before c2
    assert group_of(graph, "c2.weight", 1).id == g.id
    assert [grp.id for grp in graph.prunable_groups] == []


class SqueezeExcite(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.fc1, self.fc2 = nn.Conv2d(6, 3, 1), nn.Conv2d(3, 6, 1)
        self.out = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        x = F.relu(self.c1(x))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return self.out(x * s)


def test_squeeze_excite_ties_gate_to_the_gated_channels():
    model, x, graph = _build(SqueezeExcite())
    g = group_of(graph, "c1.weight", 0)
    assert {"c1.weight", "fc2.weight"} <= {s.tensor for s in g.producers}
    assert {("fc1.weight", 1), ("out.weight", 1)} == tensors(g, CONSUMER)
    squeeze = group_of(graph, "fc1.weight", 0)
    assert squeeze.prunable and squeeze.id != g.id
    assert_compacts_exactly(model, x, graph)


class SliceChannels(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 1)
        self.a, self.b = nn.Conv2d(3, 3, 1), nn.Conv2d(5, 3, 1)

    def forward(self, x):
        y = self.c1(x)
        return self.a(y[:, :3]) + self.b(y[:, 3:])


def test_channel_slice_bounds_are_rewritten():
    model, x, graph = _build(SliceChannels())
    assert_well_formed(graph)
    gs = groups_with(graph, "c1.weight", 0)
    assert len(gs) == 2
    assert slice_of(gs[0], "a.weight", 1).index == (0, 1, 2)
    assert slice_of(gs[1], "b.weight", 1).index == (0, 1, 2, 3, 4)
    assert slice_of(gs[1], "c1.weight", 0).index == (3, 4, 5, 6, 7)
    assert_compacts_exactly(model, x, graph)


class LayerScale(nn.Module):
    def __init__(self, shape):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 1), nn.Conv2d(6, 2, 1)
        self.gamma = nn.Parameter(torch.ones(shape))

    def forward(self, x):
        y = self.c1(x)
        return self.c3(y + self.gamma * self.c2(y))


@pytest.mark.parametrize("shape", [(6, 1, 1), (1, 6, 1, 1)])
def test_layer_scale_parameter_rides_along(shape):
    model, x, graph = _build(LayerScale(shape))
    g = group_of(graph, "c1.weight", 0)
    assert {"c1.weight", "c2.weight"} <= {s.tensor for s in g.producers}
    assert ("gamma", len(shape) - 3) in tensors(g, PARAM)
    mask, compacted = assert_compacts_exactly(model, x, graph)
    assert compacted.gamma.shape[len(shape) - 3] == int(mask.keep[g.id].sum())


class SpatialConcat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 5, 1), nn.Conv2d(3, 5, 3, padding=1)
        self.out = nn.Conv2d(5, 2, 1)

    def forward(self, x):
        return self.out(torch.cat([self.a(x), self.b(x)], dim=2))


def test_concat_along_space_ties_the_channels():
    model, x, graph = _build(SpatialConcat())
    g = group_of(graph, "a.weight", 0)
    assert group_of(graph, "b.weight", 0).id == g.id and g.size == 5 and g.prunable
    assert_compacts_exactly(model, x, graph)


class ChannelPad(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.out = nn.Conv2d(3, 6, 1), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.out(F.pad(self.a(x), (0, 0, 0, 0, 1, 1)))


def test_padding_the_channel_axis_freezes():
    _, _, graph = _build(ChannelPad())
    g = group_of(graph, "a.weight", 0)
    assert not g.prunable and "reaches the channel axis" in g.reason


class GroupedOverConcat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)
        self.gc = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.out(self.gc(torch.cat([self.a(x), self.b(x)], 1)))


def test_grouped_conv_over_several_groups_freezes_them():
    model, x, graph = _build(GroupedOverConcat())
    for name in ("a.weight", "b.weight"):
        g = group_of(graph, name, 0)
        assert not g.prunable and "grouped gc.weight spans several channel groups" in g.reason
    out = group_of(graph, "gc.weight", 0)
    assert out.prunable and len(out.blocks) == 2
    assert_compacts_exactly(model, x, graph)


class TokenLinear(nn.Module):
    """Channels moved off axis 1 by flatten + transpose: a Linear over tokens sees them on axis 1."""

    def __init__(self):
        super().__init__()
        self.a, self.f, self.g = nn.Conv2d(3, 6, 1), nn.Linear(6, 4), nn.Linear(64, 3)

    def forward(self, x):
        y = self.f(self.a(x).flatten(2).transpose(1, 2))  # [n, hw, 4]
        return self.g(y.transpose(1, 2))  # mixes the 64 tokens: [n, 4, 3]


def test_linear_over_another_axis_freezes_the_channels_it_sees():
    model, x, graph = _build(TokenLinear())
    assert group_of(graph, "a.weight", 0).prunable
    g = group_of(graph, "f.weight", 0)
    assert not g.prunable and "channels vary along other axes" in g.reason
    assert_compacts_exactly(model, x, graph)


class ChannelsLastLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.fc, self.c2 = nn.Conv2d(3, 6, 3, padding=1), nn.Linear(6, 5), nn.Conv2d(5, 2, 1)

    def forward(self, x):
        y = F.gelu(self.fc(self.c1(x).permute(0, 2, 3, 1)))
        return self.c2(y.permute(0, 3, 1, 2))


class LinearSE(nn.Module):
    """Squeeze-excite with Linear layers; the gate is brought back to [n, c, 1, 1] in several ways."""

    def __init__(self, how):
        super().__init__()
        self.c1, self.out = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 2, 1)
        self.f1, self.f2 = nn.Linear(6, 3), nn.Linear(3, 6)
        self.how = how

    def forward(self, x):
        y = self.c1(x)
        z = torch.sigmoid(self.f2(F.relu(self.f1(y.mean((2, 3))))))
        if self.how == "index":
            z = z[:, :, None, None]
        elif self.how == "view":
            z = z.view(2, 6, 1, 1)
        elif self.how == "view-1":
            z = z.view(-1, 6, 1, 1)
        elif self.how == "unsqueeze":
            z = z.unsqueeze(-1).unsqueeze(-1)
        else:
            z = z.view(2, 6, 1, 1).expand(2, 6, 8, 8)
        return self.out(y * z)


class Chunk3(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 1)
        self.a, self.b, self.c = nn.Conv2d(3, 2, 1), nn.Conv2d(3, 2, 1), nn.Conv2d(2, 2, 1)

    def forward(self, x):
        p, q, r = self.c1(x).chunk(3, 1)  # sizes 3, 3, 2
        return self.a(p) + self.b(q) + self.c(r)


class OverlappingSlices(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 1)
        self.a, self.b = nn.Conv2d(3, 2, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        y = self.c1(x)
        return self.a(y[:, -3:]) + self.b(y[:, 1:5])


class LinearBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1, stride=2)
        self.f1, self.bn, self.f2 = nn.Linear(64, 10), nn.BatchNorm1d(10), nn.Linear(10, 3)

    def forward(self, x):
        return self.f2(F.relu(self.bn(self.f1(self.c1(x).flatten(1)))))


class UpsampleAdd(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.Conv2d(3, 6, 1)
        self.out = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.out(F.interpolate(self.a(x), scale_factor=2.0, mode="nearest") + self.b(x))


class DeadBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.unused, self.c2 = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = self.c1(x)
        self.unused(y)
        return self.c2(y)


class PReLUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.act, self.c2 = nn.Conv2d(3, 8, 1), nn.PReLU(8), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.c2(self.act(self.c1(x)))


class Conv1dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.bn = nn.Conv1d(3, 8, 3, padding=1), nn.BatchNorm1d(8)
        self.dw, self.c3 = nn.Conv1d(8, 8, 3, padding=1, groups=8), nn.Conv1d(8, 2, 1)

    def forward(self, x):
        return self.c3(self.dw(F.relu(self.bn(self.c1(x)))))


@pytest.mark.parametrize(
    ("make", "shape"),
    [
        pytest.param(ChannelsLastLinear, (2, 3, 8, 8), id="channels-last-linear"),
        *(
            pytest.param(lambda h=h: LinearSE(h), (2, 3, 8, 8), id=f"linear-se-{h}")
            for h in ("index", "view", "view-1", "unsqueeze", "expand")
        ),
        pytest.param(Chunk3, (2, 3, 8, 8), id="chunk-3"),
        pytest.param(OverlappingSlices, (2, 3, 8, 8), id="overlapping-slices"),
        pytest.param(LinearBN, (2, 3, 8, 8), id="linear-batchnorm1d"),
        pytest.param(UpsampleAdd, (2, 3, 8, 8), id="upsample-add"),
        pytest.param(DeadBranch, (2, 3, 8, 8), id="dead-branch"),
        pytest.param(PReLUNet, (2, 3, 8, 8), id="prelu"),
        pytest.param(Conv1dNet, (2, 3, 16), id="conv1d"),
    ],
)
def test_more_structures_compact_exactly(make, shape):
    model, x, graph = _build(make(), shape)
    assert_well_formed(graph)
    assert_compacts_exactly(model, x, graph)


class GroupNormNet(nn.Module):
    def __init__(self, num_groups):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 1)
        self.gn = nn.GroupNorm(num_groups, 8)
        self.c2 = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.c2(F.relu(self.gn(self.c1(x))))


def test_group_norm_across_channels_is_inexact():
    _, _, graph = _build(GroupNormNet(2))
    g = group_of(graph, "c1.weight", 0)
    assert g.prunable and not g.exact and "GroupNorm" in g.inexact_reason
    assert tensors(g, PARAM) == {("gn.weight", 0), ("gn.bias", 0)}


def test_per_channel_group_norm_is_exact():
    _, _, graph = _build(GroupNormNet(8))
    g = group_of(graph, "c1.weight", 0)
    assert g.prunable and g.exact


# ----------------------------------------------------------------------------- regressions
# Bugs found by these tests and fixed: GroupNorm group counts, computed sizes in views.


def test_per_channel_group_norm_compacts():
    model, x, graph = _build(GroupNormNet(8))
    assert_compacts_exactly(model, x, graph)


def test_group_norm_group_keeps_a_multiple_of_num_groups():
    model, x, graph = _build(GroupNormNet(2))
    g = group_of(graph, "c1.weight", 0)
    keep = np.ones(8, dtype=bool)
    keep[[1, 2, 3]] = False
    mask = ChannelMask({g.id: keep}, graph.model_name, graph.fingerprint())
    try:
        mask.validate(graph)
    except MaskMismatchError:
        return  # refusing the mask is a correct outcome
    compacted = compact_model(graph, mask).eval()
    with torch.no_grad():
        assert compacted(x).shape == model(x).shape
    assert compacted.gn.num_channels % compacted.gn.num_groups == 0


class InverseShuffle(nn.Module):
    """view(n, c // g, g, h, w): the channel count enters the view through a computed size."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 9, 1)
        self.c2 = nn.Conv2d(9, 2, 1)

    def forward(self, x):
        y = self.c1(x)
        n, c, h, w = y.shape
        return self.c2(y.view(n, c // 3, 3, h, w).transpose(1, 2).reshape(n, c, h, w))


def test_inverse_shuffle_groups():
    _, _, graph = _build(InverseShuffle())
    g = group_of(graph, "c1.weight", 0)
    # the [c // 3, 3] view ties channel i*3 + j to channel j: 3 groups of channels (j mod 3)
    assert g.size == 3 and g.prunable and slice_of(g, "c1.weight", 0).inner == 3
    assert slice_of(g, "c1.weight", 0).index == (0, 3, 6, 1, 4, 7, 2, 5, 8)


def test_inverse_shuffle_with_computed_sizes_compacts():
    model, x, graph = _build(InverseShuffle())
    g = group_of(graph, "c1.weight", 0)
    mask = ChannelMask({g.id: np.array([True, True, False])}, graph.model_name, graph.fingerprint())
    compacted = compact_model(graph, mask).eval()
    with torch.no_grad():
        assert max_rel_diff(compacted(x), masked_model(model, graph, mask).eval()(x)) <= 1e-4


@pytest.mark.parametrize(
    "norm, shape",
    [(nn.GroupNorm(8, 8, affine=False), (2, 3, 8, 8)), (nn.LayerNorm(8, elementwise_affine=False), (2, 5, 3))],
    ids=["groupnorm", "layernorm"],
)
def test_norm_without_affine_parameters_fails_closed(norm, shape):
    # no tensor of such a norm shrinks, so nothing would carry the kept count to num_groups/normalized_shape:
    # pruning through it crashed the compacted model (RuntimeError in group_norm) before it froze
    first = nn.Conv2d(3, 8, 1) if len(shape) == 4 else nn.Linear(3, 8)
    last = nn.Conv2d(8, 4, 1) if len(shape) == 4 else nn.Linear(8, 4)
    model, x, graph = _build(nn.Sequential(first, norm, last), shape)
    assert_well_formed(graph)
    (group,) = groups_with(graph, "0.weight")
    assert not group.prunable and "without affine parameters" in group.reason


def test_affine_group_norm_per_channel_resizes():
    # its handler's compaction step: num_groups and num_channels follow the kept channels
    model, x, graph = _build(nn.Sequential(nn.Conv2d(3, 8, 1), nn.GroupNorm(8, 8), nn.ReLU(), nn.Conv2d(8, 4, 1)))
    mask, compacted = assert_compacts_exactly(model, x, graph)
    kept = int(mask.keep[group_of(graph, "0.weight").id].sum())
    norm = compacted.get_submodule("1")
    assert kept < 8 and norm.num_groups == norm.num_channels == kept


# ----------------------------------------------------------------------------- decoders, tiling, stacking


class ShuffleNet(nn.Module):
    """Sub-pixel upsampling then its inverse: channels move between the channel axis and space."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1, self.up = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.PixelShuffle(2)
        self.c2, self.down, self.c3 = nn.Conv2d(4, 8, 3), nn.PixelUnshuffle(2), nn.Conv2d(32, 5, 1)

    def forward(self, x):
        return self.c3(self.down(self.c2(F.relu(self.up(self.b1(self.c1(x)))))))


def test_pixel_shuffle_groups_each_output_channel_with_its_four_inputs():
    model, x, graph = _build(ShuffleNet())
    assert_well_formed(graph)
    shuffled = group_of(graph, "c1.weight")
    assert shuffled.size == 4 and shuffled.prunable and slice_of(shuffled, "c1.weight", 0).inner == 4
    assert slice_of(shuffled, "c2.weight", 1).inner == 1  # c2 reads the 4 shuffled channels
    unshuffled = group_of(graph, "c2.weight")
    assert unshuffled.size == 8 and slice_of(unshuffled, "c3.weight", 1).inner == 4  # each feeds 4 columns
    mask, compacted = assert_compacts_exactly(model, x, graph)
    assert compacted.c1.out_channels == 4 * compacted.c2.in_channels


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc, self.dec = nn.Conv2d(3, 16, 3, stride=2), nn.ConvTranspose2d(16, 12, 3, stride=2, output_padding=1)
        self.bn, self.head = nn.BatchNorm2d(12), nn.Conv2d(12, 4, 1)

    def forward(self, x):
        return self.head(F.relu(self.bn(self.dec(F.relu(self.enc(x))))))


def test_conv_transpose_reads_rows_and_writes_columns():
    model, x, graph = _build(Decoder(), (2, 3, 9, 9))
    assert_well_formed(graph)
    assert tensors(group_of(graph, "enc.weight"), CONSUMER) == {("dec.weight", 0)}
    dec = group_of(graph, "dec.weight", axis=1)
    assert tensors(dec, PRODUCER) == {("dec.weight", 1), ("dec.bias", 0)} and dec.prunable
    mask, compacted = assert_compacts_exactly(model, x, graph)
    assert (compacted.dec.in_channels, compacted.dec.out_channels) == tuple(compacted.dec.weight.shape[:2])


def test_grouped_conv_transpose_fails_closed():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ConvTranspose2d(8, 8, 2, groups=2), nn.Conv2d(8, 4, 1))
    model, x, graph = _build(model)
    assert not group_of(graph, "0.weight").prunable
    assert "ConvTranspose2d 1 with 2 groups" in group_of(graph, "0.weight").reason


class StackRepeat(nn.Module):
    """Two branches stacked on a new axis, one repeated along channels, one reshaped to the other's shape."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1)
        self.wide, self.head = nn.Conv2d(16, 6, 1), nn.Conv2d(8, 5, 1)

    def forward(self, x):
        a, b = self.a(x), self.b(x)
        pair = torch.stack([a, b], 1).amax(1)  # a and b meet position by position: one group
        tiled = self.wide(a.repeat(1, 2, 1, 1))  # a's channels twice along the channel axis
        same = self.c(x).reshape_as(pair)  # c's channels tied to the stacked pair's
        return self.head(pair + same) + tiled.mean(1, keepdim=True)


def test_stack_repeat_and_reshape_as_tie_and_tile_channels():
    model, x, graph = _build(StackRepeat(), (2, 3, 6, 6))
    assert_well_formed(graph)
    tied = group_of(graph, "a.weight")
    assert tied is group_of(graph, "b.weight") is group_of(graph, "c.weight")
    assert tied.size == 8 and tied.prunable and slice_of(tied, "wide.weight", 1).inner == 2  # tiled twice
    mask, compacted = assert_compacts_exactly(model, x, graph)
    assert compacted.wide.in_channels == 2 * compacted.a.out_channels


# ----------------------------------------------------------------------------- coverage counts what is pruned


class NormOnly(nn.Module):
    """Linear -> GroupNorm -> Linear: the only prunable group is inexact (the norm mixes its channels)."""

    def __init__(self):
        super().__init__()
        self.a, self.norm, self.b = nn.Linear(6, 8), nn.GroupNorm(2, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.b(self.norm(self.a(x)))


def test_coverage_counts_only_exact_groups():
    model, x, graph = _build(NormOnly(), (2, 6))
    group = group_of(graph, "a.weight")
    assert group.prunable and not group.exact
    assert graph.prunable_macs_share() == 0.0  # was 1.0: an inexact group is not pruned by default
    assert "0% of conv/linear MACs prunable" in graph.summary()


def test_coverage_keeps_frozen_weighted_ops_in_the_denominator():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.ConvTranspose2d(8, 8, 2, groups=2), nn.Conv2d(8, 4, 1)
    )
    model, x, graph = _build(net)  # input 8x8: the transposed conv doubles it to 9x9
    conv0, conv1 = 8 * 3 * 64, 8 * 8 * 64  # weight x output positions
    conv_t, conv3 = 8 * 4 * 4 * 81, 4 * 8 * 81  # grouped transposed conv: no handler for 2 groups
    assert graph.unmapped_macs == conv_t
    assert graph.prunable_macs_share() == pytest.approx((conv0 + conv1) / (conv0 + conv1 + conv_t + conv3))


def test_a_mask_that_removes_nothing_warns_in_one_line(tmp_path, capsys):
    from hwprune.cli import main
    from hwprune.errors import HwpruneWarning
    from hwprune.export.onnx_export import export_onnx
    from hwprune.workflow.inputs import ModelInput
    from hwprune.workflow.scoring import make_mask

    model, x, graph = _build(NormOnly(), (2, 6))
    with pytest.warns(HwpruneWarning, match="nothing is pruned in NormOnly: its 1 prunable group"):
        mask = make_mask(ModelInput("NormOnly", model, x), graph, "l1", 0.5)
    assert not mask.pruned_groups()
    export_onnx(model, x, tmp_path / "norm_only.onnx")
    capsys.readouterr()
    code = main(
        ["mask", "--onnx", str(tmp_path / "norm_only.onnx"), "--ratio", "0.5", "--out", str(tmp_path / "m.json")]
    )
    err = capsys.readouterr().err
    assert code == 0 and err.count("\n") == 1 and err.startswith("hwprune: warning: nothing is pruned")
