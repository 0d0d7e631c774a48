"""RGP: masks whose channel-to-channel connectivity is a regular graph (formulas: ``docs/methods.md``).

A graph of ``nodes`` vertices, each of degree ``degree``, gives a nodes×nodes adjacency (zero
diagonal). In every layer the out and in channels are split into ``nodes`` near-equal groups (sizes
⌊C/n⌋ or ⌊C/n⌋+1 in a seeded random order), and weight (o, i, ...) is kept when the groups of o and i are
adjacent. Density is degree/nodes exactly when both channel counts are multiples of ``nodes``.
"""

from __future__ import annotations

import logging

import networkx as nx
import numpy as np
from torch import nn

from hwprune.errors import HwpruneError
from hwprune.prune.masks import WeightMask

log = logging.getLogger(__name__)

GRAPH_KINDS = ("random", "ring")


def regular_graph(nodes: int, degree: int, *, kind: str = "random", seed: int = 0, max_tries: int = 200) -> nx.Graph:
    """A connected ``degree``-regular graph on ``nodes`` vertices.

    Args:
        nodes: Number of vertices.
        degree: Degree of every vertex.
        kind: ``random`` (networkx random degree-sequence graph, re-drawn with seeds ``seed``,
            ``seed+1``, ... until connected) or ``ring`` (ring lattice, ``watts_strogatz_graph(n, degree, 0)``;
            needs an even degree).
        seed: Seed of the first draw.
        max_tries: Draws before giving up.

    Returns:
        The graph.
    """
    if not 0 < degree < nodes:
        raise HwpruneError(f"RGP degree must be within 1..nodes-1, got degree {degree} with {nodes} nodes")
    if (nodes * degree) % 2:
        raise HwpruneError(f"no {degree}-regular graph on {nodes} nodes exists: nodes × degree must be even")
    if kind == "ring":
        if degree % 2:
            raise HwpruneError(f"a ring lattice has even degree: use an even degree, not {degree}")
        return nx.watts_strogatz_graph(nodes, degree, 0)
    if kind != "random":
        raise HwpruneError(f"unknown RGP graph kind {kind!r}: use one of {', '.join(GRAPH_KINDS)}")
    for attempt in range(max_tries):
        try:
            g = nx.random_degree_sequence_graph([degree] * nodes, seed=seed + attempt, tries=10)
        except (nx.NetworkXUnfeasible, nx.NetworkXError):
            continue
        if nx.is_connected(g):
            return g
    raise HwpruneError(f"no connected {degree}-regular graph on {nodes} nodes after {max_tries} draws")


def adjacency(graph: nx.Graph) -> np.ndarray:
    """Boolean nodes×nodes adjacency, vertices in sorted order, zero diagonal."""
    a = nx.to_numpy_array(graph, nodelist=sorted(graph.nodes), dtype=float) != 0
    np.fill_diagonal(a, False)
    return a


def graph_metrics(graph: nx.Graph) -> dict[str, float]:
    """Average shortest path length, average clustering and transitivity."""
    return {
        "aspl": float(nx.average_shortest_path_length(graph)) if nx.is_connected(graph) else float("inf"),
        "clustering": float(nx.average_clustering(graph)),
        "transitivity": float(nx.transitivity(graph)),
    }


def group_sizes(channels: int, nodes: int, seed: int = 1) -> np.ndarray:
    """Split ``channels`` into ``nodes`` groups of ⌊C/n⌋ or ⌊C/n⌋+1, the larger ones placed by a seeded shuffle."""
    sizes = np.full(nodes, channels // nodes, dtype=np.int64)
    sizes[: channels % nodes] += 1
    return np.random.default_rng(seed).permutation(sizes)


def block_mask(adj: np.ndarray, out_channels: int, in_channels: int, seed: int = 1) -> np.ndarray:
    """Repeat ``adj`` into an out×in boolean block mask (group sizes from :func:`group_sizes`)."""
    n = adj.shape[0]
    rows = np.repeat(adj, group_sizes(out_channels, n, seed), axis=0)
    return np.repeat(rows, group_sizes(in_channels, n, seed), axis=1)


def rgp_mask(
    model: nn.Module,
    nodes: int,
    degree: int,
    *,
    kind: str = "random",
    seed: int = 0,
    adj: np.ndarray | None = None,
    first_layer_dense: bool = True,
    last_layer_dense: bool = True,
    include_linear: bool = True,
    model_name: str = "",
) -> WeightMask:
    """RGP weight mask over the Conv (and Linear) weights of ``model``.

    Args:
        model: The model.
        nodes: Graph vertices (channel groups per layer).
        degree: Graph degree; density ≈ degree / nodes.
        kind: ``random`` or ``ring`` (see :func:`regular_graph`).
        seed: Seed of the graph draw and of the group order.
        adj: A given nodes×nodes adjacency to use instead of drawing a graph (e.g. the published ones).
        first_layer_dense: Leave the first Conv/Linear layer dense (as the published runs do).
        last_layer_dense: Leave the last Conv/Linear layer (the classifier) dense.
        include_linear: Mask Linear layers as [out, in] weights too; otherwise they stay dense.
        model_name: Recorded in the mask.

    Returns:
        A mask covering every Conv/Linear weight (dense layers all True). ``meta`` holds the graph
        metrics, the adjacency and, per layer, its density or the reason it stayed dense.
    """
    given = adj is not None
    if adj is None:
        graph = regular_graph(nodes, degree, kind=kind, seed=seed)
        adj = adjacency(graph)
    else:
        adj = np.asarray(adj) != 0
        if adj.shape != (nodes, nodes):
            raise HwpruneError(f"the adjacency is {adj.shape[0]}×{adj.shape[1]}, expected {nodes}×{nodes}")
        np.fill_diagonal(adj, False)
        graph = nx.from_numpy_array(adj.astype(int))
    metrics = graph_metrics(graph)
    log.info(
        "RGP graph %d nodes, degree %d: aspl %.4f, clustering %.4f, transitivity %.4f",
        nodes,
        degree,
        metrics["aspl"],
        metrics["clustering"],
        metrics["transitivity"],
    )
    names = {id(p): n for n, p in model.named_parameters()}
    layers = [
        (names[id(m.weight)], m)
        for m in model.modules()
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and id(getattr(m, "weight", None)) in names
    ]
    if not layers:
        raise HwpruneError(f"{type(model).__name__} has no Conv or Linear layer for RGP to mask")
    keep: dict[str, np.ndarray] = {}
    report: dict[str, dict] = {}
    for idx, (name, m) in enumerate(layers):
        shape = tuple(m.weight.shape)
        c_out, c_in = shape[0], shape[1]
        reason = ""
        if idx == 0 and first_layer_dense:
            reason = "first layer kept dense (first_layer_dense)"
        elif idx == len(layers) - 1 and last_layer_dense:
            reason = "last layer kept dense (last_layer_dense)"
        elif isinstance(m, nn.Linear) and not include_linear:
            reason = "Linear layer kept dense (include_linear=False)"
        elif nodes > min(c_in, c_out):
            reason = f"needs nodes <= min(C_in, C_out) = {min(c_in, c_out)}, has {nodes} nodes"
        if reason:
            keep[name] = np.ones(shape, dtype=bool)
            report[name] = {"density": 1.0, "dense": reason}
            continue
        block = block_mask(adj, c_out, c_in, seed)
        keep[name] = np.broadcast_to(block.reshape(block.shape + (1,) * (len(shape) - 2)), shape).copy()
        report[name] = {"density": float(keep[name].mean())}
    mask = WeightMask(keep, model=model_name)
    mask.meta.update(
        {
            "method": "rgp",
            "nodes": nodes,
            "degree": degree,
            "graph": "given" if given else kind,
            "seed": seed,
            "metrics": metrics,
            "adjacency": adj.astype(int).tolist(),
            "layers": report,
        }
    )
    return mask
