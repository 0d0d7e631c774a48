"""Budget solver: keep the most important channels whose cost fits a budget.

Greedy on importance per unit of cost: at each step every group offers its next chunk of
least-important channels (whole conv-group blocks at a time, never below the minimum kept), and
the chunk that loses the least importance per unit of cost saved is removed. The last removal is the
single unit, of any group, that meets the budget losing the least importance (a coarse step of an expensive
group would overshoot it: 0.35 for a 0.6 budget on a three-conv net), then units are given back while the
budget holds, so FLOPs and params budgets are met to within one unit. Kept counts stay on each group's grid
(multiples of its unit, or the whole group), so a group whose size is off the grid is cut onto it first. Cost is
exact MACs or params (product formula over the graph) or a LatencyModel's prediction.

Importance is compared across groups after a normalisation (``NORMALISATIONS``): ``cost`` (the default:
each group's scores rescaled to sum to the group's share of the dense cost, so importance lost per cost saved
is a channel's score relative to its own group), ``mean`` (each group's channels rescaled to a mean of 1), or
``none`` (raw scores, global as Torch-Pruning's global pruning). ``cost`` kept the most accuracy at equal
measured latency on trained resnet18 and mobilenet_v2 (benchmarks/results/pareto.md: ``flops-aware`` against
``flops-aware-mean`` and ``flops-aware-raw``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from hwprune.errors import HwpruneError
from hwprune.graph_mapper.cost import CostModel
from hwprune.graph_mapper.types import ChannelGraph, ChannelGroup
from hwprune.prune.channel import unit_of
from hwprune.prune.masks import ChannelMask


@dataclass
class Solution:
    mask: ChannelMask
    cost: float
    baseline_cost: float
    budget: float
    reachable: bool
    importance_kept: float
    steps: int
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.cost / self.baseline_cost


def min_keep(group: ChannelGroup, unit: int, min_fraction: float) -> int:
    """The fewest channels a group keeps: ``min_fraction`` of it in whole units, at least one unit."""
    return max(unit, int(np.ceil(group.size * min_fraction / unit)) * unit)


class CostFn:
    """Cost of kept shares per group, and the change when one group's share moves."""

    def __init__(self, total: Callable[[dict], float], change: Callable[[dict, int, float], float]) -> None:
        self.total = total
        self.change = change

    @classmethod
    def macs(cls, graph: ChannelGraph) -> CostFn:
        cm = CostModel(graph)
        return cls(lambda s: cm.cost(s)[0], lambda s, g, v: cm.change(s, g, v)[0])

    @classmethod
    def params(cls, graph: ChannelGraph) -> CostFn:
        cm = CostModel(graph)
        return cls(lambda s: cm.cost(s)[1], lambda s, g, v: cm.change(s, g, v)[1])

    @classmethod
    def latency(cls, model) -> CostFn:
        return cls(model.predict, model.predict_change)


def solve(
    graph: ChannelGraph,
    groups: list[ChannelGroup],
    scores: dict[int, np.ndarray],
    cost: CostFn,
    budget_ratio: float,
    min_fraction: float = 0.05,
    chunk_fraction: float = 0.05,
    round_to: int = 1,
    rank_by: CostFn | None = None,
    normalise: str = "cost",
    min_steps: int = 1,
) -> Solution:
    """Remove channels until ``cost <= budget_ratio * cost(dense)``, least importance per cost first.

    ``rank_by`` ranks chunks by importance lost per unit of another cost (e.g. cap FLOPs, rank by
    predicted latency); by default the budgeted cost ranks them. ``round_to`` and ``min_steps``: the step of
    each group's kept count (:func:`~hwprune.prune.channel.unit_of`).
    """
    rank_by = rank_by or cost
    if not 0.0 < budget_ratio <= 1.0:
        raise HwpruneError(f"a budget is a ratio of the dense model's cost in (0, 1] (got {budget_ratio})")
    shares: dict[int, float] = {}
    kept = {g.id: g.size for g in groups}
    base = cost.total({})
    norm = normalised(groups, scores, normalise, cost, base)
    order = {g.id: _removal_order(g, norm[g.id]) for g in groups}  # least important first (blocks: round-robin)
    budget = budget_ratio * base
    current = base
    steps = 0
    by_id = {g.id: g for g in groups}
    units = {g.id: unit_of(g, round_to, min_steps) for g in groups}
    while current > budget:
        best = None
        for gid, g in by_id.items():
            unit, floor = units[gid], min_keep(g, units[gid], min_fraction)
            if _grid_below(kept[gid], unit) < floor:
                continue
            step = kept[gid] - max(floor, _grid_below(kept[gid], unit, max(1, int(g.size * chunk_fraction / unit))))
            new_share = (kept[gid] - step) / g.size
            saved = -cost.change(shares, gid, new_share)
            ranked = saved if rank_by is cost else -rank_by.change(shares, gid, new_share)
            if saved <= 0 or ranked <= 0:
                continue
            lost = norm[gid][order[gid][g.size - kept[gid] : g.size - kept[gid] + step]].sum()
            ratio = lost / ranked
            if best is None or ratio < best[0]:
                best = (ratio, gid, step, saved)
        if best is None:
            break
        _, gid, step, saved = best
        if current - saved <= budget:
            # the last removal: the fewest-importance single unit of any group that meets the budget, so a coarse
            # step of an expensive group does not overshoot it (else single units of the best group)
            finish = _finishing_unit(by_id, units, kept, shares, order, norm, cost, current, budget, min_fraction)
            if finish is not None:
                gid, step, saved = finish
            elif kept[gid] - step < _grid_below(kept[gid], units[gid]):
                step = kept[gid] - _grid_below(kept[gid], units[gid])
                saved = -cost.change(shares, gid, (kept[gid] - step) / by_id[gid].size)
        kept[gid] -= step
        shares[gid] = kept[gid] / by_id[gid].size
        current -= saved
        steps += 1
    current = _fill(by_id, units, kept, shares, order, norm, cost, current, budget)
    mask = ChannelMask.full(graph)
    importance = 0.0
    for gid, g in by_id.items():
        if kept[gid] < g.size:
            removed = set(order[gid][: g.size - kept[gid]].tolist())
            keep = np.array([i not in removed for i in range(g.size)])
            mask.keep[gid] = keep
        importance += float(norm[gid][mask.keep.get(gid, np.ones(g.size, bool))].sum())
    current = cost.total(shares)  # exact, free of accumulated rounding
    reachable = current <= budget * (1 + 1e-9)
    notes = [] if reachable else [f"budget {budget_ratio:.3f} unreachable: best reachable ratio {current / base:.3f}"]
    return Solution(mask, current, base, budget, reachable, importance, steps, notes)


NORMALISATIONS = ("cost", "mean", "none")  # the first is the default


def normalised(groups, scores: dict[int, np.ndarray], how: str, cost: CostFn, base: float) -> dict[int, np.ndarray]:
    """Scores made comparable across groups, as ``how`` says (see the module docstring)."""
    if how not in NORMALISATIONS:
        raise HwpruneError(f"importance normalisation is one of {', '.join(NORMALISATIONS)} (got {how!r})")
    norm = {}
    for g in groups:
        s = np.asarray(scores[g.id], dtype=float)
        if how == "mean":
            norm[g.id] = s / (np.abs(s).mean() or 1.0)
        elif how == "none":
            norm[g.id] = s
        else:
            share = max(0.0, -cost.change({}, g.id, 0.0)) / (base or 1.0)
            norm[g.id] = s / (np.abs(s).sum() or 1.0) * share
    return norm


def _grid_below(kept: int, unit: int, steps: int = 1) -> int:
    """The kept count ``steps`` grid points below ``kept``.

    Kept counts are multiples of ``unit`` or the whole group, so a 120-channel group in steps of 16 goes
    120, 112, 96, ... (aligned from its first cut).
    """
    return ((kept - 1) // unit - (steps - 1)) * unit


def _grid_above(kept: int, unit: int, size: int) -> int:
    return min(size, (kept // unit + 1) * unit)


def _finishing_unit(by_id, units, kept, shares, order, norm, cost, current, budget, min_fraction):
    """(group, unit, cost saved) of the single-unit removal that meets the budget losing the least importance."""
    best = None
    for gid, g in by_id.items():
        step = kept[gid] - _grid_below(kept[gid], units[gid])
        if kept[gid] - step < min_keep(g, units[gid], min_fraction):
            continue
        saved = -cost.change(shares, gid, (kept[gid] - step) / g.size)
        if current - saved > budget:
            continue
        lost = norm[gid][order[gid][g.size - kept[gid] : g.size - kept[gid] + step]].sum()
        if best is None or lost < best[0]:
            best = (lost, gid, step, saved)
    return None if best is None else best[1:]


def _fill(by_id, units, kept, shares, order, norm, cost, current, budget) -> float:
    """Give back single units, most important first, while the budget still holds (tightens greedy)."""
    while True:
        candidates = []
        for gid, g in by_id.items():
            if kept[gid] == g.size:
                continue
            add = _grid_above(kept[gid], units[gid], g.size) - kept[gid]
            back = order[gid][g.size - kept[gid] - add : g.size - kept[gid]]
            candidates.append((-norm[gid][back].sum(), gid, add))
        for _, gid, add in sorted(candidates):
            new_share = (kept[gid] + add) / by_id[gid].size
            added = cost.change(shares, gid, new_share)
            if current + added <= budget:
                kept[gid] += add
                shares[gid] = new_share
                current += added
                break
        else:
            return current


def _removal_order(group: ChannelGroup, scores: np.ndarray) -> np.ndarray:  # noqa: D103
    """Channel indices in the order they are removed; with blocks, one per block in turn."""
    if not group.blocks:
        return np.argsort(scores, kind="stable")
    per_block = [np.asarray(b)[np.argsort(scores[list(b)], kind="stable")] for b in group.blocks]
    return np.stack(per_block, axis=1).reshape(-1)
