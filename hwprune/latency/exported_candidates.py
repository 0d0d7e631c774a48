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
    """The translation of ``groups``' masks into ``onnx_path``'s graph, or the reason there is none."""
    from hwprune.graph_mapper.onnx_mapper import build_onnx_channel_graph

    try:
        onnx_graph = build_onnx_channel_graph(onnx_path, graph.model_name)
    except HwpruneError as exc:
        return f"the exported file could not be mapped ({exc})"
    profiled = {g.id for g in groups}
    owner = {key: g.id for g in graph.groups for key in _slices(g)}
    pairs, matched = [], set()
    for og in onnx_graph.prunable_groups:
        slices = _slices(og)
        owners = {owner[key] for key in slices if key in owner}
        if len(owners) > 1:
            return f"the exported file merges groups {sorted(owners)} into one"
        if not og.exact or not owners or not owners <= profiled:
            continue
        key = next(key for key in slices if key in owner)
        gid, onnx_slice = owner[key], slices[key]
        torch_slice = _slices(graph.group(gid))[key]
        if len(torch_slice.index) != len(onnx_slice.index) or torch_slice.inner != onnx_slice.inner:
            return f"group {graph.group(gid).name!r} spans {key[0]} differently in the exported file"
        pairs.append((og.id, gid, torch_slice, onnx_slice))
        matched.add(gid)
    missing = [g.name for g in groups if g.id not in matched]
    if missing:
        return f"{len(missing)} profiled group(s) have no counterpart in the exported file (first: {missing[0]!r})"
    return MaskTranslation(graph, onnx_graph, pairs)
