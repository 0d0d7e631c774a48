"""Apply a ChannelMask: the masked model (the oracle) and the compacted model (fewer channels).

Both work from the graph's sites, so every axis that carries a removed channel is treated alike.
The masked model keeps all shapes and zeroes the removed channels' weights (producer rows,
per-channel parameters and consumer columns); the compacted model removes them physically, as a
copy of the traced GraphModule whose size-literal arguments (view/reshape sizes, split sizes,
slice bounds) are rewritten to the new channel counts.
"""

from __future__ import annotations

import copy
from collections import defaultdict

import numpy as np
import torch
from torch import fx, nn

from hwprune.export.attention import pruned_shifted_window_attention
from hwprune.graph_mapper.ops import module_resizer
from hwprune.graph_mapper.rewrites import (
    AttentionRewrite,
    KwargsRewrite,
    LayerNormRewrite,
    ShapeRewrite,
    SplitRewrite,
)
from hwprune.graph_mapper.types import GROUPED_IN, ChannelGraph, Site
from hwprune.layers import zero_padded_layer_norm
from hwprune.prune.masks import ChannelMask


def keep_table(graph: ChannelGraph, mask: ChannelMask) -> np.ndarray:
    """Keep flag per component root (indexable by any root id stored in the graph)."""
    n = 1 + max((int(s.roots.max(initial=-1)) for s in graph.sites), default=-1)
    for record in graph.rewrites.values():
        arrays = record.root_arrays()
        n = max([n] + [1 + int(np.max(a, initial=-1)) for a in arrays])
    keep = np.ones(n, dtype=bool)
    for gid, k in mask.keep.items():
        roots = np.asarray(graph.groups[gid].roots)
        keep[roots[~k]] = False
    return keep


def kept(roots: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Keep flag per position of a root array (fixed positions, -1, are always kept)."""
    return np.where(roots >= 0, keep[np.maximum(roots, 0)], True)


def changed_sites(graph: ChannelGraph, keep: np.ndarray) -> list[tuple[Site, np.ndarray]]:
    """The sites that lose positions, each with its keep flag per position."""
    out = []
    for site in graph.sites:
        k = kept(site.roots, keep)
        if not k.all():
            out.append((site, k))
    return out


def zero_removed(w, site: Site, k: np.ndarray) -> None:
    """Zero, in place, the positions of ``site`` whose channel is removed (a tensor or an array)."""
    drop = np.flatnonzero(~k).tolist()
    if site.kind == GROUPED_IN:  # position i: column i % cin_g of the rows of conv group i // cin_g
        cin_g, cout_g = w.shape[1], w.shape[0] // site.conv_groups
        for i in drop:
            w[(i // cin_g) * cout_g : (i // cin_g + 1) * cout_g, i % cin_g] = 0
    else:
        index = [slice(None)] * w.ndim
        index[site.axis] = drop
        w[tuple(index)] = 0


def kept_sizes(k: np.ndarray) -> dict[int, int]:
    """New size of every axis along which channels vary: the indices that hold a kept channel."""
    return {d: int(np.moveaxis(k, d, 0).reshape(k.shape[d], -1).any(1).sum()) for d in range(k.ndim) if k.shape[d] > 1}


def kept_split_sizes(k: np.ndarray, sizes) -> list[int]:
    """Piece sizes of a split whose pieces had ``sizes``, after removing the channels ``k`` drops."""
    bounds = np.cumsum([0] + list(sizes))
    return [int(k[a:b].sum()) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def masked_model(model: nn.Module, graph: ChannelGraph, mask: ChannelMask) -> nn.Module:
    """A copy of ``model`` with the removed channels' weights zeroed; shapes unchanged."""
    mask.validate(graph)
    masked = copy.deepcopy(model)
    params = dict(masked.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for site, k in changed_sites(graph, keep_table(graph, mask)):
            w = params.get(site.tensor)
            if w is None:  # buffers (running statistics) are left alone
                continue
            zero_removed(w, site, k)
    return masked


def shrink_like_parameters(graph: ChannelGraph, mask: ChannelMask, tensors: dict[str, torch.Tensor]) -> dict:
    """Slice tensors shaped like named parameters (e.g. optimizer momentum) exactly as compaction slices them.

    ``tensors`` maps parameter names to tensors of the parameter's shape; those the mask does not shrink are
    returned unchanged.
    """
    by_tensor = _sites_by_tensor(graph, keep_table(graph, mask))
    with torch.no_grad():
        return {name: shrink(t.detach(), by_tensor[name]) if name in by_tensor else t for name, t in tensors.items()}


def _sites_by_tensor(graph: ChannelGraph, keep) -> dict[str, list[tuple[Site, np.ndarray]]]:
    """The sites compaction shrinks, with their kept positions, by tensor name."""
    by_tensor: dict[str, list[tuple[Site, np.ndarray]]] = defaultdict(list)
    for site, k in changed_sites(graph, keep):
        by_tensor[site.tensor].append((site, k))
    return by_tensor


def compact_model(graph: ChannelGraph, mask: ChannelMask) -> nn.Module:
    """A new, smaller module computing what the masked model computes on exact groups.

    A GraphModule (fx front-end) gets its size literals rewritten; the user's own module (export
    front-end) only its tensors sliced and its layers resized, since its code computes sizes itself.
    """
    mask.validate(graph)
    keep = keep_table(graph, mask)
    by_tensor = _sites_by_tensor(graph, keep)
    originals = named_tensors(graph.gm)
    aliases = tied_names(originals)
    # tensors about to be replaced are not copied: the copy gets an empty placeholder for each
    memo = {id(originals[name]): torch.empty(0) for name in by_tensor}
    gm = copy.deepcopy(graph.gm, memo)
    with torch.no_grad():
        for name, entries in by_tensor.items():
            old = originals[name]
            replace_tensor(gm, aliases[id(old)], old, shrink(old.detach(), entries))
    resize_modules(gm, by_tensor)
    if isinstance(gm, fx.GraphModule):
        _rewrite_nodes(gm, graph, keep)
        gm.recompile()
    return gm


def named_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer under every name it has (a tied tensor appears once per name)."""
    return dict(module.named_parameters(remove_duplicate=False)) | dict(module.named_buffers(remove_duplicate=False))


def tied_names(tensors: dict[str, torch.Tensor]) -> dict[int, list[str]]:
    """Tensor identity -> all its names: tied weights (an embedding and its output head) are one tensor."""
    names: dict[int, list[str]] = {}
    for name, tensor in tensors.items():
        names.setdefault(id(tensor), []).append(name)
    return names


def replace_tensor(root: nn.Module, names: list[str], old: torch.Tensor, new: torch.Tensor) -> None:
    """Put ``new`` (a parameter if ``old`` was one) under every name of ``old``: a tied tensor stays one tensor."""
    new = new.contiguous()
    if isinstance(old, nn.Parameter):
        new = nn.Parameter(new, requires_grad=old.requires_grad)
    for name in names:
        owner_name, _, attr = name.rpartition(".")
        owner = root.get_submodule(owner_name)
        kept, stale = (
            (owner._parameters, owner._buffers)
            if isinstance(old, nn.Parameter)
            else (owner._buffers, owner._parameters)
        )
        stale.pop(attr, None)  # a GraphModule copy registers a tensor placeholder of a parameter as a buffer
        kept[attr] = new


def shrink(t: torch.Tensor, entries: list[tuple[Site, np.ndarray]]) -> torch.Tensor:
    plain = [(s, k) for s, k in entries if s.kind != GROUPED_IN]
    grouped = [(s, k) for s, k in entries if s.kind == GROUPED_IN]
    n_rows_old = t.shape[0]
    rows = torch.arange(n_rows_old)  # original row of each current row
    for site, k in plain:
        idx = torch.as_tensor(np.flatnonzero(k))
        t = t.index_select(site.axis, idx)
        if site.axis == 0:
            rows = rows[idx]
    for site, k in grouped:
        # grouped conv: each conv group keeps its own input columns (same count in every group)
        cin_g = t.shape[1]
        cout_g_old = n_rows_old // site.conv_groups
        per_block = k.reshape(site.conv_groups, cin_g)
        cols = torch.as_tensor(np.stack([np.flatnonzero(b) for b in per_block]))
        block_of_row = rows // cout_g_old
        t = torch.gather(
            t,
            1,
            cols[block_of_row].reshape(t.shape[0], -1, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:]),
        )
    return t


def resize_modules(gm: nn.Module, by_tensor: dict[str, list[tuple[Site, np.ndarray]]]) -> None:
    """Give each module holding changed tensors its handler's compaction step (``resized_by``).

    Children go before their parents, so a parent that is replaced sees its children resized.
    """
    for name, module in reversed(list(gm.named_modules())):
        resize = module_resizer(module)
        if not name or resize is None:
            continue
        prefix = f"{name}."
        shrunk = {t[len(prefix) :]: entries for t, entries in by_tensor.items() if t.startswith(prefix)}
        if not shrunk:
            continue
        new = resize(module, shrunk)
        if new is not None:
            owner_name, _, attr = name.rpartition(".")
            setattr(gm.get_submodule(owner_name), attr, new)


def _rewrite_nodes(gm: fx.GraphModule, graph: ChannelGraph, keep: np.ndarray) -> None:
    nodes = {n.name: n for n in gm.graph.nodes}
    for name, record in graph.rewrites.items():
        node = nodes[name]
        if isinstance(record, ShapeRewrite):
            _rewrite_sizes(node, kept(record.labels, keep))
        elif isinstance(record, SplitRewrite):
            new_sizes = kept_split_sizes(kept(record.labels, keep), record.sizes)
            node.op, node.target = "call_function", torch.split
            node.args, node.kwargs = (node.args[0], new_sizes), {"dim": record.dim}
        elif isinstance(record, LayerNormRewrite):
            _zero_padded_layer_norm(node, int(kept(record.labels, keep).sum()), record.labels.size)
        elif isinstance(record, KwargsRewrite):  # values fixed at mapping time (e.g. an attention scale)
            node.kwargs = {**node.kwargs, **record.kwargs}
        elif isinstance(record, AttentionRewrite):  # window attention: explicit head widths, original scale
            node.target = pruned_shifted_window_attention
            qk, v = int(kept(record.qk, keep).sum()), int(kept(record.v, keep).sum())
            node.kwargs = {
                **node.kwargs,
                "qk_dim": qk // record.heads,
                "v_dim": v // record.heads,
                "scale": record.scale,
            }
        else:  # SliceRewrite
            idx = list(node.args[1]) if isinstance(node.args[1], tuple) else [node.args[1]]
            for pos, roots in record.slices:
                k = kept(roots, keep)
                s = idx[pos]
                start, stop, _ = s.indices(k.size)
                idx[pos] = slice(int(k[:start].sum()), int(k[:stop].sum()), s.step)
            node.args = (node.args[0], tuple(idx) if isinstance(node.args[1], tuple) else idx[0])


def _zero_padded_layer_norm(node: fx.Node, size: int, width: int) -> None:
    """``F.layer_norm`` over ``size`` kept of ``width`` channels: the zero-padded norm, exact (hwprune.layers)."""
    args = list(node.args)
    if len(args) > 1:
        args[1] = (size,)
    else:
        node.kwargs = {**node.kwargs, "normalized_shape": (size,)}
    node.target, node.args = zero_padded_layer_norm, tuple(args)
    node.kwargs = {"width": width, **node.kwargs}  # a norm compacted before keeps its original width


def _rewrite_sizes(node: fx.Node, k: np.ndarray) -> None:
    """Write the new size along every axis where channels vary (indices holding a kept channel).

    Computed sizes (``c // g``) are replaced too: they derive from channel counts that compaction
    changed, and a channel axis has a fixed size in the compacted model.
    """
    new = kept_sizes(k)
    if not new:
        return
    packed = len(node.args) == 2 and isinstance(node.args[1], (tuple, list))
    sizes = list(node.args[1] if packed else node.args[1:])
    offset = len(sizes) - k.ndim
    for d, size in new.items():
        i = d + offset
        if 0 <= i < len(sizes) and sizes[i] != -1:
            sizes[i] = size
    node.args = (node.args[0], tuple(sizes)) if packed else (node.args[0], *sizes)
