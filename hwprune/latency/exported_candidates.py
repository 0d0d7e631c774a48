"""Timing candidates cut from one ONNX export of the dense model, instead of one export per mask.

Exporting a compacted ResNet-50 with the dynamo exporter takes ~6 s, longer than timing it; a profile
of dozens of masks spends most of its time exporting. The dense model's file, mapped by the ONNX
front-end, is compacted per mask directly (~0.1 s): the same operators as an export of the compacted
module, with smaller initializers. A mask on the PyTorch graph is carried over through the weight
axes both graphs name alike (the exporter keeps parameter names), position by position, so the
same channels go. Where a profiled group has no counterpart in the file, there is no translation
and every candidate is exported as before (``translation_for`` says why).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hwprune.errors import HwpruneError
from hwprune.graph_mapper.types import ChannelGraph, ChannelGroup, ChannelSlice
from hwprune.prune.masks import ChannelMask


def _slices(group: ChannelGroup) -> dict[tuple[str, int], ChannelSlice]:
    return {(s.tensor, s.axis): s for s in group.slices}


@dataclass
class MaskTranslation:
    """Carries masks of a PyTorch ``graph`` over to ``onnx_graph``, the graph of its dense export."""

    graph: ChannelGraph
    onnx_graph: ChannelGraph
    pairs: list[tuple[int, int, ChannelSlice, ChannelSlice]]  # (onnx gid, torch gid, torch slice, onnx slice)

    def onnx_mask(self, mask: ChannelMask) -> ChannelMask:
        """``mask``'s kept channels as a mask of the exported graph (a channel keeps iff its positions do)."""
        out = ChannelMask.full(self.onnx_graph)
        for onnx_gid, gid, torch_slice, onnx_slice in self.pairs:
            keep = mask.keep.get(gid)
            if keep is None or keep.all():
                continue
            kept_positions = {
                torch_slice.index[k * torch_slice.inner + i]
                for k in np.flatnonzero(keep)
                for i in range(torch_slice.inner)
            }
            size = self.onnx_graph.group(onnx_gid).size
            out.keep[onnx_gid] = np.array(
                [onnx_slice.index[j * onnx_slice.inner] in kept_positions for j in range(size)], dtype=bool
            )
        return out


def translation_for(graph: ChannelGraph, onnx_path: str | Path, groups: list[ChannelGroup]) -> MaskTranslation | str:
    """The translation of ``groups``' masks into ``onnx_path``'s graph, or the reason there is none.

    Groups are paired as the front-ends' cross-check pairs them (:func:`hwprune.graph_mapper.crosscheck.match_groups`:
    weights resolved by name, else by value, e.g. a Linear the exporter wrote transposed); each profiled group
    needs a partner of its own and a weight slice both sides share.
    """
    from hwprune.graph_mapper.crosscheck import match_groups
    from hwprune.graph_mapper.onnx_mapper import build_onnx_channel_graph

    try:
        onnx_graph = build_onnx_channel_graph(onnx_path, graph.model_name)
    except HwpruneError as exc:
        return f"the exported file could not be mapped ({exc})"
    match = match_groups(graph, onnx_graph)
    partner = dict(match.pairs)
    pairs = []
    for group in groups:
        oid = partner.get(group.id)
        shared = None if oid is None else _shared_slice(group, onnx_graph.group(oid), match.resolved)
        if shared is None:
            return f"profiled group {group.name!r} has no counterpart in the exported file"
        pairs.append((oid, group.id, *shared))
    return MaskTranslation(graph, onnx_graph, pairs)


def _shared_slice(group: ChannelGroup, onnx_group: ChannelGroup, resolved: dict) -> tuple | None:
    """(the group's slice, the ONNX group's slice) on one weight axis both hold, or None."""
    torch_slices = _slices(group)
    for onnx_slice in onnx_group.slices:
        if onnx_slice.tensor not in resolved:
            continue
        name, transposed = resolved[onnx_slice.tensor]
        torch_slice = torch_slices.get((name, 1 - onnx_slice.axis if transposed else onnx_slice.axis))
        if torch_slice is not None and len(torch_slice.index) == len(onnx_slice.index):
            return torch_slice, onnx_slice
    return None
