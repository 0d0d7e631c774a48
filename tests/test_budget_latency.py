"""Edge profiler (resume, journal), LUT refusal, latency model, budget solver."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from hwprune.errors import HwpruneError
from hwprune.graph_mapper import build_channel_graph
from hwprune.graph_mapper.cost import CostModel, kept_shares
from hwprune.latency.lut import LUT
from hwprune.latency.model import LatencyModel
from hwprune.latency.profiler import profile_edges, profiled_groups
from hwprune.prune.budget import CostFn, solve
from hwprune.prune.channel import norm_scores, unit_of


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 32, 3, padding=1)
        self.b1 = nn.BatchNorm2d(32)
        self.g = nn.Conv2d(32, 32, 3, padding=1, groups=4)
        self.c2 = nn.Conv2d(32, 48, 3, padding=1)
        self.c3 = nn.Conv2d(48, 48, 1)
        self.head = nn.Linear(48, 10)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.g(x))
        y = torch.relu(self.c2(x))
        y = y + self.c3(y)
        return self.head(y.mean((2, 3)))


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(1, 3, 16, 16)
    return model, x, build_channel_graph(model, x, "net")


def test_profile_resumes_without_remeasuring(setup, tmp_path):
    model, x, graph = setup
    journal = tmp_path / "j.jsonl"
    full = profile_edges(
        model, graph, x, "torch-cpu", points=(0.5,), repeats=3, journal=journal, progress=False, calibration_masks=2
    )
    lines = journal.read_text().splitlines()
    n_groups = len(profiled_groups(graph))
    assert len(full.points) == n_groups and len(full.calibration) == 2
    assert json.loads(lines[0])["kind"] == "header" and len(lines) == 1 + n_groups + 2
    # simulate a kill after the second edge: keep header + 2 records
    journal.write_text("\n".join(lines[:3]) + "\n")
    resumed = profile_edges(
        model, graph, x, "torch-cpu", points=(0.5,), repeats=3, journal=journal, progress=False, calibration_masks=2
    )
    new_lines = journal.read_text().splitlines()
    assert new_lines[:3] == lines[:3]  # what was measured is kept as it was
    assert len(new_lines) == len(lines)  # and nothing is measured twice
    assert sorted(p.group for p in resumed.points) == sorted(p.group for p in full.points)
    again = profile_edges(
        model, graph, x, "torch-cpu", points=(0.5,), repeats=3, journal=journal, progress=False, calibration_masks=2
    )
    assert journal.read_text().splitlines() == new_lines  # complete journal: nothing new
    assert [p.latency_ms for p in again.points] == [p.latency_ms for p in resumed.points]


def test_journal_of_another_run_is_refused(setup, tmp_path):
    model, x, graph = setup
    journal = tmp_path / "j.jsonl"
    profile_edges(
        model, graph, x, "torch-cpu", points=(0.5,), repeats=2, journal=journal, progress=False, calibration_masks=0
    )
    with pytest.raises(HwpruneError, match="belongs to another run"):
        profile_edges(
            model, graph, x, "torch-cpu", points=(0.5,), threads=2, repeats=2, journal=journal, progress=False
        )


def test_lut_round_trip_and_mismatch_refused(setup, tmp_path):
    model, x, graph = setup
    lut = profile_edges(
        model, graph, x, "torch-cpu", points=(0.25, 0.5), repeats=2, progress=False, calibration_masks=1, round_to=4
    )
    lut.save(tmp_path / "lut.json")
    assert (tmp_path / "lut.csv").read_text().startswith("group,")
    loaded = LUT.load(tmp_path / "lut.json")
    assert loaded.points == lut.points and loaded.calibration == lut.calibration
    loaded.check(model="net", backend="torch-cpu", input_shape=[1, 3, 16, 16], threads=1)
    for wrong in ({"model": "other"}, {"backend": "ort-cpu"}, {"input_shape": [2, 3, 16, 16]}, {"threads": 4}):
        with pytest.raises(HwpruneError, match="profile again"):
            loaded.check(**wrong)
    # profiled channel counts are whole units of the alignment
    for p in lut.points:
        group = graph.groups[p.group]
        assert p.kept % unit_of(group, 4) == 0


def test_latency_model_reproduces_single_group_points(setup):
    model, x, graph = setup
    lut = profile_edges(
        model, graph, x, "torch-cpu", points=(0.25, 0.5, 0.75), repeats=2, progress=False, calibration_masks=0
    )
    lm = LatencyModel(lut, graph)
    assert lm.scale == 1.0
    for p in lut.points:
        predicted = lm.predict({p.group: p.kept / p.size})
        assert predicted == pytest.approx(lm.baseline_ms - p.delta_ms, rel=1e-9, abs=1e-9)
    # the change of one group equals the difference of two predictions
    g = lut.points[0].group
    shares = {q.group: 0.5 for q in lut.points}
    change = lm.predict_change(shares, g, 0.25)
    assert change == pytest.approx(lm.predict({**shares, g: 0.25}) - lm.predict(shares), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("kind", ["macs", "params"])
@pytest.mark.parametrize("target", [0.3, 0.5, 0.8])
def test_solver_meets_flops_and_params_budgets_exactly(setup, kind, target):
    model, x, graph = setup
    groups = profiled_groups(graph)
    cost = getattr(CostFn, kind)(graph)
    sol = solve(graph, groups, norm_scores(graph, model), cost, target)
    sol.mask.validate(graph)  # constraints: >= 1 kept, equal count per conv-group block
    cm = CostModel(graph)
    macs, params = cm.cost(kept_shares(graph, sol.mask))
    value, base = (macs, cm.total_macs) if kind == "macs" else (params, cm.total_params)
    assert sol.reachable and value <= target * base + 1e-6
    assert sol.cost == pytest.approx(value)
    # tight to one unit: giving back one unit of any pruned group would break the budget
    shares = kept_shares(graph, sol.mask)
    which = 0 if kind == "macs" else 1
    for gid, keep in sol.mask.keep.items():
        if not keep.all():
            unit = unit_of(graph.groups[gid])
            added = cm.change(shares, gid, (keep.sum() + unit) / keep.size)[which]
            assert value + added > target * base
    again = solve(graph, groups, norm_scores(graph, model), cost, target)
    assert all(np.array_equal(again.mask.keep[g], sol.mask.keep[g]) for g in sol.mask.keep)  # deterministic


def test_solver_respects_blocks_round_to_and_reports_unreachable(setup):
    model, x, graph = setup
    groups = profiled_groups(graph)
    sol = solve(graph, groups, norm_scores(graph, model), CostFn.macs(graph), 0.5, round_to=8)
    for gid, keep in sol.mask.keep.items():
        group = graph.groups[gid]
        assert keep.sum() % unit_of(group, 8) == 0
        if group.blocks:
            assert len({int(keep[list(b)].sum()) for b in group.blocks}) == 1
    low = solve(graph, groups, norm_scores(graph, model), CostFn.macs(graph), 0.001)
    assert not low.reachable and "unreachable" in low.notes[0] and low.ratio > 0.001
