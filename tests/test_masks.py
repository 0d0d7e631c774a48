"""Mask types: round trips on disk (property-based), validation, application."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

from hwprune.errors import HwpruneError, MaskMismatchError
from hwprune.graph_mapper import build_channel_graph
from hwprune.prune.channel import channels_kept, norm_scores, top_k_mask, uniform_channel_mask
from hwprune.prune.masks import ChannelMask, WeightMask

shapes = st.lists(st.integers(1, 7), min_size=1, max_size=4).map(tuple)


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.text("abc.", min_size=1, max_size=8), shapes.flatmap(lambda s: arrays(bool, s)), max_size=4))
def test_weight_mask_round_trip(tmp_path_factory, keep):
    path = tmp_path_factory.mktemp("w") / "mask.json"
    WeightMask(keep, model="m").save(path)
    loaded = WeightMask.load(path)
    assert loaded.keep.keys() == keep.keys()
    for name in keep:
        np.testing.assert_array_equal(loaded.keep[name], keep[name])
    total = sum(k.size for k in keep.values())
    assert loaded.density() == pytest.approx(sum(int(k.sum()) for k in keep.values()) / total if total else 1.0)


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.integers(0, 50), st.integers(1, 40).flatmap(lambda n: arrays(bool, n)), max_size=6))
def test_channel_mask_round_trip(tmp_path_factory, keep):
    path = tmp_path_factory.mktemp("c") / "mask.json"
    ChannelMask(keep, model="m", fingerprint="abc", meta={"ratio": 0.5}).save(path)
    loaded = ChannelMask.load(path)
    assert loaded.fingerprint == "abc" and loaded.meta == {"ratio": 0.5}
    assert loaded.keep.keys() == keep.keys()
    for gid in keep:
        np.testing.assert_array_equal(loaded.keep[gid], keep[gid])


class Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.g = nn.Conv2d(8, 8, 3, padding=1, groups=4)
        self.b = nn.Conv2d(8, 6, 1)
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.head(torch.relu(self.b(torch.relu(self.g(torch.relu(self.a(x)))))))


@settings(max_examples=60, deadline=None)
@given(st.floats(0.0, 0.95), st.randoms(use_true_random=False))
def test_constrained_keep_counts_are_valid(ratio, rnd):
    graph = build_channel_graph(Grouped(), torch.randn(1, 3, 6, 6))
    for group in graph.prunable_groups:
        k = channels_kept(group, ratio)
        assert 1 <= k <= group.size
        if group.blocks:
            assert k % len(group.blocks) == 0
        keep = top_k_mask(group, np.array([rnd.random() for _ in range(group.size)]), k)
        assert keep.sum() == k
        ChannelMask({group.id: keep}, fingerprint=graph.fingerprint()).validate(graph)


def test_top_k_keeps_highest_scores():
    graph = build_channel_graph(Grouped(), torch.randn(1, 3, 6, 6))
    plain = next(g for g in graph.prunable_groups if not g.blocks)
    scores = np.arange(plain.size, dtype=float)
    keep = top_k_mask(plain, scores, 3)
    assert np.flatnonzero(keep).tolist() == list(range(plain.size - 3, plain.size))
    blocked = next(g for g in graph.prunable_groups if g.blocks)
    keep = top_k_mask(blocked, np.arange(blocked.size, dtype=float), 4)
    assert [int(keep[list(b)].sum()) for b in blocked.blocks] == [1, 1, 1, 1]


def test_validate_refuses_frozen_and_unequal_blocks():
    graph = build_channel_graph(Grouped(), torch.randn(1, 3, 6, 6))
    frozen = next(g for g in graph.groups if not g.prunable)
    keep = np.ones(frozen.size, bool)
    keep[0] = False
    with pytest.raises(MaskMismatchError, match="frozen group"):
        ChannelMask({frozen.id: keep}).validate(graph)
    blocked = next(g for g in graph.prunable_groups if g.blocks)
    keep = np.ones(blocked.size, bool)
    keep[list(blocked.blocks[0])[0]] = False
    with pytest.raises(MaskMismatchError, match="same number"):
        ChannelMask({blocked.id: keep}).validate(graph)
    with pytest.raises(MaskMismatchError, match="entries"):
        ChannelMask({blocked.id: np.ones(blocked.size + 1, bool)}).validate(graph)


def test_l1_scores_rank_channels_by_producer_norm():
    model = Grouped()
    with torch.no_grad():
        model.a.weight.copy_(torch.arange(8.0).view(8, 1, 1, 1).expand(8, 3, 3, 3))
    graph = build_channel_graph(model, torch.randn(1, 3, 6, 6))
    scores = norm_scores(graph, model, p=1)
    group = next(g for g in graph.groups if any(s.tensor == "a.weight" for s in g.producers))
    np.testing.assert_allclose(scores[group.id], np.arange(8.0) * 27)
    mask = uniform_channel_mask(graph, scores, 0.5)
    # blocks of 2 channels: the stronger channel of each block survives
    assert np.flatnonzero(mask.keep[group.id]).tolist() == [1, 3, 5, 7]


def test_weight_mask_apply_zeroes_and_checks():
    model = nn.Linear(4, 3)
    keep = np.ones((3, 4), bool)
    keep[1, 2] = False
    WeightMask({"weight": keep}).apply(model)
    assert model.weight[1, 2].item() == 0.0 and (model.weight != 0).sum().item() == 11
    with pytest.raises(MaskMismatchError, match="does not have"):
        WeightMask({"nope": keep}).apply(model)
    with pytest.raises(MaskMismatchError, match="shape"):
        WeightMask({"weight": keep.T}).apply(model)


def test_loading_a_non_mask_file_is_one_clear_error(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"format": "something else"}')
    with pytest.raises(HwpruneError, match="is not a hwprune.channel_mask/1 file"):
        ChannelMask.load(path)
    with pytest.raises(HwpruneError, match="does not exist"):
        ChannelMask.load(tmp_path / "missing.json")
