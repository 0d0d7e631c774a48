"""Edge profiler (resume, journal), LUT refusal, latency model, budget solver."""

import dataclasses
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
from hwprune.latency.profiler import profile_edges, profiled_groups, random_mask
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


def test_second_pass_extends_a_one_pass_journal_and_points_keep_the_median(setup, tmp_path):
    model, x, graph = setup
    journal = tmp_path / "j.jsonl"
    kw = dict(points=(0.5,), repeats=2, journal=journal, progress=False, calibration_masks=0)
    one = profile_edges(model, graph, x, "torch-cpu", **kw)
    first = journal.read_text().splitlines()
    two = profile_edges(model, graph, x, "torch-cpu", passes=3, **kw)
    lines = journal.read_text().splitlines()
    assert lines[: len(first)] == first and len(lines) == len(first) + 2 * len(one.points)  # passes 2, 3 only
    records = [json.loads(line) for line in lines[1:]]
    for p in two.points:
        mine = [r for r in records if r["group"] == p.group]
        assert p.passes == 3 and sorted(r["pass"] for r in mine) == [0, 1, 2]
        assert p.baseline_ms == pytest.approx(np.median([r["baseline_ms"] for r in mine]))
        assert p.delta_ms == pytest.approx(np.median([r["baseline_ms"] - r["latency_ms"] for r in mine]))
    with pytest.raises(HwpruneError, match="passes"):
        profile_edges(model, graph, x, "torch-cpu", passes=0, **kw)


def test_journal_of_another_run_is_refused(setup, tmp_path):
    model, x, graph = setup
    journal = tmp_path / "j.jsonl"
    profile_edges(
        model, graph, x, "torch-cpu", points=(0.5,), repeats=2, journal=journal, progress=False, calibration_masks=0
    )
    with pytest.raises(HwpruneError, match="measured with threads 1, this run asks for 2"):
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


def synthetic_lut(graph, latency_of, points=(0.25, 0.5, 0.75), calibration=4, seed=0):
    """A LUT whose 'measurements' come from a known latency function of the kept shares."""
    from hwprune.latency.lut import EdgePoint

    base = latency_of({})
    cm = CostModel(graph)
    pts = []
    for g in profiled_groups(graph):
        for point in points:
            kept = max(1, round(g.size * point))
            shares = {g.id: kept / g.size}
            after, _ = cm.cost(shares)
            pts.append(
                EdgePoint(g.id, g.name, g.size, kept, point, base, latency_of(shares), 0.0, cm.total_macs, after)
            )
    rng = np.random.default_rng(seed)
    cal = []
    for i in range(calibration):
        shares = kept_shares(graph, random_mask(graph, rng))
        cal.append(
            {
                "index": i,
                "shares": {str(k): v for k, v in shares.items()},
                "baseline_ms": base,
                "latency_ms": latency_of(shares),
            }
        )
    meta = {"model": graph.model_name, "fingerprint": graph.fingerprint(), "backend": "torch-cpu"}
    return LUT(meta, pts, cal)


def test_latency_model_recovers_a_per_op_cost_exactly(setup):
    """Latency = 0.2 ms fixed + a time per MAC that differs by op class: any mask is predicted exactly."""
    from hwprune.latency.model import op_classes

    _, _, graph = setup
    cm = CostModel(graph)
    per_mac = {"conv": 1e-6, "pointwise": 3e-6, "linear": 5e-6}  # ms per MAC, by class
    kinds = op_classes(graph)
    assert kinds["g.weight"] == "conv" and kinds["c3.weight"] == "pointwise" and kinds["head.weight"] == "linear"

    def latency_of(shares):
        return 0.2 + sum(
            per_mac[kinds[t]] * e["macs"] * cm.fraction(t, shares) for t, e in cm.tensors.items() if e["macs"]
        )

    lm = LatencyModel(synthetic_lut(graph, latency_of), graph)
    assert lm.baseline_ms == pytest.approx(latency_of({}))
    rng = np.random.default_rng(1)
    for _ in range(20):  # whole-network masks: the groups interact through shared convs
        shares = kept_shares(graph, random_mask(graph, rng))
        assert lm.predict(shares) == pytest.approx(latency_of(shares), rel=1e-6)
    # the change of one group equals the difference of two predictions
    g = profiled_groups(graph)[0].id
    shares = {q.id: 0.5 for q in profiled_groups(graph)}
    change = lm.predict_change(shares, g, 0.25)
    assert change == pytest.approx(lm.predict({**shares, g: 0.25}) - lm.predict(shares), rel=1e-9, abs=1e-12)


def test_calibration_masks_identify_what_single_group_points_cannot(setup):
    """Two 3x3 convs at very different times per MAC, each between two groups.

    Single-group points measure only what a group's ops cost together, so without calibration the
    fit leans on the class prior (one time per MAC per class); masks shrinking many groups at once
    separate the ops, and the prediction of other such masks becomes near exact.
    """
    _, _, graph = setup
    cm = CostModel(graph)
    per_mac = {"c1.weight": 1e-6, "g.weight": 8e-6, "c2.weight": 0.5e-6, "c3.weight": 2e-6, "head.weight": 2e-6}

    def latency_of(shares):
        return 0.2 + sum(rate * cm.tensors[t]["macs"] * cm.fraction(t, shares) for t, rate in per_mac.items())

    rng = np.random.default_rng(2)
    masks = [kept_shares(graph, random_mask(graph, rng)) for _ in range(20)]

    def fitted(calibration):
        return LatencyModel(synthetic_lut(graph, latency_of, calibration=calibration, seed=3), graph)

    def error(lm):
        return max(abs(lm.predict(s) / latency_of(s) - 1) for s in masks)

    with_masks, without = fitted(12), fitted(0)
    assert error(with_masks) < 0.01 and error(with_masks) < 0.5 * error(without)
    # the held-out check a user sees: each calibration mask predicted by a fit that did not see it
    assert len(with_masks.loo_errors_pct) == 12 and np.abs(with_masks.loo_errors_pct).max() < 1.0
    assert "on 12 calibration masks" in with_masks.fit_summary()
    assert "no calibration masks" in without.fit_summary() and without.loo_errors_pct.size == 0


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


def test_group_no_larger_than_the_alignment_step_is_left_whole(setup):
    """round_to=32: the 32-channel groups cannot shrink by a whole step, the 48-channel one can (to 32)."""
    model, x, graph = setup
    sizes = {g.id: g.size for g in profiled_groups(graph)}
    aligned = {g.id for g in profiled_groups(graph, round_to=32)}
    assert aligned == {gid for gid, size in sizes.items() if size > 32} and aligned
    sol = solve(graph, profiled_groups(graph, 32), norm_scores(graph, model), CostFn.macs(graph), 0.3, round_to=32)
    for gid, keep in sol.mask.keep.items():
        assert gid in aligned and keep.sum() == 32


def test_counted_budgets_halve_the_alignment_only_where_a_group_could_not_shrink():
    """min_steps=4 (FLOPs/params budgets): lenet5's 6- and 16-channel convs step by 1 and 4, its 120/84 by 16."""
    from hwprune.models import get_model

    net = get_model("lenet5").eval()
    graph = build_channel_graph(net, torch.randn(1, 1, 28, 28), "lenet5")
    by_size = {g.size: g for g in graph.prunable_groups}
    assert {s: unit_of(g, 16, 4) for s, g in by_size.items()} == {6: 1, 16: 4, 120: 16, 84: 16}
    assert {s: unit_of(g, 16) for s, g in by_size.items()} == {6: 6, 16: 16, 120: 16, 84: 16}  # latency: whole
    wide = by_size[120]
    assert unit_of(dataclasses.replace(wide, size=16, round_to=8), 16, 4) == 8  # a group's own step is never halved


def test_counted_budget_cuts_a_group_off_the_grid_onto_it_first():
    """lenet5's 120- and 84-channel fc layers in steps of 16 keep 112, 96, ... / 80, 64, ...: multiples of 16,
    never 104 or 52 (the old steps down from the group's size)."""
    from hwprune.models import get_model

    torch.manual_seed(0)
    net = get_model("lenet5").eval()
    graph = build_channel_graph(net, torch.randn(1, 1, 28, 28), "lenet5")
    groups = profiled_groups(graph, 16, 4)
    for target in (0.9, 0.5, 0.2):  # a params budget: the fc layers hold most of lenet5's parameters
        sol = solve(graph, groups, norm_scores(graph, net), CostFn.params(graph), target, round_to=16, min_steps=4)
        counts = {g.size: int(sol.mask.keep[g.id].sum()) for g in groups if g.id in sol.mask.keep}
        assert {84, 120} & counts.keys(), counts  # a group off the 16-grid is cut, so the check below can fail
        assert all(kept % unit_of(g, 16, 4) == 0 for g in groups for kept in [counts.get(g.size, 0)]), counts


def test_flops_budget_ships_aligned_widths_through_the_api():
    """hwprune.prune(flops=) keeps counts in the backend's alignment (16 on CPU, halved for small groups);
    the negative control, the solver at round_to 1, ships widths off that grid."""
    import hwprune
    from hwprune.models import get_model
    from hwprune.prune.channel import COUNTED_MIN_STEPS

    torch.manual_seed(0)
    net = get_model("resnet20").eval()
    x = torch.randn(1, 3, 32, 32)
    result = hwprune.prune(net, x, flops=0.5, backend="torch-cpu", repeats=3, sessions=1, progress=False)
    assert result.report.status == "met"

    def off_grid(mask):
        return {
            gid: int(keep.sum())
            for gid, keep in mask.keep.items()
            if keep.sum() % unit_of(result.graph.groups[gid], 16, COUNTED_MIN_STEPS)
        }

    cut = [gid for gid, keep in result.mask.keep.items() if not keep.all()]
    assert cut and any(result.graph.groups[g].size >= 64 for g in cut) and off_grid(result.mask) == {}
    graph = result.graph
    unaligned = solve(graph, profiled_groups(graph), norm_scores(graph, net), CostFn.macs(graph), 0.5)
    assert off_grid(unaligned.mask)  # negative control: the check sees unaligned widths


class _StemAndResidual(nn.Module):
    """A cheap 32-channel stem and an expensive 64-channel residual group (conv2/conv3 share channels)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 32, 3, padding=1), nn.Conv2d(32, 64, 3, padding=1)
        self.conv3, self.fc = nn.Conv2d(64, 64, 3, padding=1), nn.Linear(64, 10)

    def forward(self, x):
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.relu(self.conv2(x))
        return self.fc(torch.relu(self.conv3(x) + x).mean((2, 3)))


def test_last_removal_is_the_cheapest_unit_that_meets_the_budget():
    """At FLOPs 0.6 in steps of 8 (stem) and 16 (residual), a residual step from 48 overshoots to 0.35; the stem's
    step meets it at 0.57 and loses less importance, so the solver ends there (it used to take the residual's)."""
    torch.manual_seed(0)
    net = _StemAndResidual().eval()
    graph = build_channel_graph(net, torch.randn(1, 1, 16, 16), "stem_residual")
    groups = profiled_groups(graph, 16, 4)
    cost = CostFn.macs(graph)
    scores = {g.id: np.linspace(1.0, 2.0, g.size) for g in groups}  # every group equally spread: the stem cheap
    sol = solve(graph, groups, scores, cost, 0.6, round_to=16, min_steps=4)
    widths = sorted(int(sol.mask.keep.get(g.id, np.ones(g.size, bool)).sum()) for g in groups)
    assert sol.reachable and widths == [24, 48]
    assert 0.55 < sol.ratio <= 0.6


def test_op_classes_tell_depthwise_from_a_one_channel_input_conv():
    from hwprune.latency.model import op_classes

    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),  # one input channel, not grouped: a plain conv
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise
        nn.Conv2d(8, 16, 1),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 3),
    ).eval()
    graph = build_channel_graph(net, torch.randn(1, 1, 4, 4), "dw")
    kinds = op_classes(graph)
    assert [kinds[f"{i}.weight"] for i in (0, 1, 2, 4)] == ["conv", "depthwise", "pointwise", "linear"]


def kept_per_group(sol):
    return {g: int(k.sum()) for g, k in sol.mask.keep.items()}


def test_importance_normalisations_compare_groups_as_documented(setup):
    """mean: a group's score scale does not matter; none: it decides; cost: each group's total is its cost share."""
    from hwprune.prune.budget import normalised

    model, x, graph = setup
    groups = profiled_groups(graph)
    cost = CostFn.macs(graph)
    scores = norm_scores(graph, model)
    pruned = solve(graph, groups, scores, cost, 0.5, normalise="mean")
    big = next(gid for gid, keep in pruned.mask.keep.items() if not keep.all())  # a group the default cuts
    scaled = {**scores, big: scores[big] * 1000.0}
    for how in ("mean", "cost"):  # both divide the group's own scale away: same solution
        a = solve(graph, groups, scores, cost, 0.5, normalise=how)
        b = solve(graph, groups, scaled, cost, 0.5, normalise=how)
        assert kept_per_group(a) == kept_per_group(b), how
    raw = solve(graph, groups, scaled, cost, 0.5, normalise="none")
    assert raw.mask.keep.get(big, np.ones(1, bool)).all()  # negative control: unnormalised, the loud group stays whole
    norm = normalised(groups, scores, "cost", cost, cost.total({}))
    for g in groups:
        share = -cost.change({}, g.id, 0.0) / cost.total({})
        assert norm[g.id].sum() == pytest.approx(share * np.sign(scores[g.id].sum()))
    with pytest.raises(HwpruneError, match="normalisation is one of"):
        solve(graph, groups, scores, cost, 0.5, normalise="max")
