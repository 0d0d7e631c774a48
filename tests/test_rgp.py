"""RGP masks: regular graphs, block structure, exact density, dense layers with reasons, metrics."""

import networkx as nx
import numpy as np
import pytest
from torch import nn

from hwprune.errors import HwpruneError
from hwprune.prune.rgp import adjacency, block_mask, graph_metrics, group_sizes, regular_graph, rgp_mask


@pytest.mark.parametrize("nodes,degree", [(8, 3), (16, 4), (10, 9)])
def test_random_graph_is_connected_and_regular(nodes, degree):
    g = regular_graph(nodes, degree, seed=5)
    assert nx.is_connected(g) and {d for _, d in g.degree} == {degree} and g.number_of_nodes() == nodes
    a = adjacency(g)
    assert a.shape == (nodes, nodes) and not a.diagonal().any() and (a == a.T).all()
    assert (a.sum(1) == degree).all()
    assert nx.utils.graphs_equal(g, regular_graph(nodes, degree, seed=5))


def test_ring_lattice_and_its_known_metrics():
    g = regular_graph(8, 4, kind="ring")
    assert {d for _, d in g.degree} == {4}
    m = graph_metrics(g)
    # from node 0: four neighbours at distance 1, the other three at distance 2 -> 10 / 7
    assert m["aspl"] == pytest.approx(10 / 7)
    assert m["clustering"] == pytest.approx(0.5)  # 3(k-2) / (4(k-1)) for a ring lattice of even k
    assert m["transitivity"] == pytest.approx(0.5)


def test_graph_errors():
    with pytest.raises(HwpruneError, match="even"):
        regular_graph(7, 3)
    with pytest.raises(HwpruneError, match="1..nodes-1"):
        regular_graph(4, 4)
    with pytest.raises(HwpruneError, match="even degree"):
        regular_graph(8, 3, kind="ring")
    with pytest.raises(HwpruneError, match="kind"):
        regular_graph(8, 4, kind="star")


def test_group_sizes_near_equal_and_seeded():
    s = group_sizes(10, 4, seed=3)
    assert sorted(s.tolist()) == [2, 2, 3, 3] and s.sum() == 10
    assert (s == group_sizes(10, 4, seed=3)).all()


def test_block_mask_repeats_the_adjacency():
    adj = adjacency(regular_graph(4, 2, kind="ring"))
    m = block_mask(adj, 10, 6, seed=2)
    out_group = np.repeat(np.arange(4), group_sizes(10, 4, 2))
    in_group = np.repeat(np.arange(4), group_sizes(6, 4, 2))
    np.testing.assert_array_equal(m, adj[out_group][:, in_group])


def conv_net():
    return nn.Sequential(
        nn.Conv2d(8, 8, 3),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3),
        nn.ReLU(),
        nn.Conv2d(16, 8, 1),
        nn.Flatten(),
        nn.Linear(8, 8),
    )


@pytest.mark.parametrize("nodes,degree", [(4, 2), (8, 3), (8, 6)])
def test_density_is_degree_over_nodes_when_channels_divide(nodes, degree):
    mask = rgp_mask(conv_net(), nodes, degree, first_layer_dense=False, last_layer_dense=False, seed=1)
    for name, keep in mask.keep.items():
        assert keep.mean() == degree / nodes, name
        assert mask.meta["layers"][name]["density"] == degree / nodes
    assert mask.density() == degree / nodes
    conv = mask.keep["0.weight"]  # broadcast over k x k: every spatial tap has the same pattern
    assert (conv == conv[:, :, :1, :1]).all()
    assert set(mask.meta["metrics"]) == {"aspl", "clustering", "transitivity"}


def test_dense_layers_with_reasons():
    net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.Conv2d(16, 2, 1), nn.Conv2d(2, 16, 1), nn.Conv2d(16, 16, 1))
    mask = rgp_mask(net, 4, 2, kind="ring")
    layers = mask.meta["layers"]
    assert "first layer" in layers["0.weight"]["dense"] and mask.keep["0.weight"].all()
    assert "nodes <= min" in layers["1.weight"]["dense"] and mask.keep["1.weight"].all()
    assert "nodes <= min" in layers["2.weight"]["dense"]
    assert "last layer" in layers["3.weight"]["dense"]
    open_net = nn.Sequential(nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1), nn.Flatten(), nn.Linear(8, 8), nn.Linear(8, 8))
    mask = rgp_mask(open_net, 4, 2, include_linear=False, first_layer_dense=False)
    assert mask.keep["0.weight"].mean() == 0.5 and mask.keep["1.weight"].mean() == 0.5
    assert "Linear" in mask.meta["layers"]["3.weight"]["dense"]
    assert "last layer" in mask.meta["layers"]["4.weight"]["dense"]
    mask = rgp_mask(open_net, 4, 2, first_layer_dense=False, last_layer_dense=False)
    assert mask.density() == 0.5


def test_non_divisible_channels_stay_near_degree_over_nodes():
    net = nn.Sequential(nn.Conv2d(10, 13, 3), nn.Conv2d(13, 11, 3))
    mask = rgp_mask(net, 4, 2, first_layer_dense=False, last_layer_dense=False)
    for keep in mask.keep.values():
        assert abs(keep.mean() - 0.5) < 0.1


def test_given_adjacency_is_used_and_checked():
    adj = adjacency(regular_graph(4, 2, kind="ring"))
    mask = rgp_mask(conv_net(), 4, 2, adj=adj, first_layer_dense=False)
    assert mask.meta["graph"] == "given" and mask.meta["adjacency"] == adj.astype(int).tolist()
    with pytest.raises(HwpruneError, match="expected 8"):
        rgp_mask(conv_net(), 8, 2, adj=adj)
