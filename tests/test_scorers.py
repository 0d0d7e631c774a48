"""Weight scorers against hand-computed or independently autograd-computed values."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.functional import hvp
from torch.func import functional_call

from hwprune.errors import HwpruneError
from hwprune.prune.scorers import (
    EPS,
    GCS_PRESETS,
    GCS_SCALE,
    WEIGHT_SCORERS,
    gcs_combine,
    gcs_groups,
    gcs_vectors,
    hessian_gradient_product,
    prunable_tensors,
    pruning_set,
    score_weights,
)


def tiny_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4, bias=False), nn.Tanh(), nn.Linear(4, 3, bias=False)).double()


def tiny_data(n=12, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    y = torch.arange(n) % 3
    return x, y


def group_loss(model, x, y, temperature):
    """Loss of (x, y) as a function of the weight tuple, for torch.autograd.functional."""
    names = [n for n, _ in model.named_parameters()]

    def f(*weights):
        out = functional_call(model, dict(zip(names, weights, strict=True)), (x,))
        return F.cross_entropy(out / temperature, y)

    return f


def weights(model):
    return tuple(p.detach().clone() for p in model.parameters())


def grad_of(f, w):
    w = tuple(t.clone().requires_grad_(True) for t in w)
    return tuple(g.detach() for g in torch.autograd.grad(f(*w), w))


def hvp_of(f, w, v):
    return hvp(f, w, v)[1]


def add(*vs):
    return tuple(sum(ts) for ts in zip(*vs, strict=True))


def assert_close(got: dict, want, names):
    for n, w in zip(names, want, strict=True):
        torch.testing.assert_close(got[n], w, rtol=1e-9, atol=1e-18)


# ---------------------------------------------------------------- SNIP


def test_snip_equals_hand_computed_g_times_theta():
    net = nn.Linear(2, 2, bias=False).double()
    w = np.array([[0.5, -1.0], [2.0, 0.25]])
    with torch.no_grad():
        net.weight.copy_(torch.tensor(w))
    xs = [np.array([[1.0, 2.0], [-1.0, 0.5]]), np.array([[0.3, -0.7]])]
    ys = [np.array([0, 1]), np.array([1])]
    g = np.zeros((2, 2))
    for x, y in zip(xs, ys, strict=True):  # dCE/dW = (softmax(xW^T) - onehot)^T x / B, summed over batches
        z = x @ w.T
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        p[np.arange(len(y)), y] -= 1
        g += p.T @ x / len(y)
    want = np.abs(g * w) / np.abs(g * w).sum()
    batches = [(torch.tensor(x), torch.tensor(y)) for x, y in zip(xs, ys, strict=True)]
    got = score_weights("snip", net, batches)
    np.testing.assert_allclose(got["weight"].numpy(), want, rtol=1e-12)
    assert net.weight.grad is None


# ---------------------------------------------------------------- SynFlow


def test_synflow_equals_hand_computed_flow_on_a_linear_chain():
    net = nn.Sequential(nn.Linear(2, 3, bias=False), nn.ReLU(), nn.Linear(3, 1, bias=False))
    w1 = torch.tensor([[1.0, -2.0], [0.5, 0.5], [-3.0, 1.0]])
    w2 = torch.tensor([[2.0, -1.0, 0.5]])
    with torch.no_grad():
        net[0].weight.copy_(w1)
        net[2].weight.copy_(w2)
    net.train()
    got = score_weights("synflow", net, None, input_shape=(2,))
    # R = sum_j |w2_j| sum_i |w1_ji| for an all-ones input; score = |theta * dR/dtheta|
    want1 = torch.tensor([[2.0, 4.0], [0.5, 0.5], [1.5, 0.5]])  # |w1_ji| * |w2_j|
    want2 = torch.tensor([[6.0, 1.0, 2.0]])  # |w2_j| * sum_i |w1_ji|
    torch.testing.assert_close(got["0.weight"], want1)
    torch.testing.assert_close(got["2.weight"], want2)
    # signs restored (never changed), mode kept, no grads left
    torch.testing.assert_close(net[0].weight, w1)
    torch.testing.assert_close(net[2].weight, w2)
    assert net.training and all(p.grad is None for p in net.parameters())


def test_synflow_input_shape_from_batch_and_data_free_error():
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    x = torch.randn(5, 1, 2, 2)
    s = score_weights("synflow", net, [(x, torch.zeros(5, dtype=torch.long))])
    assert set(s) == {"1.weight"}
    with pytest.raises(HwpruneError, match="input_shape"):
        score_weights("synflow", net, None)


# ---------------------------------------------------------------- GraSP


def test_grasp_hg_matches_autograd_hvp_and_score_is_signed_theta_hg():
    net = tiny_mlp()
    x, y = tiny_data()
    batches = [(x[:5], y[:5]), (x[5:], y[5:])]
    t = 200.0
    w = weights(net)
    fs = [group_loss(net, bx, by, t) for bx, by in batches]
    g = add(*[grad_of(f, w) for f in fs])
    want_hg = add(*[hvp_of(f, w, g) for f in fs])
    names = [n for n, _ in net.named_parameters()]
    params = dict(net.named_parameters())
    got_hg = hessian_gradient_product(net, batches, params, temperature=t)
    assert min(float(h.abs().max()) for h in want_hg) > 1e-9  # a real check, not 0 == 0
    assert_close(got_hg, want_hg, names)

    q = [wi * h for wi, h in zip(w, want_hg, strict=True)]
    norm = abs(sum(qi.sum() for qi in q)) + EPS
    assert_close(score_weights("grasp", net, batches), [qi / norm for qi in q], names)


# ---------------------------------------------------------------- GCS


def gcs_expected_vectors(net, groups, grad_mode, t=200.0):
    w = weights(net)
    fs = [group_loss(net, x, y, t) for x, y in groups]
    g = [grad_of(f, w) for f in fs]
    h = [lambda v, f=f: hvp_of(f, w, v) for f in fs]  # H_i v
    n = len(g)
    if grad_mode == 0:  # grad of ||g_i||^2 = 2 H_i g_i
        return [tuple(2 * a for a in h[i](g[i])) for i in range(n)]
    if grad_mode == 1:  # grad of (g_sum . g_i) = H_sum g_i + H_i g_sum
        g_sum = add(*g)
        return [add(*[h[k](g[i]) for k in range(n)], h[i](g_sum)) for i in range(n)]
    if grad_mode == 2:  # grad of g_i . g_j = H_i g_j + H_j g_i
        return [add(h[i](g[j]), h[j](g[i])) for i in range(n) for j in range(i + 1, n)]
    if grad_mode == 3:
        return g
    dots = [[sum((a * b).sum() for a, b in zip(g[i], g[j], strict=True)) for j in range(n)] for i in range(n)]
    m = int(np.argmax([sum(row) for row in dots]))
    return [add(h[m](g[j]), h[j](g[m])) for j in range(n)]


@pytest.mark.parametrize("grad_mode", [0, 1, 2, 3, 4])
def test_gcs_grad_modes_equal_their_formulas(grad_mode):
    net = tiny_mlp()
    x, y = tiny_data()
    groups = gcs_groups([(x, y)], 3, data_mode=1)
    params = dict(net.named_parameters())
    names = list(params)
    got = gcs_vectors(net, groups, params, grad_mode=grad_mode)
    want = gcs_expected_vectors(net, groups, grad_mode)
    assert len(got) == len(want) == 3  # three groups, or three pairs of them
    assert min(float(t.abs().max()) for v in want for t in v) > 1e-9
    for gv, wv in zip(got, want, strict=True):
        assert_close(gv, wv, names)


@pytest.mark.parametrize("prune_mode", [1, 2, 3, 4])
def test_gcs_prune_modes_equal_their_formulas(prune_mode):
    theta = {"a": torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)}
    vs = [{"a": torch.tensor([0.5, 1.0, -1.0], dtype=torch.float64)}, {"a": torch.tensor([2.0, 0.5, 1.0])}]
    q1, q2 = theta["a"] * vs[0]["a"], theta["a"] * vs[1]["a"]  # [0.5, -2, -3], [2, -1, 3]
    want = {1: q1 + q2, 2: (q1 + q2).abs(), 3: GCS_SCALE * q1.abs() * q2.abs(), 4: GCS_SCALE * (q1**2 + q2**2).sqrt()}
    torch.testing.assert_close(gcs_combine(theta, vs, prune_mode)["a"], want[prune_mode].double())


def test_gcs_data_modes_group_by_label_or_interleave():
    x = torch.arange(12.0).reshape(12, 1)
    y = torch.tensor([0, 1, 2] * 4)
    contiguous = gcs_groups([(x[:5], y[:5]), (x[5:], y[5:])], 2, data_mode=0)
    assert contiguous[0][1].tolist() == [0, 0, 0, 0, 1, 1] and contiguous[1][1].tolist() == [1, 1, 2, 2, 2, 2]
    mixed = gcs_groups([(x, y)], 2, data_mode=1)
    assert mixed[0][1].tolist() == [0, 1, 2, 0, 1, 2] and mixed[1][1].tolist() == [0, 1, 2, 0, 1, 2]
    assert gcs_groups([(x, y)], 5, 1)[0][0].shape[0] == 2  # 12 // 5, the 2 left over are dropped


def test_gcs_presets_and_full_score():
    assert GCS_PRESETS["gcs"] == {"data_mode": 1, "grad_mode": 2, "prune_mode": 2, "num_group": 2}
    assert GCS_PRESETS["gcs-group"] == {"data_mode": 1, "grad_mode": 2, "prune_mode": 4, "num_group": 5}
    net = tiny_mlp()
    x, y = tiny_data()
    groups = gcs_groups([(x, y)], 2, data_mode=1)
    v = gcs_expected_vectors(net, groups, 2)[0]
    q = [wi * vi for wi, vi in zip(weights(net), v, strict=True)]
    norm = abs(sum(qi.abs().sum() for qi in q)) + EPS
    got = score_weights("gcs", net, [(x, y)], reinit=False)
    assert_close(got, [qi.abs() / norm for qi in q], [n for n, _ in net.named_parameters()])


def test_gcs_grasp_preset_ranks_like_grasp():
    net = tiny_mlp()
    x, y = tiny_data()
    a = score_weights("gcs-grasp", net, [(x, y)], reinit=False)
    b = score_weights("grasp", net, [(x, y)])
    fa = torch.cat([a[n].flatten() for n in a])  # grad of ||g||^2 = 2 Hg: the same up to a positive factor
    fb = torch.cat([b[n].flatten() for n in a])
    factor = fa.sum() / fb.sum()
    assert factor > 0
    torch.testing.assert_close(fa, factor * fb, rtol=1e-9, atol=0)
    assert torch.equal(torch.argsort(fa), torch.argsort(fb))


def test_gcs_reinit_does_not_touch_the_model_and_is_seeded():
    net = tiny_mlp()
    before = weights(net)
    x, y = tiny_data()
    a = score_weights("gcs-group", net, [(x, y)], num_group=3, seed=3)
    b = score_weights("gcs-group", net, [(x, y)], num_group=3, seed=3)
    for n in a:
        torch.testing.assert_close(a[n], b[n])
    for p, w in zip(net.parameters(), before, strict=True):
        assert torch.equal(p, w)


def test_gcs_option_errors():
    net = tiny_mlp()
    x, y = tiny_data()
    with pytest.raises(HwpruneError, match="num_group"):
        score_weights("gcs", net, [(x, y)], num_group=1)
    with pytest.raises(HwpruneError, match="grad_mode"):
        score_weights("gcs", net, [(x, y)], grad_mode=7)
    with pytest.raises(HwpruneError, match="preset"):
        score_weights("gcs", net, [(x, y)], preset="nope")


# ---------------------------------------------------------------- common behaviour


class WithNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.pool(torch.relu(self.bn(self.conv(x)))).flatten(1))


def test_prunable_tensor_options():
    net = WithNorm()
    assert list(prunable_tensors(net)) == ["conv.weight", "fc.weight"]
    assert list(prunable_tensors(net, dense_classifier=True)) == ["conv.weight"]
    assert list(prunable_tensors(net, prune_bias=True)) == ["conv.weight", "conv.bias", "fc.weight", "fc.bias"]
    assert list(prunable_tensors(net, prune_norm=True)) == ["conv.weight", "bn.weight", "fc.weight"]


@pytest.mark.parametrize("method", WEIGHT_SCORERS.names())
def test_every_scorer_leaves_the_model_as_it_was(method):
    torch.manual_seed(0)
    net = WithNorm()
    net.train()
    net.bn.eval()
    net.fc.bias.requires_grad_(False)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(12, 1, 6, 6)
    y = torch.arange(12) % 3
    scores = score_weights(method, net, [(x[:6], y[:6]), (x[6:], y[6:])], prune_bias=True)
    assert set(scores) == {"conv.weight", "conv.bias", "fc.weight", "fc.bias"}
    for n, s in scores.items():
        assert s.shape == dict(net.named_parameters())[n].shape and torch.isfinite(s).all()
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert net.training and not net.bn.training
    assert not net.fc.bias.requires_grad and net.conv.weight.requires_grad
    assert all(p.grad is None for p in net.parameters())


def test_train_mode_restores_batchnorm_statistics():
    torch.manual_seed(0)
    net = WithNorm().eval()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(8, 1, 6, 6)
    score_weights("snip", net, [(x, torch.arange(8) % 3)], train_mode=True)
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert not net.training


def test_mag_rand_and_option_errors():
    net = WithNorm()
    mag = score_weights("mag", net, None)
    torch.testing.assert_close(mag["fc.weight"], net.fc.weight.detach().abs())
    r1, r2 = score_weights("rand", net, None, seed=1), score_weights("rand", net, None, seed=1)
    assert torch.equal(r1["conv.weight"], r2["conv.weight"])
    with pytest.raises(HwpruneError, match="no option"):
        score_weights("mag", net, None, temperature=3)
    with pytest.raises(HwpruneError, match="pruning data"):
        score_weights("snip", net, [])
    with pytest.raises(HwpruneError, match="unknown weight scorer"):
        score_weights("snipp", net, None)


def test_pruning_set_is_balanced_and_class_contiguous():
    x = torch.arange(40.0).reshape(40, 1)
    y = torch.arange(40) % 4
    loader = [(x[i : i + 7], y[i : i + 7]) for i in range(0, 40, 7)]
    batches = pruning_set(loader, num_classes=4, samples_per_class=3, batch_size=5)
    ys = torch.cat([b[1] for b in batches]).tolist()
    assert ys == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3] and [len(b[1]) for b in batches] == [5, 5, 2]
    assert torch.cat([b[0] for b in batches])[:3, 0].tolist() == [0.0, 4.0, 8.0]
    with pytest.raises(HwpruneError, match="fewer than"):
        pruning_set(loader, num_classes=4, samples_per_class=20)
