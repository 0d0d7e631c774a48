"""Property test: random small CNNs built from common blocks, random channel masks drawn over their
prunable groups; the compacted model must compute what the masked model computes.

The net is drawn as a *spec* (a list of block tuples) so that hypothesis shrinks a failure to the
smallest net and mask that still fail; the spec is printed with the failure.
"""

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch import nn

from hwprune.export.compact import compact_model, masked_model
from hwprune.export.pipeline import export_pruned
from hwprune.export.verify import max_rel_diff, randomize_for_check
from hwprune.graph_mapper import build_channel_graph
from hwprune.graph_mapper.types import GROUPED_IN
from hwprune.prune.masks import ChannelMask

MAX_C = 16
SETTINGS = dict(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ----------------------------------------------------------------------------- blocks


class ConvBNReLU(nn.Module):
    def __init__(self, cin, cout, k=3, stride=1, groups=1, bn=True, act=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=not bn)
        self.bn = nn.BatchNorm2d(cout) if bn else nn.Identity()
        self.act = nn.ReLU() if act else nn.Identity()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Residual(nn.Module):
    """Basic block; identity shortcut when shapes allow, else a 1x1 projection."""

    def __init__(self, cin, mid, cout, stride):
        super().__init__()
        self.body = nn.Sequential(ConvBNReLU(cin, mid, 3, stride), ConvBNReLU(mid, cout, 3, act=False))
        self.proj = None if (cin == cout and stride == 1) else ConvBNReLU(cin, cout, 1, stride, act=False)

    def forward(self, x):
        short = x if self.proj is None else self.proj(x)
        return F.relu(self.body(x) + short)


class Inception(nn.Module):
    def __init__(self, cin, a, b, pool_branch):
        super().__init__()
        self.a = ConvBNReLU(cin, a, 1)
        self.b = nn.Sequential(ConvBNReLU(cin, max(1, b // 2) + 1, 1), ConvBNReLU(max(1, b // 2) + 1, b, 3))
        self.pool_branch = pool_branch

    def forward(self, x):
        if self.pool_branch:  # max-pool the second branch's output before concatenation (same size)
            return torch.cat([self.a(x), F.max_pool2d(self.b(x), 3, 1, 1)], dim=1)
        return torch.cat([self.a(x), self.b(x)], dim=1)


class Dense(nn.Module):
    """DenseNet layer: the input is concatenated with new features."""

    def __init__(self, cin, growth, input_first):
        super().__init__()
        self.f = ConvBNReLU(cin, growth, 3)
        self.input_first = input_first

    def forward(self, x):
        y = self.f(x)
        return torch.cat([x, y] if self.input_first else [y, x], 1)


def channel_shuffle(x, groups, literal):
    if literal is None:
        n, c, h, w = x.shape
        return x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
    n, c, h, w = literal
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit: chunk in two, transform one half, concat, channel shuffle."""

    def __init__(self, c, spatial, literal, use_split):
        super().__init__()
        half = c // 2
        self.branch = nn.Sequential(
            ConvBNReLU(half, half, 1), ConvBNReLU(half, half, 3, groups=half, act=False), ConvBNReLU(half, half, 1)
        )
        self.literal = (2, c, spatial, spatial) if literal else None
        self.use_split = use_split
        self.half = half

    def forward(self, x):
        if self.use_split:
            x1, x2 = torch.split(x, [self.half, self.half], dim=1)
        else:
            x1, x2 = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([x1, self.branch(x2)], 1), 2, self.literal)


class SplitConcat(nn.Module):
    """Unequal split of the channels, one conv per piece, concat (no shuffle)."""

    def __init__(self, c, first, out_a, out_b):
        super().__init__()
        self.sizes = [first, c - first]
        self.a, self.b = ConvBNReLU(first, out_a, 3), ConvBNReLU(c - first, out_b, 1)

    def forward(self, x):
        xa, xb = torch.split(x, self.sizes, dim=1)
        return torch.cat([self.a(xa), self.b(xb)], 1)


class SqueezeExcite(nn.Module):
    def __init__(self, c, r, use_mean):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, r, 1), nn.Conv2d(r, c, 1)
        self.use_mean = use_mean

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True) if self.use_mean else F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


class Skip(nn.Module):
    """Identity shortcut around a block that keeps the channel count: ties its output to its input."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return x + self.inner(x)


class GapHead(nn.Module):
    def __init__(self, c, classes, kind):
        super().__init__()
        self.kind = kind
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        if self.kind == "module":
            x = torch.flatten(self.pool(x), 1)
        else:
            x = x.mean((2, 3))
        return self.fc(x)


class FlatHead(nn.Module):
    """Flatten a small spatial map (each channel -> h*w features) into a two-layer MLP."""

    def __init__(self, c, spatial, pool_to, hidden, classes, kind):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(pool_to) if pool_to else nn.Identity()
        s = pool_to or spatial
        self.kind, self.features = kind, c * s * s
        self.fc1, self.fc2 = nn.Linear(self.features, hidden), nn.Linear(hidden, classes)

    def forward(self, x):
        x = self.pool(x)
        if self.kind == "flatten":
            x = torch.flatten(x, 1)
        elif self.kind == "view":
            x = x.view(x.size(0), -1)
        else:  # a literal size, rewritten on compaction
            x = x.reshape(2, self.features)
        return self.fc2(F.relu(self.fc1(x)))


class Net(nn.Module):
    def __init__(self, blocks, head):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.head = head

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


# ----------------------------------------------------------------------------- specs


def _divisors(n):
    """Proper divisors > 1: conv groups that are neither plain nor depthwise."""
    return [d for d in range(2, n) if n % d == 0]


KINDS = ["conv", "residual", "inception", "dense", "shuffle", "split", "depthwise", "grouped", "se", "pool", "skip"]
SAME_WIDTH = ["conv", "inception", "shuffle", "split", "depthwise", "grouped", "se"]  # what "skip" wraps


def _draw_block(draw, kind, c, s, same=False):
    """One block spec for ``c`` input channels at spatial size ``s`` (``same``: keep c and s), or None
    when the kind does not fit here."""
    if kind == "conv":
        stride = draw(st.sampled_from([1, 2])) if s >= 6 and not same else 1
        cout = c if same else draw(st.integers(2, MAX_C))
        return (kind, cout, draw(st.sampled_from([1, 3])), stride, draw(st.booleans()))
    if kind == "residual":
        stride = draw(st.sampled_from([1, 2])) if s >= 6 else 1
        cout = c if draw(st.booleans()) else draw(st.integers(2, MAX_C))
        return (kind, draw(st.integers(2, MAX_C)), cout, stride)
    if kind == "inception":
        if same and c < 2:
            return None
        a = draw(st.integers(1, c - 1 if same else MAX_C // 2))
        return (kind, a, c - a if same else draw(st.integers(1, MAX_C // 2)), draw(st.booleans()))
    if kind == "dense":
        return None if c > MAX_C - 2 else (kind, draw(st.integers(2, MAX_C - c)), draw(st.booleans()))
    if kind == "shuffle":
        return None if c % 2 else (kind, draw(st.booleans()), draw(st.booleans()))
    if kind == "split":
        if c < 2:
            return None
        out_a = draw(st.integers(1, c - 1 if same else MAX_C // 2))
        return (kind, draw(st.integers(1, c - 1)), out_a, c - out_a if same else draw(st.integers(1, MAX_C // 2)))
    if kind == "depthwise":
        mult = 1 if same else draw(st.sampled_from([m for m in (1, 2, 3) if m * c <= MAX_C] or [1]))
        return (kind, mult, draw(st.booleans()))
    if kind == "grouped":
        divs = _divisors(c)
        if not divs:
            return None
        g = draw(st.sampled_from(divs))
        return (kind, g, c // g if same else draw(st.integers(min(2, MAX_C // g), MAX_C // g)))
    if kind == "se":
        return (kind, draw(st.integers(1, 8)), draw(st.booleans()))
    if kind == "pool":
        return None if s < 4 else (kind, draw(st.sampled_from(["max", "avg"])))
    inner = _draw_block(draw, draw(st.sampled_from(SAME_WIDTH)), c, s, same=True)
    return None if inner is None else (kind, inner)


def _make_block(b, c, s):
    """The module for spec ``b`` and its output channels and spatial size."""
    kind = b[0]
    if kind == "conv":
        _, cout, k, stride, bn = b
        return ConvBNReLU(c, cout, k, stride, bn=bn), cout, (s + stride - 1) // stride
    if kind == "residual":
        _, mid, cout, stride = b
        return Residual(c, mid, cout, stride), cout, (s + stride - 1) // stride
    if kind == "inception":
        return Inception(c, b[1], b[2], b[3]), b[1] + b[2], s
    if kind == "dense":
        return Dense(c, b[1], b[2]), c + b[1], s
    if kind == "shuffle":
        return ShuffleUnit(c, s, b[1], b[2]), c, s
    if kind == "split":
        return SplitConcat(c, b[1], b[2], b[3]), b[2] + b[3], s
    if kind == "depthwise":
        return ConvBNReLU(c, c * b[1], 3, groups=c, bn=b[2]), c * b[1], s
    if kind == "grouped":
        return ConvBNReLU(c, b[1] * b[2], 3, groups=b[1]), b[1] * b[2], s
    if kind == "se":
        return SqueezeExcite(c, b[1], b[2]), c, s
    if kind == "pool":
        return (nn.MaxPool2d(2) if b[1] == "max" else nn.AvgPool2d(2)), c, s // 2
    inner, c_out, s_out = _make_block(b[1], c, s)
    assert (c_out, s_out) == (c, s), b
    return Skip(inner), c, s


@st.composite
def net_specs(draw):
    """(in_channels, spatial, [block spec, ...], head spec): enough to rebuild the net."""
    cin = draw(st.integers(3, 4))
    spatial = draw(st.integers(8, 12))
    c, s = cin, spatial
    specs = []
    for _ in range(draw(st.integers(1, 6))):
        spec = _draw_block(draw, draw(st.sampled_from(KINDS)), c, s)
        if spec is not None:
            specs.append(spec)
            _, c, s = _make_block(spec, c, s)
    if draw(st.booleans()):
        head = ("gap", draw(st.integers(2, 6)), draw(st.sampled_from(["module", "mean"])))
    else:
        pool_to = draw(st.integers(1, 3)) if s > 3 else draw(st.sampled_from([None, 1]))
        head = (
            "flat",
            pool_to,
            draw(st.integers(2, MAX_C)),
            draw(st.integers(2, 6)),
            draw(st.sampled_from(["flatten", "view", "literal"])),
        )
    return cin, spatial, specs, head


def build_net(spec):
    cin, spatial, specs, head = spec
    c, s = cin, spatial
    blocks = []
    for b in specs:
        block, c, s = _make_block(b, c, s)
        blocks.append(block)
    if head[0] == "gap":
        top = GapHead(c, head[1], head[2])
    else:
        top = FlatHead(c, s, head[1], head[2], head[3], head[4])
    x = torch.randn(2, cin, spatial, spatial, generator=torch.Generator().manual_seed(0))
    return randomize_for_check(Net(blocks, top), seed=1).eval(), x


# ----------------------------------------------------------------------------- masks


def draw_mask(data, graph):
    """Per prunable exact group: untouched, or a random removed subset (>= 1 kept, >= 1 removed, the
    same number kept in every conv-group block). Shrinks towards removing fewer channels."""
    keep = {}
    for g in graph.prunable_groups:
        if g.size < 2 or not g.exact or not data.draw(st.integers(0, 3), label=f"prune group {g.id}"):
            continue
        k = np.zeros(g.size, dtype=bool)
        if g.blocks:
            smallest = min(len(b) for b in g.blocks)
            if smallest < 2:
                continue
            n = smallest - data.draw(st.integers(1, smallest - 1), label=f"removed per block, group {g.id}")
            for i, block in enumerate(g.blocks):
                order = data.draw(st.permutations(block), label=f"block {i} order, group {g.id}")
                k[list(order[:n])] = True
        else:
            removed = data.draw(
                st.sets(st.integers(0, g.size - 1), min_size=1, max_size=g.size - 1), label=f"removed, group {g.id}"
            )
            k[:] = True
            k[sorted(removed)] = False
        assert k.any() and not k.all()
        keep[g.id] = k
    return ChannelMask(keep, graph.model_name, graph.fingerprint())


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def check_graph(graph):
    """Structural invariants of any graph."""
    for g in graph.groups:
        assert g.prunable or g.reason.strip(), f"group {g.id} ({g.name}) frozen without a reason"
        assert not (g.prunable and g.reason), f"group {g.id} prunable but has reason {g.reason!r}"
        assert len(set(g.roots)) == g.size
        for s in g.slices:
            assert s.inner >= 1 and len(s.index) == g.size * s.inner, (g.id, s)
            assert len(set(s.index)) == len(s.index), (g.id, s)
        if g.blocks:
            flat = sorted(k for b in g.blocks for k in b)
            assert flat == list(range(g.size)), f"group {g.id}: blocks do not partition the group"
    # a tensor axis is one site; its positions are covered by the groups' slices exactly once
    keys = [(s.tensor, s.axis) for s in graph.sites]
    assert len(keys) == len(set(keys))
    for i, site in enumerate(graph.sites):
        covered = sorted(p for g in graph.groups for s in g.slices if s.site == i for p in s.index)
        assert covered == np.flatnonzero(site.roots >= 0).tolist(), site.tensor


def expected_lengths(graph, mask, model):
    """Length each plain site axis must have after compaction."""
    params = dict(model.named_parameters()) | dict(model.named_buffers())
    out = {}
    for gid in mask.pruned_groups():
        for s in graph.groups[gid].slices:
            if s.kind == GROUPED_IN:
                continue
            key = (s.tensor, s.axis)
            out[key] = out.get(key, params[s.tensor].shape[s.axis]) - mask.removed(gid) * s.inner
    return out


# ----------------------------------------------------------------------------- tests


@settings(max_examples=300, **SETTINGS)
@given(spec=net_specs(), data=st.data())
def test_random_net_compacts_to_masked_model(spec, data):
    model, x = build_net(spec)
    graph = build_channel_graph(model, x, "random")
    check_graph(graph)
    mask = draw_mask(data, graph)
    mask.validate(graph)
    event(f"groups pruned: {min(len(mask.pruned_groups()), 3)}{'+' if len(mask.pruned_groups()) > 3 else ''}")
    if any(graph.groups[g].blocks for g in mask.pruned_groups()):
        event("prunes a grouped-conv group")
    compacted = compact_model(graph, mask).eval()
    oracle = masked_model(model, graph, mask).eval()
    with torch.no_grad():
        out_compact, out_masked, out_dense = compacted(x), oracle(x), model(x)
    assert out_compact.shape == out_dense.shape
    diff = max_rel_diff(out_compact, out_masked)
    assert diff <= 1e-4, f"compacted differs from masked by {diff:.2e}\n{graph.explain()}"
    if mask.pruned_groups():
        assert n_params(compacted) < n_params(model)
        after = dict(compacted.named_parameters()) | dict(compacted.named_buffers())
        for (tensor, axis), length in expected_lengths(graph, mask, model).items():
            assert after[tensor].shape[axis] == length, (tensor, axis)
    else:
        assert n_params(compacted) == n_params(model)
        assert max_rel_diff(out_compact, out_dense) <= 1e-5


@pytest.mark.onnx
@settings(max_examples=5, **SETTINGS)
@given(spec=net_specs(), data=st.data())
def test_random_net_exports_to_matching_onnx(spec, data):
    model, x = build_net(spec)
    graph = build_channel_graph(model, x, "random")
    mask = draw_mask(data, graph)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "net.onnx"
        _, report = export_pruned(model, graph, mask, x, path)
        assert path.is_file()
    assert report.max_rel_diff is not None and report.max_rel_diff <= 1e-4
    assert report.onnx_max_rel_diff is not None and report.onnx_max_rel_diff <= 1e-4
    if mask.pruned_groups():
        assert report.params_after < report.params_before
