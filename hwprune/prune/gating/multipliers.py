"""Latency edge multipliers from an edge-profile LUT, so a latency-aware run needs none written by hand.

GATOR's multiplier of an edge is (% latency drop) / (% FLOPs drop) when the edge keeps half its
channels. Here the latency drop is the one the LUT's fitted latency model predicts
(:class:`~hwprune.latency.model.LatencyModel`) rather than the raw point: a single point carries ~1 %
timing noise, as large as a small group's whole effect, and groups the profile skipped get a value too.
"""

from __future__ import annotations

from hwprune.graph_mapper.types import ChannelGraph
from hwprune.latency.lut import LUT
from hwprune.latency.model import LatencyModel
from hwprune.prune.gating.gates import GateLayout

HALF = 0.5


def lut_multipliers(lut: LUT, graph: ChannelGraph, layout: GateLayout) -> list[float]:
    """One multiplier per gated group (1.0 where halving the group moves no multiply-adds)."""
    model = LatencyModel(lut, graph)  # refuses a LUT measured on another structure
    out = []
    for group in layout.groups:
        macs_change, _ = model.costs.change({}, group.id, HALF)
        if macs_change >= 0:
            out.append(1.0)
            continue
        latency_drop = -model.predict_change({}, group.id, HALF) / model.baseline_ms
        out.append(latency_drop / (-macs_change / model.costs.total_macs))
    return out
