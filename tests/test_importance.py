"""Channel importances: exact values on hand-built nets, gradient measures against autograd done by hand."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from hwprune.errors import HwpruneError
from hwprune.graph_mapper import build_channel_graph
from hwprune.prune.importance import CHANNEL_IMPORTANCES, channel_importance, gradient_stats

torch.set_num_threads(1)

DATA_FREE = ["random", "l1", "l2", "mag_based", "bn"]
NEEDS_DATA = [
    "loss_based", "biased_loss", "tfo", "fisher", "taylor", "nvidia", "grasp", "grad_preserve",
    "activation", "minitron",
]  # fmt: skip


class Chain(nn.Module):
    """conv(1->2) -> BN -> ReLU -> flatten (2x2 spatial) -> linear(8->3): one group, consumer inner 4."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)
        self.bn = nn.BatchNorm2d(2)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def chain():
    torch.manual_seed(0)
    m = Chain()
    with torch.no_grad():
        m.conv.weight.copy_(torch.tensor([1.0, -2.0]).reshape(2, 1, 1, 1))
        m.conv.bias.copy_(torch.tensor([0.3, -0.4]))
        m.bn.weight.copy_(torch.tensor([0.5, -3.0]))
        m.bn.bias.copy_(torch.tensor([0.1, 0.2]))
        m.bn.running_mean.copy_(torch.tensor([0.2, -0.1]))
        m.bn.running_var.copy_(torch.tensor([1.5, 0.7]))
    return m


def chain_group(graph):
    [g] = [g for g in graph.groups if any(s.tensor == "conv.weight" for s in g.producers)]
    return g


def chain_channel(params, k):
    """Every parameter element of channel ``k`` of the conv group, written out by hand."""
    return {
        "conv.weight": params["conv.weight"][k],
        "conv.bias": params["conv.bias"][k],
        "bn.weight": params["bn.weight"][k],
        "bn.bias": params["bn.bias"][k],
        "fc.weight": params["fc.weight"][:, 4 * k : 4 * k + 4],
    }


def batches(n_in=1, size=2, sizes=(3, 5), classes=3, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(b, n_in, size, size, generator=gen), torch.randint(0, classes, (b,), generator=gen)) for b in sizes
    ]


def hand_grads(model, data, T):
    """Batch-size-weighted mean of g and of g², by plain autograd in eval mode."""
    model.eval()
    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    g_sum = [torch.zeros_like(p) for p in params]
    g2_sum = [torch.zeros_like(p) for p in params]
    n = 0
    for x, y in data:
        model.zero_grad()
        F.cross_entropy(model(x) / T, y).backward()
        for i, p in enumerate(params):
            g_sum[i] += len(x) * p.grad
            g2_sum[i] += len(x) * p.grad**2
        n += len(x)
    model.zero_grad(set_to_none=True)
    return dict(zip(names, [g / n for g in g_sum], strict=True)), dict(zip(names, [g / n for g in g2_sum], strict=True))


def test_registry_names_and_aliases():
    assert set(DATA_FREE + NEEDS_DATA) <= set(CHANNEL_IMPORTANCES.names())
    assert CHANNEL_IMPORTANCES.get("mag_based") is CHANNEL_IMPORTANCES.get("l2")
    assert CHANNEL_IMPORTANCES.get("nvidia") is CHANNEL_IMPORTANCES.get("taylor")


def test_l1_l2_bn_exact_numbers():
    m = chain()
    graph = build_channel_graph(m, torch.randn(1, 1, 2, 2))
    g = chain_group(graph)
    fc = m.fc.weight.detach().abs()
    fc_l1 = [float(fc[:, 0:4].sum()), float(fc[:, 4:8].sum())]
    fc_sq = [float((fc[:, 0:4] ** 2).sum()), float((fc[:, 4:8] ** 2).sum())]
    # conv w, conv b, gamma, beta; running statistics (buffers) are not counted
    l1 = channel_importance("l1", m, graph)[g.id]
    np.testing.assert_allclose(l1, [1 + 0.3 + 0.5 + 0.1 + fc_l1[0], 2 + 0.4 + 3 + 0.2 + fc_l1[1]], rtol=1e-6)
    l2 = channel_importance("l2", m, graph)[g.id]
    want = np.sqrt([1 + 0.09 + 0.25 + 0.01 + fc_sq[0], 4 + 0.16 + 9 + 0.04 + fc_sq[1]])
    np.testing.assert_allclose(l2, want, rtol=1e-6)
    np.testing.assert_allclose(channel_importance("l1", m, graph, roles=("producer",))[g.id], [1.3, 2.4], rtol=1e-6)
    np.testing.assert_allclose(channel_importance("l2", m, graph, roles="consumer")[g.id], np.sqrt(fc_sq), rtol=1e-6)
    np.testing.assert_allclose(channel_importance("bn", m, graph)[g.id], [0.5, 3.0], rtol=1e-6)
    # the head group has no norm: bn falls back to l1 of its producers
    [head] = [h for h in graph.groups if h.id != g.id]
    want_head = m.fc.weight.detach().abs().sum(1) + m.fc.bias.detach().abs()
    np.testing.assert_allclose(channel_importance("bn", m, graph)[head.id], want_head.numpy(), rtol=1e-6)


def test_every_group_scored_with_its_size_and_random_is_seeded():
    m = chain()
    graph = build_channel_graph(m, torch.randn(1, 1, 2, 2))
    for name in DATA_FREE:
        scores = channel_importance(name, m, graph)
        assert {k: v.shape for k, v in scores.items()} == {g.id: (g.size,) for g in graph.groups}
    a, b = channel_importance("random", m, graph, seed=3), channel_importance("random", m, graph, seed=3)
    assert all(np.array_equal(a[k], b[k]) for k in a)


class Residual(nn.Module):
    """c0 and c1 both produce the residual group; c1 also consumes it (its diagonal counts once)."""

    def __init__(self):
        super().__init__()
        self.c0 = nn.Conv2d(1, 3, 1, bias=False)
        self.c1 = nn.Conv2d(3, 3, 1, bias=False)
        self.head = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        a = self.c0(x)
        b = torch.relu(self.c1(torch.relu(a))) + a
        return self.head(b).mean((2, 3))


def test_residual_group_sums_both_producers_and_counts_shared_elements_once():
    torch.manual_seed(0)
    m = Residual()
    graph = build_channel_graph(m, torch.randn(1, 1, 2, 2))
    [g] = [g for g in graph.groups if {s.tensor for s in g.producers} == {"c0.weight", "c1.weight"}]
    w0, w1, wh = (t.detach().abs().reshape(t.shape[0], t.shape[1]) for t in (m.c0.weight, m.c1.weight, m.head.weight))
    prod = channel_importance("l1", m, graph, roles=("producer",))[g.id]
    np.testing.assert_allclose(prod, (w0.sum(1) + w1.sum(1)).numpy(), rtol=1e-6)
    full = channel_importance("l1", m, graph)[g.id]
    want = w0.sum(1) + w1.sum(1) + w1.sum(0) - w1.diagonal() + wh.sum(0)
    np.testing.assert_allclose(full, want.numpy(), rtol=1e-6)
    # a gradient measure sums over both producers alike
    data = batches(sizes=(4,), classes=2)
    gm, _ = hand_grads(m, data, 5.0)
    lb = channel_importance("loss_based", m, graph, data, roles=("producer",))[g.id]
    t0 = (m.c0.weight.detach() * gm["c0.weight"]).abs().flatten(1).sum(1)
    t1 = (m.c1.weight.detach() * gm["c1.weight"]).abs().flatten(1).sum(1)
    np.testing.assert_allclose(lb, (t0 + t1).numpy(), rtol=1e-5)


def test_grouped_conv_input_columns_belong_to_their_block():
    class Grouped(nn.Module):
        def __init__(self):
            super().__init__()
            self.c0 = nn.Conv2d(1, 4, 1)
            self.c1 = nn.Conv2d(4, 6, 1, groups=2)

        def forward(self, x):
            return self.c1(self.c0(x)).mean((2, 3))

    torch.manual_seed(0)
    m = Grouped()
    graph = build_channel_graph(m, torch.randn(1, 1, 2, 2))
    [g] = [g for g in graph.groups if any(s.tensor == "c0.weight" for s in g.producers)]
    w = m.c1.weight.detach().abs()[:, :, 0, 0]  # (6, 2): rows 0-2 read inputs 0-1, rows 3-5 read 2-3
    want = [float(w[3 * (i // 2) : 3 * (i // 2) + 3, i % 2].sum()) for i in range(4)]
    np.testing.assert_allclose(channel_importance("l1", m, graph, roles=("consumer",))[g.id], want, rtol=1e-6)


@pytest.mark.parametrize("T", [1.0, 5.0])
def test_gradient_measures_equal_their_formulas(T):
    m = chain()
    graph = build_channel_graph(m, torch.randn(1, 1, 2, 2))
    g = chain_group(graph)
    data = batches()
    gm, g2 = hand_grads(m, data, T)
    params = {n: p.detach() for n, p in m.named_parameters()}
    init = {n: p + 0.25 for n, p in params.items()}
    per = [
        (chain_channel(params, k), chain_channel(gm, k), chain_channel(g2, k), chain_channel(init, k)) for k in (0, 1)
    ]

    def total(fn):
        return [sum(float(fn(th[n], gg[n], sq[n], i0[n]).sum()) for n in th) for th, gg, sq, i0 in per]

    want = {
        "loss_based": total(lambda t, g_, s, i: (t * g_).abs()),
        "biased_loss": total(lambda t, g_, s, i: (t**2 * g_).abs()),
        "tfo": np.abs(total(lambda t, g_, s, i: t * g_)),
        "fisher": total(lambda t, g_, s, i: t**2 * s),
    }
    for name, expected in want.items():
        got = channel_importance(name, m, graph, data, T=T)[g.id]
        np.testing.assert_allclose(got, expected, rtol=1e-5, err_msg=name)
    with_init = channel_importance("biased_loss", m, graph, data, T=T, use_init=init)[g.id]
    np.testing.assert_allclose(with_init, total(lambda t, g_, s, i: (t - i).abs() * (t * g_).abs()), rtol=1e-5)
    # taylor / nvidia: norm gamma and beta only
    taylor = [
        float(params["bn.weight"][k] ** 2 * g2["bn.weight"][k] + params["bn.bias"][k] ** 2 * g2["bn.bias"][k])
        for k in (0, 1)
    ]
    np.testing.assert_allclose(channel_importance("nvidia", m, graph, data, T=T)[g.id], taylor, rtol=1e-5)


def test_taylor_falls_back_to_fisher_on_producers_without_a_norm():
    m = chain()
    graph = build_channel_graph(m, torch.randn(1, 1, 2, 2))
    [head] = [h for h in graph.groups if h.id != chain_group(graph).id]
    data = batches()
    taylor = channel_importance("taylor", m, graph, data)[head.id]
    fisher = channel_importance("fisher", m, graph, data, roles=("producer",))[head.id]
    np.testing.assert_allclose(taylor, fisher, rtol=1e-12)
    assert (taylor > 0).all()


def test_hessian_gradient_product_matches_functional_hvp_and_grasp_uses_it():
    m = chain()
    graph = build_channel_graph(m, torch.randn(1, 1, 2, 2))
    g = chain_group(graph)
    data = batches()
    T = 3.0
    names = [n for n, _ in m.named_parameters()]
    theta = tuple(p.detach().clone() for _, p in m.named_parameters())
    n = sum(len(x) for x, _ in data)
    m.eval()

    def loss(*ps):
        out = 0
        for x, y in data:
            logits = functional_call(m, dict(zip(names, ps, strict=True)), (x,))
            out = out + len(x) / n * F.cross_entropy(logits / T, y)
        return out

    g_bar = torch.autograd.grad(loss(*[t.requires_grad_() for t in theta]), theta)
    _, hv = torch.autograd.functional.hvp(loss, tuple(t.detach() for t in theta), g_bar)
    m.train()
    stats = gradient_stats(m, data, T=T, hvp=True)
    for name, want in zip(names, hv, strict=True):
        np.testing.assert_allclose(stats["hg"][name].numpy(), want.numpy(), rtol=1e-4, atol=1e-9, err_msg=name)
    hg = {k: v.float() for k, v in stats["hg"].items()}
    params = {k: p.detach() for k, p in m.named_parameters()}
    signed = [
        sum(
            float((th * h).sum())
            for th, h in zip(chain_channel(params, k).values(), chain_channel(hg, k).values(), strict=True)
        )
        for k in (0, 1)
    ]
    np.testing.assert_allclose(channel_importance("grasp", m, graph, data, T=T)[g.id], signed, rtol=1e-4)
    np.testing.assert_allclose(
        channel_importance("grad_preserve", m, graph, data, T=T)[g.id], np.abs(signed), rtol=1e-4
    )
    assert m.training


@pytest.mark.parametrize("name", NEEDS_DATA)
def test_data_measures_refuse_without_batches(name):
    m = chain()
    graph = build_channel_graph(m, torch.randn(1, 1, 2, 2))
    for empty in (None, []):
        with pytest.raises(HwpruneError, match="needs data") as err:
            channel_importance(name, m, graph, empty)
        assert "\n" not in str(err.value)


def test_unknown_option_and_bad_init_are_one_line_errors():
    m = chain()
    graph = build_channel_graph(m, torch.randn(1, 1, 2, 2))
    with pytest.raises(HwpruneError, match="takes no option T") as err:
        channel_importance("l1", m, graph, T=5)
    assert "\n" not in str(err.value)
    with pytest.raises(HwpruneError, match="use_init lacks"):
        channel_importance("biased_loss", m, graph, batches(), use_init={})
    with pytest.raises(HwpruneError, match="unknown slice role"):
        channel_importance("l1", m, graph, roles=("producers",))


def test_model_state_is_restored_and_no_grads_are_left():
    m = chain().train()
    graph = build_channel_graph(m, torch.randn(1, 1, 2, 2))
    m.bn.eval()
    m.conv.bias.requires_grad_(False)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    for name in NEEDS_DATA:
        channel_importance(name, m, graph, batches(sizes=(2,)))
    assert m.training and m.fc.training and not m.bn.training
    assert not m.conv.bias.requires_grad and m.conv.weight.requires_grad
    assert all(p.grad is None for p in m.parameters())
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # eval mode: running stats untouched


def test_activation_is_the_mean_absolute_output_of_the_producer():
    """Chain's conv group: mean over examples and pixels of |conv(x)| per channel, by hand; a channel with
    zero weights and bias scores 0 (negative control: the hook reads outputs, not weights)."""
    m = chain().train()
    x = torch.randn(6, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    graph = build_channel_graph(m, x[:1])
    g = chain_group(graph)
    data = [(x[:4], None), (x[4:], None)]
    scores = channel_importance("activation", m, graph, data)[g.id]
    with torch.no_grad():
        want = m.conv(x).abs().mean((0, 2, 3)).double().numpy()
    np.testing.assert_allclose(scores, want, rtol=1e-6)
    assert m.training  # mode restored
    with torch.no_grad():
        m.conv.weight[1].zero_()
        m.conv.bias[1].zero_()
    assert channel_importance("activation", m, graph, data)[g.id][1] == 0.0
