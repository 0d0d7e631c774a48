"""Trained gates -> ChannelMask: the converter GATOR needed a hand-written class per network for.

The mask keeps exactly the active channels, so the masked model, and the compacted model that
:func:`hwprune.export.pipeline.export_pruned` proves equal to it, compute what the gated model
computes in eval mode.
"""

from __future__ import annotations

from hwprune.prune.gating.gates import GatedModel
from hwprune.prune.masks import ChannelMask


def gates_to_mask(gated: GatedModel, meta: dict | None = None) -> ChannelMask:
    """The channel mask of ``gated``'s active gates (groups left whole are not listed)."""
    active = gated.active.detach().cpu().numpy()
    keep = {}
    for i, (group, slots) in enumerate(zip(gated.layout.groups, gated.layout.slots, strict=True)):
        kept = active[gated.slot_range(i)][slots]
        if not kept.all():
            keep[group.id] = kept
    graph = gated.graph
    return ChannelMask(keep, graph.model_name, graph.fingerprint(), dict(meta or {}))
