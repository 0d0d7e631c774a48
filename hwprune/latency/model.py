"""Predict a mask's latency from an edge-profile LUT.

Each profiled group has a measured curve: latency saved against the fraction of its channels
removed (piecewise linear through (0, 0) and the measured points, extended along the last
segment). Alone, a group's removal cuts the MACs of the weights it touches linearly. When two
groups share a weight (a conv's output and input channels) the MACs fall as the product of their
kept shares, so each group is credited with its Shapley share of that weight's saving: for kept
shares a (this axis) and b (the other), (1 - a)(1 + b) / 2. A group's *effective* removed
fraction is its credited saving over what removing it entirely would save alone, and the curve
is read at that fraction. Single-group masks reproduce the LUT exactly. Summed savings over many
groups overshoot (shared fixed costs, cache effects), so a least-squares scale fitted on the LUT's
calibration masks (whole-network random masks measured with the profile) corrects their sum.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hwprune.graph_mapper.cost import CostModel
from hwprune.graph_mapper.types import ChannelGraph
from hwprune.latency.lut import LUT


@dataclass
class _Curve:
    removed: np.ndarray  # fractions removed, ascending, starting at 0
    saved_ms: np.ndarray

    def __call__(self, x: float) -> float:
        if x <= self.removed[-1]:
            return float(np.interp(x, self.removed, self.saved_ms))
        slope = (self.saved_ms[-1] - self.saved_ms[-2]) / (self.removed[-1] - self.removed[-2])
        return float(self.saved_ms[-1] + slope * (x - self.removed[-1]))


class LatencyModel:
    """latency(mask) = baseline - sum over groups of curve_g(effective removed fraction of g)."""

    def __init__(self, lut: LUT, graph: ChannelGraph) -> None:
        lut.check(fingerprint=graph.fingerprint())
        self.baseline_ms = lut.baseline_ms
        self.curves: dict[int, _Curve] = {}
        for gid, pts in lut.by_group().items():
            pts = sorted(pts, key=lambda p: p.size - p.kept)  # ascending removed fraction, for interpolation
            removed = [0.0] + [1.0 - p.kept / p.size for p in pts]
            saved = [0.0] + [p.delta_ms for p in pts]
            self.curves[gid] = _Curve(np.asarray(removed), np.asarray(saved))
        costs = CostModel(graph)
        # per group: (tensor MACs, weight of the group on its axis, index of that axis) for MAC-bearing tensors
        self._terms: dict[int, list[tuple[str, int, float]]] = {g: [] for g in self.curves}
        self._axes: dict[str, list[tuple[list[int], np.ndarray]]] = {}
        self._macs: dict[str, float] = {}
        for name, entry in costs.tensors.items():
            if entry["macs"] <= 0:
                continue
            self._axes[name] = entry["axes"]
            self._macs[name] = entry["macs"]
            for k, (gids, weights) in enumerate(entry["axes"]):
                for g, w in zip(gids, weights, strict=True):
                    if g in self._terms:
                        self._terms[g].append((name, k, float(w)))
        self.scale = self._calibrate(lut.calibration)
        self.neighbours = {
            g: sorted({h for t, _, _ in terms for gids, _ in self._axes[t] for h in gids if h in self.curves})
            for g, terms in self._terms.items()
        }

    def _calibrate(self, calibration: list[dict]) -> float:
        """Least-squares factor on the summed savings from whole-network masks (1 without any)."""
        model, measured = [], []
        for c in calibration:
            shares = {int(g): v for g, v in c["shares"].items()}
            model.append(sum(self.saved_ms(g, shares) for g in self.curves if shares.get(g, 1.0) < 1.0))
            measured.append((c["baseline_ms"] - c["latency_ms"]) / c["baseline_ms"] * self.baseline_ms)
        model, measured = np.asarray(model), np.asarray(measured)
        if not model.size or float(model @ model) <= 0:
            return 1.0
        return float(np.clip(model @ measured / (model @ model), 0.5, 1.5))

    def _axis_kept(self, tensor: str, k: int, shares: dict[int, float]) -> float:
        gids, weights = self._axes[tensor][k]
        return float(np.dot(weights, [shares.get(g, 1.0) for g in gids]))

    def _credited(self, gid: int, shares: dict[int, float]) -> float:
        """MACs saving credited to ``gid`` (its Shapley share of each weight it shrinks)."""
        credited = 0.0
        removed = 1.0 - shares.get(gid, 1.0)
        for tensor, k, w in self._terms[gid]:
            others = [self._axis_kept(tensor, j, shares) for j in range(len(self._axes[tensor])) if j != k]
            factor = float(np.prod([(1.0 + b) / 2.0 for b in others])) if others else 1.0
            credited += self._macs[tensor] * w * removed * factor
        return credited

    def effective_removed(self, gid: int, shares: dict[int, float]) -> float:
        """The removed fraction scaled by credited saving under ``shares`` over the saving alone."""
        removed = 1.0 - shares.get(gid, 1.0)
        alone = self._credited(gid, {gid: shares.get(gid, 1.0)})
        if removed <= 0 or alone <= 0:
            return removed
        return removed * self._credited(gid, shares) / alone

    def saved_ms(self, gid: int, shares: dict[int, float]) -> float:
        return self.curves[gid](self.effective_removed(gid, shares))

    def predict(self, shares: dict[int, float]) -> float:
        """Predicted latency (ms) for kept shares per group (groups not listed keep everything)."""
        saved = sum(self.saved_ms(g, shares) for g in self.curves if shares.get(g, 1.0) < 1.0)
        return self.baseline_ms - self.scale * saved

    def predict_change(self, shares: dict[int, float], gid: int, new_share: float) -> float:
        """Predicted latency change (ms, negative = faster) when group ``gid`` moves to ``new_share``."""
        after = dict(shares)
        after[gid] = new_share
        affected = self.neighbours.get(gid, [gid])
        return self.scale * sum(self.saved_ms(h, shares) - self.saved_ms(h, after) for h in affected)
