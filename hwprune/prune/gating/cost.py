"""GATOR's cost criterion on a ChannelGraph: what one more open channel of each gated group costs.

Every weight tensor costs ``c_t x prod over its channel axes (kept share of the axis)``, with ``c_t``
its multiply-adds (``flop_factor``) or parameters (``memory_factor``): for a conv that is GATOR's
``factor x in x out`` in hwprune's units, and a depthwise conv, with one channel axis, is linear in
its channels. A channel of group ``e`` costs the derivative of the total with respect to ``e``'s
open count, the other groups at their current open counts (GATOR's adaptive factor), times the
group's edge multiplier. The cost term is

    criteria_weight x sum over gated groups e of multiplier_e x factor_e x (open gates of e) / static_total_cost

and its *ratio* is its value over its value with every gate open (what ``target`` refers to).
"""

from __future__ import annotations

import numpy as np

from hwprune.graph_mapper.cost import CostModel
from hwprune.graph_mapper.types import ChannelGraph
from hwprune.prune.gating.gates import GateLayout

COST_KEYS = {"flop_factor": "macs", "memory_factor": "numel"}


class GateCost:
    """Per-channel cost of each gated group (layout order) under given open counts.

    Args:
        graph: The graph the layout was made from.
        layout: The gated groups.
        factor_type: ``flop_factor`` or ``memory_factor``.
        multipliers: One edge multiplier per gated group.
        multiplier_source: Where they came from (``config``, ``lut:<path>``, ``none``).
    """

    def __init__(
        self,
        graph: ChannelGraph,
        layout: GateLayout,
        factor_type: str,
        multipliers: list[float],
        multiplier_source: str = "none",
    ) -> None:
        key = COST_KEYS[factor_type]
        index = {g.id: i for i, g in enumerate(layout.groups)}
        self.sizes = np.array([g.size for g in layout.groups], dtype=float)
        self.multipliers = np.asarray(multipliers, dtype=float)
        self.multiplier_source = multiplier_source
        # per tensor: its cost and, per channel axis, (gated-group index or -1 per group on it, share of positions)
        self.terms: list[tuple[float, list[tuple[np.ndarray, np.ndarray]]]] = []
        for entry in CostModel(graph).tensors.values():
            if entry[key] > 0:
                axes = [(np.array([index.get(g, -1) for g in gids]), np.asarray(w, float)) for gids, w in entry["axes"]]
                self.terms.append((float(entry[key]), axes))
        self.total = sum(cost for cost, _ in self.terms)

    def channel_costs(self, open_counts: np.ndarray) -> np.ndarray:
        """d(total cost)/d(open channels of each gated group), at ``open_counts`` (ungated groups whole)."""
        shares = np.append(np.asarray(open_counts, float) / self.sizes, 1.0)  # index -1: whole
        grad = np.zeros(len(self.sizes))
        for cost, axes in self.terms:
            kept = [float(w @ shares[g]) for g, w in axes]
            for k, (g, w) in enumerate(axes):
                rest = cost * float(np.prod(kept[:k] + kept[k + 1 :]))
                gated = g >= 0
                np.add.at(grad, g[gated], w[gated] * rest)
        return grad / self.sizes

    def weights(self, open_counts: np.ndarray) -> np.ndarray:
        """Multiplier x factor: the cost term's weight on one open channel of each gated group."""
        return self.multipliers * self.channel_costs(open_counts)

    def value(self, open_counts: np.ndarray) -> float:
        """The cost term's sum (before criteria_weight and the static divisor) at ``open_counts``."""
        return float(self.weights(open_counts) @ np.asarray(open_counts, float))

    def dense_value(self) -> float:
        return self.value(self.sizes)

    def total_cost(self, open_counts: np.ndarray) -> float:
        """The total cost itself (multiply-adds or parameters of the tensors on channel axes)."""
        shares = np.append(np.asarray(open_counts, float) / self.sizes, 1.0)
        return sum(cost * float(np.prod([w @ shares[g] for g, w in axes])) for cost, axes in self.terms)
