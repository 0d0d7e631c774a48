"""Scores -> weight masks: exact counts, deterministic ties, schedules, iterative pruning, collapse."""

import logging
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

from hwprune.errors import HwpruneError
from hwprune.models import get_model
from hwprune.prune.masks import WeightMask
from hwprune.prune.scorers import mag_scores, synflow_scores
from hwprune.prune.weight_masking import (
    density_from,
    detect_collapse,
    format_density_report,
    keep_count,
    layer_densities,
    mask_from_scores,
    prune_weights,
    schedule_densities,
    top_k,
)


def expected_kept(n, d):
    return min(n, int(math.floor(d * n + 0.5)))


def test_density_from_names_the_convention():
    assert density_from(10, "ratio") == pytest.approx(0.1)
    assert density_from(1, "exponent") == pytest.approx(0.1)
    assert density_from(2, "exponent") == pytest.approx(0.01)
    assert density_from(1, "ratio") == 1.0 and density_from(0, "exponent") == 1.0
    with pytest.raises(HwpruneError, match=">= 1"):
        density_from(0.5, "ratio")
    with pytest.raises(HwpruneError, match="compression mode"):
        density_from(10, "x")


def test_keep_count_rounds_half_up():
    assert keep_count(10, 0.25) == 3 and keep_count(10, 0.24) == 2 and keep_count(7, 0.0) == 0
    assert keep_count(7, 1.0) == 7
    with pytest.raises(HwpruneError):
        keep_count(5, 1.5)


def test_ties_are_broken_by_position():
    np.testing.assert_array_equal(top_k(np.zeros(6), 4), [1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(top_k(np.array([1.0, 2, 2, 0, 2]), 2), [0, 1, 1, 0, 0])
    np.testing.assert_array_equal(top_k(np.array([np.nan, 1.0, -np.inf]), 2), [1, 1, 0])
    scores = {"a": np.ones((2, 2)), "b": np.ones(3)}
    mask = mask_from_scores(scores, 0.5)  # 4 of 7 kept: all of a, then none of b
    assert mask.keep["a"].all() and not mask.keep["b"].any()


score_dicts = st.dictionaries(
    st.sampled_from(["a", "b", "c", "d"]),
    st.tuples(st.integers(1, 6), st.integers(1, 6)).flatmap(
        lambda shape: arrays(np.float64, shape, elements=st.integers(-3, 3).map(float))  # many ties
    ),
    min_size=1,
)


@settings(max_examples=80, deadline=None)
@given(score_dicts, st.floats(0.0, 1.0))
def test_mask_keeps_exactly_round_d_n_and_the_top_scores(scores, d):
    total = sum(a.size for a in scores.values())
    mask = mask_from_scores(scores, d, scope="global")
    kept = sum(int(k.sum()) for k in mask.keep.values())
    assert kept == expected_kept(total, d)
    flat_s = np.concatenate([scores[n].ravel() for n in mask.keep])
    flat_k = np.concatenate([mask.keep[n].ravel() for n in mask.keep])
    if 0 < kept < total:
        assert flat_s[flat_k].min() >= flat_s[~flat_k].max()
    local = mask_from_scores(scores, d, scope="local")
    for n, a in scores.items():
        assert int(local.keep[n].sum()) == expected_kept(a.size, d)
        assert local.keep[n].shape == a.shape


@pytest.fixture
def lenet_and_data():
    torch.manual_seed(0)
    model = get_model("lenet5", num_classes=10, in_channels=1, input_size=28)
    x = torch.randn(20, 1, 28, 28)
    y = torch.arange(20) % 10
    return model, [(x, y)]


@pytest.mark.parametrize("scope", ["global", "local"])
@pytest.mark.parametrize("method", ["mag", "snip", "grasp", "synflow", "gcs"])
def test_single_shot_density_is_exact_on_lenet(lenet_and_data, method, scope):
    model, batches = lenet_and_data
    d = 0.037
    mask = prune_weights(model, method, batches, d, scope=scope, rounds=1)
    total = sum(k.size for k in mask.keep.values())
    if scope == "global":
        assert sum(int(k.sum()) for k in mask.keep.values()) == expected_kept(total, d)
    else:
        assert all(int(k.sum()) == expected_kept(k.size, d) for k in mask.keep.values())
    assert mask.meta["method"] == method and mask.meta["rounds"] == 1


def test_iterative_pruning_is_exact_monotone_and_restores_weights(lenet_and_data):
    model, batches = lenet_and_data
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    seen = []

    def recording_synflow(m, b, **opts):
        seen.append({n: p.detach().clone() for n, p in m.named_parameters() if n.endswith("weight")})
        return synflow_scores(m, b, **opts)

    d, rounds = 0.01, 5
    mask = prune_weights(model, recording_synflow, batches, d, rounds=rounds)
    total = sum(k.size for k in mask.keep.values())
    assert sum(int(k.sum()) for k in mask.keep.values()) == expected_kept(total, d)
    # round k scores the model with the mask of round k-1 applied: zero weights grow in number
    zeros = [sum(int((w == 0).sum()) for w in s.values()) for s in seen]
    targets = schedule_densities(d, rounds)
    assert zeros[0] == 0
    for k in range(1, rounds):
        assert zeros[k] == total - expected_kept(total, targets[k - 1])
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n])


def test_iterative_never_regrows(lenet_and_data):
    model, batches = lenet_and_data
    masks = []

    def scorer(m, b, **opts):
        masks.append({n: (p != 0).numpy().copy() for n, p in m.named_parameters() if n.endswith("weight")})
        return mag_scores(m, b, **opts)

    prune_weights(model, scorer, batches, 0.05, rounds=4, schedule="linear")
    for earlier, later in zip(masks, masks[1:], strict=False):
        for n in earlier:
            assert not (later[n] & ~earlier[n]).any()


def test_synflow_defaults_to_100_rounds(lenet_and_data):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    mask = prune_weights(model, "synflow", None, 0.1, input_shape=(4,))
    assert mask.meta["rounds"] == 100 and mask.meta["schedule"] == "exponential"
    assert sum(int(k.sum()) for k in mask.keep.values()) == expected_kept(48, 0.1)
    assert mask.meta["options"] == {"input_shape": [4]} or mask.meta["options"] == {"input_shape": (4,)}


def test_schedules():
    np.testing.assert_allclose(schedule_densities(0.01, 2), [0.1, 0.01])
    np.testing.assert_allclose(schedule_densities(0.2, 4, "linear"), [0.8, 0.6, 0.4, 0.2])
    with pytest.raises(HwpruneError, match="schedule"):
        schedule_densities(0.5, 3, "cosine")


def test_layer_collapse_is_detected(caplog):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8, bias=False), nn.ReLU(), nn.Linear(8, 8, bias=False), nn.Linear(8, 2))
    with torch.no_grad():
        model[2].weight.mul_(1e-6)  # tiny weights: global magnitude removes this whole layer first
    with caplog.at_level(logging.WARNING):
        mask = prune_weights(model, "mag", None, 0.1)
    assert detect_collapse(mask) == ["2.weight"] and mask.meta["collapsed"] == ["2.weight"]
    assert "layer collapse" in caplog.text
    assert "COLLAPSED" in format_density_report(mask)
    assert detect_collapse(prune_weights(model, "mag", None, 0.1, scope="local")) == []


def test_density_report():
    mask = WeightMask({"a.weight": np.array([True, False, False, True]), "b.bias": np.zeros(2, bool)})
    rows = layer_densities(mask)
    assert rows[0] == {"name": "a.weight", "kept": 2, "total": 4, "density": 0.5}
    assert detect_collapse(mask) == []  # a bias alone does not disconnect anything
    text = format_density_report(mask)
    assert text.splitlines()[-1].split() == ["total", "2", "6", "0.3333"]
