"""Front-end independent assembly: atoms, sites and labels in, a ChannelGraph out.

Both front-ends (torch.fx and ONNX) propagate channel atoms through their graph, record the
tensor axes that carry them (sites), and hand the result here, so groups are formed one way.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from hwprune.graph_mapper.atoms import AtomTable
from hwprune.graph_mapper.types import CONSUMER, PARAM, PRODUCER, ChannelGraph, ChannelGroup, ChannelSlice, Site


@dataclass
class RawSite:
    tensor: str
    axis: int
    atoms: np.ndarray
    role: str
    node: str
    kind: str
    conv_groups: int
    macs: int


def assemble(
    atoms: AtomTable,
    raw_sites: list[RawSite],
    numel: Mapping[str, int],
    labels: Mapping[str, object],
    rewrites: Mapping[str, tuple],
    name: str,
    input_shape: tuple[int, ...],
    gm: object = None,
    block_constraints: Sequence[tuple[str, np.ndarray]] = (),
) -> ChannelGraph:
    """Turn propagated atoms into channel groups (vectorised: one pass over all site positions).

    ``labels`` maps each graph node to its output label (to list the nodes a group flows through);
    ``numel`` gives the element count of every tensor a site names. ``block_constraints`` are
    (what, atoms of shape [blocks, n]) pairs from handlers whose op needs the same number of
    channels kept in every block (attention heads); grouped convs and norms state theirs on sites.
    """
    root_of = atoms.roots()

    def to_roots(atoms: np.ndarray) -> np.ndarray:
        return np.where(atoms >= 0, root_of[np.maximum(atoms, 0)], -1)

    sites = [
        Site(
            s.tensor,
            s.axis,
            s.role,
            s.node,
            to_roots(s.atoms),
            s.kind,
            s.conv_groups,
            s.macs,
            int(numel[s.tensor]),
        )
        for s in raw_sites
    ]
    # every labelled position of every site, flattened: its root, site and position on the axis
    flat = np.concatenate([site.roots for site in sites]) if sites else np.zeros(0, dtype=np.int64)
    site_of = np.repeat(np.arange(len(sites)), [site.length for site in sites])
    pos_in_site = np.concatenate([np.arange(site.length) for site in sites]) if sites else flat
    n_atoms = len(atoms)
    pos = np.flatnonzero(flat >= 0)

    # signature of a component: the (site, multiplicity) pairs it appears in, hashed
    pairs, counts = np.unique(flat[pos] * len(sites) + site_of[pos], return_counts=True)
    table_root, table_site = pairs // len(sites), pairs % len(sites)
    pair_keys = table_site * (int(counts.max(initial=0)) + 1) + counts
    _, pair_ids = np.unique(pair_keys, return_inverse=True)
    rng = np.random.default_rng(0)
    weights = rng.integers(1, 2**62, size=int(pair_ids.max(initial=0)) + 1, dtype=np.int64)
    sig_hash = np.zeros(n_atoms, dtype=np.int64)
    np.add.at(sig_hash, table_root, weights[pair_ids.reshape(-1)])

    # order channels by first appearance (sites follow the graph), groups by their first channel
    comp_roots, first = np.unique(flat[pos], return_index=True)
    comp_roots = comp_roots[np.argsort(first, kind="stable")]  # in order of first appearance
    _, first_of_sig, sig_of_comp = np.unique(sig_hash[comp_roots], return_index=True, return_inverse=True)
    group_rank = np.empty_like(first_of_sig)
    group_rank[np.argsort(first_of_sig, kind="stable")] = np.arange(first_of_sig.size)
    group_of_comp = group_rank[sig_of_comp.reshape(-1)]
    by_group = np.argsort(group_of_comp, kind="stable")  # stable: keeps first-appearance order inside
    bounds = np.searchsorted(group_of_comp[by_group], np.arange(first_of_sig.size + 1))
    members = [comp_roots[by_group[a:b]] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    group_of_root = np.full(n_atoms, -1, dtype=np.int64)
    group_of_root[comp_roots] = group_of_comp
    rank_of_root = np.full(n_atoms, -1, dtype=np.int64)
    for m in members:
        rank_of_root[m] = np.arange(m.size)

    # slices: positions of each (site, group), channels in rank order, repeats in position order
    r = flat[pos]
    sites_, groups_, ranks_, positions = site_of[pos], group_of_root[r], rank_of_root[r], pos_in_site[pos]
    order = np.lexsort((positions, ranks_, groups_, sites_))
    sites_, groups_, positions = sites_[order], groups_[order], positions[order]
    cuts = np.flatnonzero(np.diff(sites_ * (len(members) + 1) + groups_)) + 1
    slices: dict[int, list[ChannelSlice]] = defaultdict(list)
    runs = zip(np.r_[0, cuts], np.r_[cuts, sites_.size], strict=True) if sites_.size else ()  # no weights: none
    for a, b in runs:
        i, g = int(sites_[a]), int(groups_[a])
        site, index = sites[i], positions[a:b]
        inner = index.size // members[g].size
        slices[g].append(ChannelSlice(site.tensor, site.axis, site.role, tuple(index.tolist()), inner, site.kind, i))
    frozen: dict[int, str] = {}
    blocks: dict[int, tuple] = {}
    constraints = [(f"grouped {s.tensor}", s.roots.reshape(s.conv_groups, -1)) for s in sites if s.conv_groups > 1]
    constraints += [(what, to_roots(np.asarray(a))) for what, a in block_constraints]
    for what, per_block in constraints:
        _block_constraint(what, per_block, group_of_root, rank_of_root, blocks, frozen)

    frozen_root = {int(root_of[a]): reason for a, reason in atoms.frozen.items()}
    inexact_root = {int(root_of[a]): reason for a, reason in atoms.inexact.items()}
    nodes = _nodes_per_group(labels, root_of, group_of_root)

    groups = []
    for g, roots in enumerate(members):
        sl = slices[g]
        reason = frozen.get(g) or next((frozen_root[r] for r in roots.tolist() if r in frozen_root), "")
        inexact = next((inexact_root[r] for r in roots.tolist() if r in inexact_root), "")
        macs = sum(sites[s.site].macs / sites[s.site].length * s.inner for s in sl)
        params = sum(sites[s.site].numel / sites[s.site].length * s.inner for s in sl)
        producers = tuple(s for s in sl if s.role == PRODUCER)
        label = (producers or sl)[0].tensor.rsplit(".", 1)[0]
        groups.append(
            ChannelGroup(
                id=g,
                name=label,
                size=int(roots.size),
                roots=tuple(roots.tolist()),
                producers=producers,
                consumers=tuple(s for s in sl if s.role == CONSUMER),
                params=tuple(s for s in sl if s.role == PARAM),
                nodes=tuple(nodes.get(g, ())),
                prunable=not reason,
                reason=reason,
                exact=not inexact,
                inexact_reason=inexact,
                blocks=blocks.get(g),
                macs_per_channel=macs,
                params_per_channel=params,
            )
        )
    total_macs = sum({s.tensor: s.macs for s in sites}.values())
    rewrites = {k: v.with_roots(to_roots) for k, v in rewrites.items()}
    return ChannelGraph(groups, sites, name, input_shape, gm, rewrites, total_macs=total_macs)


def _block_constraint(what, per_block, group_of_root, rank_of_root, blocks, frozen) -> None:
    """Keep the same number of channels in each block (conv group, norm group, attention head)."""
    gids = np.unique(group_of_root[per_block[per_block >= 0]])
    if (per_block < 0).any() or gids.size != 1:
        for g in gids.tolist():
            frozen.setdefault(g, f"{what} spans several channel groups or fixed channels")
        return
    g = int(gids[0])
    found = tuple(tuple(np.unique(rank_of_root[b]).tolist()) for b in per_block)
    flat = [k for b in found for k in b]
    if len(flat) != len(set(flat)):
        frozen.setdefault(g, f"{what}: a channel spans several blocks")
    elif blocks.get(g, found) != found:
        frozen.setdefault(g, f"{what}: conflicting block partitions")
    else:
        blocks[g] = found


def _nodes_per_group(labels, root_of: np.ndarray, group_of_root: np.ndarray) -> dict[int, list[str]]:
    """The graph nodes whose output carries each group, in graph order (one vectorised pass)."""
    named = [(n, lab[lab >= 0]) for n, lab in labels.items() if isinstance(lab, np.ndarray) and lab.size]
    named = [(n, a) for n, a in named if a.size]
    if not named:
        return {}
    node_idx = np.repeat(np.arange(len(named)), [a.size for _, a in named])
    groups = group_of_root[root_of[np.concatenate([a for _, a in named])]]
    ok = groups >= 0
    keys = np.unique(groups[ok] * len(named) + node_idx[ok])
    nodes: dict[int, list[str]] = defaultdict(list)
    for g, i in zip((keys // len(named)).tolist(), (keys % len(named)).tolist(), strict=True):
        nodes[g].append(named[i][0])
    return nodes
