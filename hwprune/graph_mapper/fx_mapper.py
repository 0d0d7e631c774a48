"""torch.fx front-end: trace a model, propagate channel labels, assemble the ChannelGraph."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
from torch import fx, nn

from hwprune.errors import HwpruneError
from hwprune.graph_mapper.atoms import AtomTable, Frozen, channel_vector, fixed_label, right_align
from hwprune.graph_mapper.ops import OPS, op_key, op_name
from hwprune.graph_mapper.types import (
    CONSUMER,
    PARAM,
    PRODUCER,
    ChannelGraph,
    ChannelGroup,
    ChannelSlice,
    Site,
)


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


class MapContext:
    """What handlers see: labels and shapes of nodes, the atom table, and the site recorder."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.tensors = dict(gm.named_parameters()) | dict(gm.named_buffers())
        self.atoms = AtomTable()
        self.labels: dict[str, object] = {}
        self.sites: list[RawSite] = []
        self.rewrites: dict[str, tuple] = {}
        self._site_atoms: dict[tuple[str, int], np.ndarray] = {}

    # -- lookups
    def module(self, node: fx.Node) -> nn.Module:
        return self.modules[node.target]

    def module_or_none(self, node: fx.Node) -> nn.Module | None:
        return self.modules.get(node.target) if node.op == "call_module" else None

    def label(self, arg):
        if isinstance(arg, fx.Node):
            return self.labels.get(arg.name)
        if isinstance(arg, (list, tuple)):
            return tuple(self.label(a) for a in arg)
        return None

    def shapes(self, node: fx.Node):
        """Output shape (a tuple), a list of shapes for multi-output nodes, or None for non-tensors."""
        return node.meta.get("hw_shape")

    def shape(self, arg) -> tuple[int, ...] | None:
        if not isinstance(arg, fx.Node):
            return None
        shape = self.shapes(arg)
        return shape if isinstance(shape, tuple) else None

    # -- recording
    def site(self, tensor, axis, atoms, role, node, kind="plain", conv_groups=1, macs=0) -> None:
        """Record that ``tensor``'s ``axis`` carries ``atoms``; a tensor used twice ties both uses."""
        atoms = np.asarray(atoms, dtype=np.int64)
        seen = self._site_atoms.get((tensor, axis))
        if seen is not None:  # shared weights: one tensor, one set of channels
            if seen.shape != atoms.shape or ((seen < 0) != (atoms < 0)).any():
                self.atoms.freeze(np.concatenate([seen, atoms]), f"{tensor} is used with different channels")
            self.atoms.union(seen, atoms)
            return
        self._site_atoms[(tensor, axis)] = atoms
        self.sites.append(RawSite(tensor, axis, atoms, role, node.name, kind, conv_groups, macs))

    def channel_labels(self, node, arg, dim: int, size: int, what: str) -> np.ndarray | None:
        """The atom of each channel along ``dim`` of ``arg``; None (and freeze) if it has none."""
        label = self.label(arg)
        if isinstance(label, Frozen) or label is None:
            return None
        label = right_align(label, len(self.shape(arg)))
        vec = channel_vector(label, dim)
        if vec is None:
            self.atoms.freeze(label, f"{what} at {node.name}: channels vary along other axes")
            return None
        return np.broadcast_to(vec, (size,)).copy()

    def new_frozen(self, n: int, reason: str) -> np.ndarray:
        atoms = self.atoms.new(n)
        self.atoms.freeze(atoms, reason)
        return atoms

    def freeze_inputs(self, node: fx.Node, reason: str) -> None:
        for arg in node.all_input_nodes:
            for label in _flat(self.labels.get(arg.name)):
                if isinstance(label, np.ndarray):
                    self.atoms.freeze(label, reason)

    def unknown(self, node: fx.Node, reason: str | None = None):
        """Fail closed: freeze every channel reaching the node; its output carries nothing prunable."""
        reason = reason or f"no handler for op {op_name(node, self.module_or_none(node))} (node {node.name})"
        self.freeze_inputs(node, reason)
        shapes = self.shapes(node)
        if shapes is None:
            return None
        if isinstance(shapes, tuple):
            return Frozen(reason)
        return tuple(None if s is None else Frozen(reason) for s in shapes)

    def record_shape_rewrite(self, node: fx.Node, out_label: np.ndarray) -> None:
        self.rewrites[node.name] = ("shape", out_label)

    def record_split_rewrite(self, node: fx.Node, vec: np.ndarray, dim: int, sizes: list[int]) -> None:
        self.rewrites[node.name] = ("split", vec, dim, sizes)

    def record_slice_rewrite(self, node: fx.Node, slices: list) -> None:
        self.rewrites[node.name] = ("slice", slices)


def _flat(label):
    if isinstance(label, (tuple, list)):
        for x in label:
            yield from _flat(x)
    elif label is not None:
        yield label


def trace(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many types for untraceable code
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HwpruneError(f"torch.fx cannot trace {type(model).__name__}: {first}") from exc


def build_channel_graph(model: nn.Module, example_input: torch.Tensor, name: str | None = None) -> ChannelGraph:
    """Map ``model`` (traced with ``example_input``) to its channel groups."""
    start = time.perf_counter()
    modes = {m: m.training for m in model.modules()}  # restored per module: a user's eval-mode BN stays so
    model.eval()
    try:
        gm = trace(model)
        _propagate_shapes(gm, example_input, name or type(model).__name__)
        ctx = MapContext(gm)
        for node in gm.graph.nodes:
            ctx.labels[node.name] = _visit(ctx, node)
        graph = _assemble(ctx, name or type(model).__name__, tuple(example_input.shape))
    finally:
        for m, mode in modes.items():
            m.training = mode
    graph.build_s = time.perf_counter() - start
    return graph


class _ShapeRecorder(fx.Interpreter):
    """Runs the graph once and keeps only each node's output shape(s) in ``node.meta["hw_shape"]``.

    Cheaper than ShapeProp (which also extracts strides, contiguity and quantisation metadata).
    """

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if isinstance(out, torch.Tensor):
            n.meta["hw_shape"] = tuple(out.shape)
        elif isinstance(out, (list, tuple)) and any(isinstance(o, torch.Tensor) for o in out):
            n.meta["hw_shape"] = [tuple(o.shape) if isinstance(o, torch.Tensor) else None for o in out]
        else:
            n.meta.pop("hw_shape", None)
        return out


def _propagate_shapes(gm: fx.GraphModule, example_input: torch.Tensor, name: str) -> None:
    try:
        with torch.no_grad():
            _ShapeRecorder(gm).run(example_input)
    except Exception as exc:  # the model's own error, for this input shape
        cause = exc.__cause__ or exc
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise HwpruneError(
            f"{name} does not run on an input of shape {tuple(example_input.shape)} ({first}): "
            "check --input-size and --in-channels"
        ) from exc


def _visit(ctx: MapContext, node: fx.Node):
    if node.op == "placeholder":
        shape = ctx.shape(node)
        return fixed_label(len(shape)) if shape is not None else None
    if node.op == "get_attr":
        return _param_label(ctx, node)
    if node.op == "output":
        for label in _flat(ctx.label(node.args[0])):
            if isinstance(label, np.ndarray):
                ctx.atoms.freeze(label, "reaches the model output")
        return None
    module = ctx.module_or_none(node)
    handler = OPS.lookup(op_key(node, module))
    if handler is None:
        if not any(
            isinstance(x, np.ndarray) or isinstance(x, Frozen)
            for a in node.all_input_nodes
            for x in _flat(ctx.labels.get(a.name))
        ):
            shapes = ctx.shapes(node)
            return fixed_label(len(shapes)) if isinstance(shapes, tuple) else None
        return ctx.unknown(node)
    try:
        return handler(ctx, node)
    except HwpruneError:
        raise
    except Exception as exc:  # a handler that cannot cope with an unusual call fails closed
        return ctx.unknown(node, f"{op_name(node, module)} {node.name}: handler failed ({exc})")


def _param_label(ctx: MapContext, node: fx.Node):
    """A parameter used directly: channels along its last non-trivial axis, tied where it meets others."""
    tensor = ctx.tensors.get(node.target)
    if tensor is None or not isinstance(tensor, torch.Tensor):
        return None
    shape = tuple(tensor.shape)
    axes = [d for d, s in enumerate(shape) if s > 1]
    if not axes or not tensor.is_floating_point():
        return fixed_label(len(shape))
    axis = axes[-1]
    atoms = ctx.atoms.new(shape[axis])
    ctx.site(node.target, axis, atoms, PARAM, node)  # a second get_attr of it is tied to the first
    return atoms.reshape(tuple(-1 if d == axis else 1 for d in range(len(shape))))


# ----------------------------------------------------------------------------- assembly


def _assemble(ctx: MapContext, name: str, input_shape: tuple[int, ...]) -> ChannelGraph:
    root_of = ctx.atoms.roots()

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
            int(ctx.tensors[s.tensor].numel()),
        )
        for s in ctx.sites
    ]
    # every labelled position of every site, flattened: its root, site and position on the axis
    flat = np.concatenate([site.roots for site in sites]) if sites else np.zeros(0, dtype=np.int64)
    site_of = np.repeat(np.arange(len(sites)), [site.length for site in sites])
    pos_in_site = np.concatenate([np.arange(site.length) for site in sites]) if sites else flat
    n_atoms = len(ctx.atoms)
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
    for a, b in zip(np.r_[0, cuts], np.r_[cuts, sites_.size], strict=True):
        i, g = int(sites_[a]), int(groups_[a])
        site, index = sites[i], positions[a:b]
        inner = index.size // members[g].size
        slices[g].append(ChannelSlice(site.tensor, site.axis, site.role, tuple(index.tolist()), inner, site.kind, i))
    frozen: dict[int, str] = {}
    blocks: dict[int, tuple] = {}
    for site in sites:
        if site.conv_groups > 1:
            _grouped_constraint(site, group_of_root, rank_of_root, blocks, frozen)

    frozen_root = {int(root_of[a]): reason for a, reason in ctx.atoms.frozen.items()}
    inexact_root = {int(root_of[a]): reason for a, reason in ctx.atoms.inexact.items()}
    nodes = _nodes_per_group(ctx, root_of, group_of_root)

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
    rewrites = {k: _rewrite_to_roots(v, to_roots) for k, v in ctx.rewrites.items()}
    return ChannelGraph(groups, sites, name, input_shape, ctx.gm, rewrites, total_macs=total_macs)


def _grouped_constraint(site, group_of_root, rank_of_root, blocks, frozen) -> None:
    """A grouped conv keeps the same number of channels in each of its conv groups."""
    gids = np.unique(group_of_root[site.roots[site.roots >= 0]])
    if (site.roots < 0).any() or gids.size != 1:
        for g in gids.tolist():
            frozen.setdefault(g, f"grouped conv {site.tensor} spans several channel groups or fixed channels")
        return
    g = int(gids[0])
    per_block = site.roots.reshape(site.conv_groups, -1)
    found = tuple(tuple(np.unique(rank_of_root[b]).tolist()) for b in per_block)
    flat = [k for b in found for k in b]
    if len(flat) != len(set(flat)):
        frozen.setdefault(g, f"grouped conv {site.tensor}: a channel spans several conv groups")
    elif blocks.get(g, found) != found:
        frozen.setdefault(g, f"grouped conv {site.tensor}: conflicting conv-group partitions")
    else:
        blocks[g] = found


def _nodes_per_group(ctx: MapContext, root_of: np.ndarray, group_of_root: np.ndarray) -> dict[int, list[str]]:
    """The fx nodes whose output carries each group, in graph order (one vectorised pass)."""
    named = [(n, lab[lab >= 0]) for n, lab in ctx.labels.items() if isinstance(lab, np.ndarray) and lab.size]
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


def _rewrite_to_roots(record: tuple, to_roots) -> tuple:
    kind = record[0]
    if kind == "shape":
        return ("shape", to_roots(record[1]))
    if kind == "split":
        return ("split", to_roots(record[1]), record[2], record[3])
    return ("slice", [(pos, to_roots(np.asarray(vec))) for pos, vec in record[1]])
