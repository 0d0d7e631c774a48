"""Exact conv/linear multiply-adds and parameter count of a ChannelGraph under a keep assignment.

A weight's cost scales with the kept fraction of each of its channel axes (out rows x in
columns); a depthwise conv has one channel axis. So the cost of any mask is a product formula
over the sites, with no tracing or counting: fast enough for a solver to call at every step.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from hwprune.graph_mapper.types import ChannelGraph


@dataclass
class CostModel:
    """Per weight tensor: its MACs and params and, per channel axis, which group holds each position."""

    graph: ChannelGraph

    def __post_init__(self) -> None:
        # "axes": per channel site, (group ids, share of the axis each holds); "axis": which tensor axis it is
        self.tensors: dict[str, dict] = defaultdict(lambda: {"macs": 0, "numel": 0, "axes": [], "axis": []})
        group_of_root = {}
        for g in self.graph.groups:
            for r in g.roots:
                group_of_root[r] = g.id
        for site in self.graph.sites:
            entry = self.tensors[site.tensor]
            entry["macs"] = max(entry["macs"], site.macs)
            entry["numel"] = site.numel
            gids = np.array([group_of_root.get(int(r), -1) for r in site.roots])
            uniq, counts = np.unique(gids, return_counts=True)  # group of each position (-1: fixed)
            entry["axes"].append((uniq.tolist(), counts / counts.sum()))
            entry["axis"].append(site.axis)
        params = self.graph.parameters()
        for name in [n for n in self.tensors if n not in params]:  # buffers (running stats) are no params
            self.tensors[name]["numel"] = 0
        self.total_macs = sum(e["macs"] for e in self.tensors.values())
        # parameters on no channel axis (e.g. inside a frozen attention module) never shrink
        self.fixed_params = sum(p.numel() for p in params.values()) - sum(e["numel"] for e in self.tensors.values())
        self.total_params = self.fixed_params + sum(e["numel"] for e in self.tensors.values())

    def tensors_of(self, gid: int) -> list[str]:
        if not hasattr(self, "_by_group"):
            self._by_group: dict[int, list[str]] = defaultdict(list)
            for name, entry in self.tensors.items():
                for g in {g for gids, _ in entry["axes"] for g in gids if g >= 0}:
                    self._by_group[g].append(name)
        return self._by_group.get(gid, [])

    def fraction(self, name: str, shares: dict[int, float]) -> float:
        frac = 1.0
        for gids, weights in self.tensors[name]["axes"]:
            frac *= float(np.dot(weights, [shares.get(g, 1.0) for g in gids]))
        return frac

    def axis_fraction(self, name: str, axis: int, shares: dict[int, float]) -> float:
        """Kept share of tensor ``name``'s ``axis`` (1 when no channel site lies on it)."""
        entry = self.tensors[name]
        for site_axis, (gids, weights) in zip(entry["axis"], entry["axes"], strict=True):
            if site_axis == axis:
                return float(np.dot(weights, [shares.get(g, 1.0) for g in gids]))
        return 1.0

    def change(self, shares: dict[int, float], gid: int, new_share: float) -> tuple[float, float]:
        """(MACs, params) change when group ``gid`` moves to ``new_share``: only its tensors are visited."""
        dm = dp = 0.0
        for name, delta in self.fraction_changes(shares, gid, new_share):
            dm += self.tensors[name]["macs"] * delta
            dp += self.tensors[name]["numel"] * delta
        return dm, dp

    def fraction_changes(self, shares: dict[int, float], gid: int, new_share: float) -> list[tuple[str, float]]:
        """(tensor, change of its kept fraction) for each tensor of group ``gid`` moving to ``new_share``."""
        after = {**shares, gid: new_share}
        return [(name, self.fraction(name, after) - self.fraction(name, shares)) for name in self.tensors_of(gid)]

    def fractions(self, kept_per_group: dict[int, float]) -> dict[str, float]:
        """Kept fraction of each tensor's elements, given the kept share of each group."""
        return {name: self.fraction(name, kept_per_group) for name in self.tensors}

    def cost(self, kept_per_group: dict[int, float]) -> tuple[float, float]:
        """(MACs, params) of the weights under the mask, with kept shares per group."""
        fr = self.fractions(kept_per_group)
        macs = sum(self.tensors[n]["macs"] * f for n, f in fr.items())
        params = self.fixed_params + sum(self.tensors[n]["numel"] * f for n, f in fr.items())
        return macs, params


def kept_shares(graph: ChannelGraph, mask) -> dict[int, float]:
    return {g: float(k.mean()) for g, k in mask.keep.items()}
