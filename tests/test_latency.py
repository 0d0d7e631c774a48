"""Latency backends time real models and record how they ran; the statistics are robust."""

import numpy as np
import pytest
import torch
from torch import nn

from hwprune.errors import UnknownNameError
from hwprune.latency import BACKENDS, measure
from hwprune.latency.measurement import relative_precision, robust_stats, time_interleaved


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)
    ).eval()


def test_robust_stats_known_values_and_outlier_rejection():
    samples = [0.010] * 9 + [0.011] * 9 + [1.0]  # one 1 s hiccup among ~10 ms runs
    median, iqr, rejected = robust_stats(samples)
    assert rejected == 1
    assert median == pytest.approx(10.5, abs=0.51)
    assert iqr == pytest.approx(1.0, abs=1e-6)


def test_interleaving_alternates_runners_and_their_order():
    calls = []

    def timer(name):
        return lambda: calls.append(name) or 0.001

    samples = time_interleaved([timer("a"), timer("b")], repeats=4)
    assert [len(s) for s in samples] == [4, 4]
    assert calls[-8:] == ["a", "b", "b", "a", "a", "b", "b", "a"]  # no runner always goes first


def test_position_bias_cancels_in_paired_difference():
    """Identical runners, the one timed first in a round 2 % slower: alternation leaves no difference."""
    state = {"first": True}

    def runner():
        def timed():
            slow = state["first"]
            state["first"] = not state["first"]
            return 0.0102 if slow else 0.0100

        return timed

    a, b = time_interleaved([runner(), runner()], repeats=40)
    assert np.mean(a) == pytest.approx(np.mean(b), rel=1e-9)


@pytest.mark.parametrize(
    "spread, rounds", [(0.0, 10), (0.5, 60)]
)  # exact timers stop at `repeats`; noisy ones run to the cap
def test_rounds_added_until_precise(spread, rounds):
    rng = np.random.default_rng(0)
    timers = [lambda: 0.01 * (1 + spread * rng.random()), lambda: 0.005 * (1 + spread * rng.random())]
    samples = time_interleaved(timers, repeats=10, precision=0.005, max_repeats=60)
    assert [len(s) for s in samples] == [rounds, rounds]
    assert (relative_precision(samples) <= 0.005) == (spread == 0.0)


@pytest.mark.parametrize("backend", ["torch-cpu", pytest.param("ort-cpu", marks=pytest.mark.onnx)])
def test_backend_times_a_model_for_real(backend):
    model = small_model()
    x = torch.randn(2, 3, 16, 16)
    [m] = measure(backend, [model], x, threads=1, repeats=5, precision=None)
    assert m.backend == backend and m.threads == 1 and m.batch == 2 and m.input_shape == (2, 3, 16, 16)
    assert m.samples == 5 and 0 < m.median_ms < 10_000 and m.iqr_ms >= 0
    assert m.versions and m.device.startswith("cpu") and m.provider


@pytest.mark.onnx
def test_bigger_model_measures_slower_on_ort():
    small = small_model()
    big = nn.Sequential(*[nn.Conv2d(3 if i == 0 else 64, 64, 3, padding=1) for i in range(6)]).eval()
    x = torch.randn(1, 3, 32, 32)
    fast, slow = measure("ort-cpu", [small, big], x, threads=1, repeats=7)
    # ~100x the FLOPs: a correct timer cannot rank them the other way round
    assert slow.median_ms > fast.median_ms


def test_unknown_backend_lists_available():
    with pytest.raises(UnknownNameError, match="torch-cpu") as err:
        BACKENDS.get("tpu-magic")
    assert "\n" not in str(err.value)


def test_measurement_is_serialisable():
    [m] = measure("torch-cpu", [small_model()], torch.randn(1, 3, 8, 8), repeats=3)
    d = m.as_dict()
    assert d["backend"] == "torch-cpu" and isinstance(d["versions"], dict)
    assert np.isfinite(d["median_ms"])
