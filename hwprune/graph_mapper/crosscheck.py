"""Cross-check the two front-ends: the fx graph of a model and the ONNX graph of its export should agree.

What is matched, and why: only the slices on conv and linear weights (tensors of two or more
dimensions). Exporters do not keep the rest recognisable: in eval mode both the dynamo and the
TorchScript exporter fold a BatchNormalization that follows a conv into the conv (its scale and
shift disappear, a new bias appears, e.g. ``conv1.weight_bias``; a BatchNorm before a conv, as in
DenseNet, stays); the TorchScript exporter renames folded weights (``onnx::Conv_203``); the dynamo
exporter keeps parameter names but writes a Linear it lowers to MatMul (on 3-D or 4-D inputs) as a
new, transposed initializer (``val_4``). So each ONNX weight is
resolved to an fx parameter by name when the name and shape agree, otherwise by value: equal,
equal after a transpose (MatMul), or equal up to one scale per output row (a folded BatchNorm).

Groups are then paired by those weight slices (tensor, axis, set of positions): every slice of an
fx group must appear, at the same positions, in exactly one ONNX group and vice versa, and paired
groups must agree on size, prunability and exactness. Groups with no weight slice (a frozen
norm's channels) are not compared.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from onnx import numpy_helper

from hwprune.graph_mapper.types import ChannelGraph

ROW_TOLERANCE = 1e-4  # relative; BN folding rescales rows in float32


@dataclass
class GroupMatch:
    """Pairs of (fx group id, ONNX group id) and every disagreement found, one line each."""

    pairs: list[tuple[int, int]]
    differences: list[str] = field(default_factory=list)
    resolved: dict[str, tuple[str, bool]] = field(default_factory=dict)  # ONNX weight -> (fx weight, transposed)

    @property
    def ok(self) -> bool:
        return not self.differences


def _weights(tensors: dict[str, np.ndarray], graph: ChannelGraph) -> dict[str, np.ndarray]:
    """The conv/linear weights of ``graph``: tensors a site with multiply-adds names.

    Per-channel or per-head tensors (norm scales, layer scales, class tokens, position tables)
    are left out: exporters fold them into constants that no longer resemble the parameter.
    """
    named = {s.tensor for s in graph.sites if s.macs > 0}
    return {n: t for n, t in tensors.items() if n in named and t.ndim >= 2}


def _same_up_to_row_scale(a: np.ndarray, b: np.ndarray) -> bool:
    """``a`` equals ``b`` with each output row (axis 0) multiplied by one nonzero factor."""
    a2, b2 = a.reshape(a.shape[0], -1).astype(np.float64), b.reshape(b.shape[0], -1).astype(np.float64)
    norm = (b2 * b2).sum(1)
    scale = np.divide((a2 * b2).sum(1), norm, out=np.zeros_like(norm), where=norm > 0)
    err = np.abs(a2 - scale[:, None] * b2).max(1)
    return bool((err <= ROW_TOLERANCE * np.abs(a2).max(1)).all() and (scale[norm > 0] != 0).all())


def resolve_weights(fx_weights: dict[str, np.ndarray], onnx_weights: dict[str, np.ndarray]) -> dict:
    """ONNX weight -> (fx weight, transposed): by name and shape, else by value (see the module doc)."""
    resolved = {n: (n, False) for n, w in onnx_weights.items() if n in fx_weights and fx_weights[n].shape == w.shape}
    taken = {fx_name for fx_name, _ in resolved.values()}
    for name, w in onnx_weights.items():
        if name in resolved:
            continue
        for fx_name, v in fx_weights.items():
            if fx_name in taken:
                continue
            if v.shape == w.shape and _same_up_to_row_scale(w, v):
                resolved[name] = (fx_name, False)
            elif v.ndim == 2 and v.T.shape == w.shape and np.allclose(w, v.T, rtol=1e-6, atol=0):
                resolved[name] = (fx_name, True)
            else:
                continue
            taken.add(fx_name)
            break
    return resolved


def _slice_keys(graph: ChannelGraph, rename) -> dict[tuple, int]:
    """(weight, axis, positions) -> group id, for the weight slices ``rename`` maps (to fx names and axes)."""
    keys = {}
    for g in graph.groups:
        for sl in g.slices:
            where = rename(sl.tensor, sl.axis)
            if where is not None:
                keys[(*where, frozenset(sl.index))] = g.id
    return keys


def match_groups(fx_graph: ChannelGraph, onnx_graph: ChannelGraph) -> GroupMatch:
    """Pair the groups of the two front-ends by their weight slices and list where they disagree."""
    fx_weights = _weights({n: p.detach().cpu().numpy() for n, p in fx_graph.gm.named_parameters()}, fx_graph)
    onnx_weights = _weights({t.name: numpy_helper.to_array(t) for t in onnx_graph.gm.graph.initializer}, onnx_graph)
    resolved = resolve_weights(fx_weights, onnx_weights)
    fx_names = {fx_name for fx_name, _ in resolved.values()}
    differences = [
        f"{side} weights without a counterpart: {', '.join(sorted(names))}"
        for side, names in (("ONNX", set(onnx_weights) - set(resolved)), ("fx", set(fx_weights) - fx_names))
        if names
    ]

    def from_fx(tensor, axis):
        return (tensor, axis) if tensor in fx_names else None

    def from_onnx(tensor, axis):
        if tensor not in resolved:
            return None
        fx_name, transposed = resolved[tensor]
        return fx_name, (1 - axis if transposed else axis)

    fx_keys, onnx_keys = _slice_keys(fx_graph, from_fx), _slice_keys(onnx_graph, from_onnx)
    partners: dict[int, set[int]] = defaultdict(set)
    for key, gid in fx_keys.items():
        if key in onnx_keys:
            partners[gid].add(onnx_keys[key])
        else:
            differences.append(f"fx group {gid} ({fx_graph.groups[gid].name}): {_key_text(key)} is in no ONNX group")
    differences += [
        f"ONNX group {gid} ({onnx_graph.groups[gid].name}): {_key_text(key)} is in no fx group"
        for key, gid in onnx_keys.items()
        if key not in fx_keys
    ]
    pairs = []
    claimed: dict[int, int] = {}
    for fid, oids in sorted(partners.items()):
        if len(oids) > 1:
            differences.append(f"fx group {fid} is split over ONNX groups {sorted(oids)}")
            continue
        (oid,) = oids
        if oid in claimed:
            differences.append(f"ONNX group {oid} joins fx groups {claimed[oid]} and {fid}")
            continue
        claimed[oid] = fid
        pairs.append((fid, oid))
        differences += _compare(fx_graph.groups[fid], onnx_graph.groups[oid])
    return GroupMatch(pairs, differences, resolved)


def _key_text(key: tuple) -> str:
    tensor, axis, positions = key
    return f"{tensor} axis {axis} ({len(positions)} positions)"


def _compare(fx_group, onnx_group) -> list[str]:
    out = []
    for attr in ("size", "prunable", "exact"):
        a, b = getattr(fx_group, attr), getattr(onnx_group, attr)
        if a != b:
            out.append(f"fx group {fx_group.id} / ONNX group {onnx_group.id} ({fx_group.name}): {attr} {a} vs {b}")
    return out


def onnx_groups_of(fx_graph: ChannelGraph, onnx_graph: ChannelGraph, resolved: dict) -> dict[int, set[int]]:
    """Fx group id -> the ONNX groups its channels fall in, position by position on shared weights.

    Every set has one element when the ONNX front-end is the same as, or coarser than, the fx one
    (an ONNX group may join fx groups, e.g. query, key and value of a fused projection that the
    exported reshape keeps rectangular); a set of two or more means the ONNX side split an fx group.
    """

    def group_per_position(graph: ChannelGraph) -> dict[tuple[str, int], np.ndarray]:
        gid_of = {root: g.id for g in graph.groups for root in g.roots}
        return {
            (s.tensor, s.axis): np.array([gid_of.get(int(r), -1) for r in s.roots])
            for s in graph.sites
            if (s.roots >= 0).any()
        }

    fx_pos, onnx_pos = group_per_position(fx_graph), group_per_position(onnx_graph)
    found: dict[int, set[int]] = defaultdict(set)
    for (tensor, axis), onnx_gids in onnx_pos.items():
        if tensor not in resolved:
            continue
        fx_name, transposed = resolved[tensor]
        fx_gids = fx_pos.get((fx_name, 1 - axis if transposed else axis))
        if fx_gids is None or fx_gids.shape != onnx_gids.shape:
            continue
        for f, o in zip(fx_gids.tolist(), onnx_gids.tolist(), strict=True):
            if f >= 0 and o >= 0:
                found[f].add(o)
    return dict(found)
