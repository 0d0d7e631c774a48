"""Scores -> channel masks, respecting each group's constraints (conv-group blocks, round_to, >= 1)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from hwprune.graph_mapper.types import ChannelGraph, ChannelGroup
from hwprune.prune.masks import ChannelMask

COUNTED_MIN_STEPS = 4  # FLOPs/params budgets: alignment halved until every group spans this many steps


def unit_of(group: ChannelGroup, round_to: int = 1, min_steps: int = 1) -> int:
    """The step in which a group's kept count may change.

    A multiple of the number of conv-group blocks (equal count per block) and of ``round_to``
    (hardware alignment: on ONNX Runtime CPU a conv with 24 channels can be slower than one with 32).
    A group no larger than its step cannot shrink aligned and is left whole (the step is its size):
    mobilenet_v2's 16-channel group cut to 12 made the whole network 6 % slower on ONNX Runtime.
    ``min_steps`` > 1 halves the alignment (never the group's own ``round_to``) until the group spans that
    many steps: a FLOPs or params budget asks for fewer operations, and a small model whose groups all stay
    whole could not meet it (lenet5's 6- and 16-channel convolutions under 16-alignment).
    """
    align = max(1, round_to)
    while min_steps > 1 and align > 1 and group.size < min_steps * align:
        align //= 2
    blocks = len(group.blocks) if group.blocks else 1
    return min(group.size, math.lcm(blocks, max(align, group.round_to)))


def channels_kept(group: ChannelGroup, ratio: float, round_to: int = 1) -> int:
    """Channels to keep when removing ``ratio`` of the group: a whole number of units, at least one."""
    unit = unit_of(group, round_to)
    kept = int(round(group.size * (1.0 - ratio) / unit)) * unit
    return int(min(group.size, max(unit, kept)))


def top_k_mask(group: ChannelGroup, scores: np.ndarray, k: int) -> np.ndarray:
    """Keep the ``k`` highest-scoring channels; with conv-group blocks, the best k/blocks of each."""
    keep = np.zeros(group.size, dtype=bool)
    if group.blocks:
        per_block = k // len(group.blocks)
        for block in group.blocks:
            idx = np.asarray(block)
            keep[idx[np.argsort(-scores[idx], kind="stable")[:per_block]]] = True
    else:
        keep[np.argsort(-scores, kind="stable")[:k]] = True
    return keep


def uniform_channel_mask(
    graph: ChannelGraph,
    scores: dict[int, np.ndarray],
    ratio: float,
    include_inexact: bool = False,
    round_to: int = 1,
) -> ChannelMask:
    """Remove ``ratio`` of every prunable group, lowest scores first (layer-uniform pruning)."""
    mask = ChannelMask.full(graph)
    for group in graph.prunable_groups:
        if group.size < 2 or (not group.exact and not include_inexact) or group.id not in scores:
            continue
        mask.keep[group.id] = top_k_mask(group, scores[group.id], channels_kept(group, ratio, round_to))
    return mask


def random_scores(graph: ChannelGraph, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {g.id: rng.random(g.size) for g in graph.groups}


def norm_scores(graph: ChannelGraph, model: nn.Module, p: int = 1) -> dict[int, np.ndarray]:
    """L_p norm of each channel's producer weights, summed over every producer of the group."""
    tensors = dict(model.named_parameters())
    out = {}
    for group in graph.groups:
        total = np.zeros(group.size)
        for sl in group.producers:
            w = tensors.get(sl.tensor)
            if w is None or not sl.tensor.endswith("weight"):
                continue
            rows = w.detach().movedim(sl.axis, 0).reshape(w.shape[sl.axis], -1)
            per_pos = torch.linalg.vector_norm(rows.float(), ord=p, dim=1).numpy()
            total += per_pos[np.asarray(sl.index)].reshape(group.size, sl.inner).sum(1)
        out[group.id] = total
    return out
