"""Weight scorers against hand-computed or independently autograd-computed values."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.functional import hvp
from torch.func import functional_call

from hwprune.errors import HwpruneError
from hwprune.models import get_model
from hwprune.models.resnet_cifar import CifarResNet
from hwprune.prune.masks import WeightMask
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
from hwprune.prune.weight_masking import detect_collapse, mask_from_scores, prune_weights


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


# ---------------------------------------------------------------- SynFlow at depth (overflow, rescaling)


def flat_scores(scores):
    return torch.cat([s.flatten() for s in scores.values()])


def test_synflow_rescaled_flow_ranks_exactly_like_the_unscaled_flow():
    # resnet20 at 8 px: the reference flow is finite in float32, so it is the ranking to reproduce
    torch.manual_seed(0)
    net = get_model("resnet20", num_classes=10, in_channels=3, input_size=8)
    plain = score_weights("synflow", net, None, input_shape=(3, 8, 8), rescale=False)
    scaled = score_weights("synflow", net, None, input_shape=(3, 8, 8), rescale=True)
    a, b = flat_scores(plain), flat_scores(scaled)
    assert torch.isfinite(a).all() and a.dtype == b.dtype == torch.float32
    assert float(a.max()) > 1e6 and float(b.max()) < 1.0  # the scaled flow is a different number ...
    ratio = torch.unique(a[a > 0] / b[a > 0])
    assert ratio.numel() == 1 and math.frexp(float(ratio))[0] == 0.5  # ... times one power of two, exactly
    assert torch.equal(a == 0, b == 0)
    for rule in ("exact", "reference"):
        m_plain, m_scaled = mask_from_scores(plain, 0.1, rule=rule), mask_from_scores(scaled, 0.1, rule=rule)
        assert all(np.array_equal(m_plain.keep[n], m_scaled.keep[n]) for n in plain)
    # negative control: scaling one layer of a residual branch (per-layer normalisation) is not a global
    # factor on a residual network: it changes the ranking, which is why only graph cuts are rescaled
    with torch.no_grad():
        net.layer1[0].conv2.weight.mul_(4.0)
    moved = flat_scores(score_weights("synflow", net, None, input_shape=(3, 8, 8), rescale=False))
    assert torch.unique(moved[a > 0] / a[a > 0]).numel() > 1


def test_synflow_deep_network_is_finite_and_does_not_collapse():
    torch.manual_seed(0)
    net = get_model("resnet56", num_classes=10, in_channels=3, input_size=8)
    shape = (3, 8, 8)
    # negative control: the reference computation overflows float32 on resnet56 (R ~ 1e62 at 8 px)
    reference = score_weights("synflow", net, None, input_shape=shape, rescale=False)
    assert not torch.isfinite(flat_scores(reference)).all()
    assert detect_collapse(mask_from_scores(reference, 0.1, rule="reference"))  # inf ties: layers emptied
    scores = score_weights("synflow", net, None, input_shape=shape)
    flat = flat_scores(scores)
    assert flat.dtype == torch.float64 and torch.isfinite(flat).all() and (flat > 0).all()
    double = flat_scores(score_weights("synflow", net, None, input_shape=shape, double=True))
    assert double.dtype == torch.float64 and torch.isfinite(double).all()  # not cast back to float32 (inf)
    assert float(flat.max()) > 3.5e38  # the scores themselves do not fit float32
    # 100-round iterative SynFlow to 10x keeps every layer
    mask = prune_weights(net, "synflow", None, 0.1, rounds=100, input_shape=shape, rule="reference")
    assert mask.meta["collapsed"] == [] and detect_collapse(mask) == []
    assert abs(mask.meta["kept"] - 0.1 * sum(k.size for k in mask.keep.values())) < 5


def test_synflow_beyond_float64_rescales_at_the_cuts():
    # a 302-layer CIFAR ResNet at 8 px: R ~ 1e500, past float64 as well
    torch.manual_seed(0)
    net = CifarResNet(50, num_classes=10, in_channels=3)
    shape = (3, 8, 8)
    reference = flat_scores(score_weights("synflow", net, None, input_shape=shape, double=True, rescale=False))
    assert not torch.isfinite(reference).all()  # negative control: float64 alone overflows
    scores = score_weights("synflow", net, None, input_shape=shape)
    flat = flat_scores(scores)
    assert flat.dtype == torch.float64 and torch.isfinite(flat).all() and (flat > 0).all()
    # the rescaled flow of the first stage alone (finite unscaled) ranks as the unscaled one
    stage = nn.Sequential(net.conv1, net.bn1, net.relu, net.layer1[:6], net.avgpool, net.flatten)
    a = flat_scores(score_weights("synflow", stage, None, input_shape=shape, double=True, rescale=False))
    b = flat_scores(score_weights("synflow", stage, None, input_shape=shape, double=True, rescale=True))
    assert torch.isfinite(a).all() and torch.unique(a / b).numel() == 1


def test_synflow_densenet121_is_finite_and_rescaling_is_exact_through_concatenations():
    torch.manual_seed(0)
    net = get_model("torchvision:densenet121", num_classes=10, in_channels=3, input_size=32)
    shape = (3, 32, 32)
    assert not torch.isfinite(flat_scores(score_weights("synflow", net, None, input_shape=shape, rescale=False))).all()
    auto = flat_scores(score_weights("synflow", net, None, input_shape=shape))
    assert auto.dtype == torch.float64 and torch.isfinite(auto).all() and float(auto.max()) > 3.5e38
    scaled = flat_scores(score_weights("synflow", net, None, input_shape=shape, rescale=True, double=True))
    assert torch.isfinite(scaled).all() and float(scaled.max()) < 1.0
    assert torch.equal(auto == 0, scaled == 0)  # 3x3 taps that only ever see padding at 1x1 score 0
    live = auto > 0
    assert torch.unique(auto[live] / scaled[live]).numel() == 1  # cuts only between dense blocks: one factor


def test_synflow_rescale_option_is_checked():
    with pytest.raises(HwpruneError, match="rescale"):
        score_weights("synflow", nn.Linear(2, 2), None, input_shape=(2,), rescale="always")


# ---------------------------------------------------------------- iterative SynFlow = the reference loop


def reference_synflow_masks(model, input_shape, density, rounds):
    """Synaptic-Flow's ``prune_loop`` with its ``SynFlow`` scorer and ``Pruner._global_mask``, compactly.

    Eval mode; every parameter and buffer replaced by its absolute value; masked layers compute
    ``weight * mask``; score |θ ⊙ ∂R/∂θ| on an all-ones input; density d^((e+1)/rounds) at round e;
    threshold = kthvalue(scores, int((1 - d) N)); a weight is kept when its score is above it.
    """
    net = copy.deepcopy(model).eval()
    names = [f"{m}.weight" for m, mod in net.named_modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
    state = dict(net.named_parameters()) | dict(net.named_buffers())
    masks = {n: torch.ones_like(state[n]) for n in names}
    for epoch in range(rounds):
        theta = {n: t.detach().abs().clone().requires_grad_(n in masks) for n, t in state.items()}
        effective = {n: theta[n] * masks[n] if n in masks else theta[n] for n in theta}
        out = functional_call(net, effective, (torch.ones([1, *input_shape]),))
        grads = torch.autograd.grad(out.sum(), [theta[n] for n in names])
        scores = {n: (g * theta[n]).detach().abs() for n, g in zip(names, grads, strict=True)}
        sparse = density ** ((epoch + 1) / rounds)
        everything = torch.cat([torch.flatten(s) for s in scores.values()])
        k = int((1.0 - sparse) * everything.numel())
        if not k < 1:
            threshold, _ = torch.kthvalue(everything, k)
            masks = {n: torch.where(scores[n] <= threshold, 0.0, 1.0) for n in names}
    return {n: m.bool().numpy() for n, m in masks.items()}


def test_iterative_synflow_gives_the_reference_mask_after_100_rounds():
    torch.manual_seed(0)
    net = get_model("lenet5", num_classes=10, in_channels=1, input_size=28)
    want = reference_synflow_masks(net, (1, 28, 28), 0.1, 100)
    total = sum(m.size for m in want.values())
    got = prune_weights(net, "synflow", None, 0.1, rounds=100, input_shape=(1, 28, 28), rule="reference")
    assert set(got.keep) == set(want)
    assert all(np.array_equal(got.keep[n], want[n]) for n in want)
    assert abs(got.meta["kept"] - 0.1 * total) < 5  # the reference's own sanity check
    # negative control: the exact rule (round(d N) kept, ties by position) drifts from it
    exact = prune_weights(net, "synflow", None, 0.1, rounds=100, input_shape=(1, 28, 28), rule="exact")
    assert sum(int((exact.keep[n] != want[n]).sum()) for n in want) > 0


def test_reference_rule_removes_int_count_and_every_tie():
    scores = {"a": torch.tensor([3.0, 1.0, 1.0, 1.0, 2.0, 0.0])}
    # k = int(0.5 * 6) = 3: the 3rd smallest is 1, and every score <= 1 goes (4 of 6)
    assert mask_from_scores(scores, 0.5, rule="reference").keep["a"].tolist() == [1, 0, 0, 0, 1, 0]
    assert mask_from_scores(scores, 0.5, rule="exact").keep["a"].tolist() == [1, 1, 0, 0, 1, 0]
    # k = int((1 - 0.9) * 6) = 0 < 1: nothing is removed
    assert mask_from_scores(scores, 0.9, rule="reference").keep["a"].all()
    # a weight removed earlier stays removed even when its new (signed) score is high: with the reference
    # rule the threshold is still taken over every score (k = 2: -1), with the exact rule it ranks last
    signed = {"a": torch.tensor([-5.0, 3.0, 1.0, -1.0])}
    before = WeightMask({"a": np.array([True, False, True, True])})
    assert mask_from_scores(signed, 0.5, rule="reference").keep["a"].tolist() == [0, 1, 1, 0]
    assert mask_from_scores(signed, 0.5, rule="reference", pruned=before).keep["a"].tolist() == [0, 0, 1, 0]
    assert mask_from_scores(signed, 0.5, rule="exact", pruned=before).keep["a"].tolist() == [0, 0, 1, 1]
    # float64 scores are ranked in float64 (past float32's range)
    big = {"a": torch.tensor([1e300, 3e300, 2e300], dtype=torch.float64)}
    assert mask_from_scores(big, 0.33, rule="reference").keep["a"].tolist() == [0, 1, 0]
    with pytest.raises(HwpruneError, match="rule"):
        mask_from_scores(scores, 0.5, rule="nearest")


# ---------------------------------------------------------------- GCS: train mode, seeds


def test_gcs_scores_in_train_mode_by_default_and_restores_the_statistics():
    torch.manual_seed(0)
    net = WithNorm().double().eval()
    with torch.no_grad():  # running statistics far from the batch's: eval and train mode disagree
        net.bn.running_mean.fill_(3.0)
        net.bn.running_var.fill_(5.0)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(12, 1, 6, 6, dtype=torch.float64)
    y = torch.arange(12) % 3
    every = {"reinit": False, "prune_bias": True, "prune_norm": True}  # every parameter scored
    got = score_weights("gcs", net, [(x, y)], **every)
    # by hand: the GCS vector of the two groups on a copy in train mode (batch statistics)
    ref = copy.deepcopy(net).train()
    groups = gcs_groups([(x, y)], 2, data_mode=1)
    v = gcs_expected_vectors(ref, groups, 2)[0]
    names = [n for n, _ in net.named_parameters()]
    q = [(w * vi).abs() for w, vi in zip(weights(net), v, strict=True)]
    norm = sum(t.sum() for t in q) + EPS
    assert list(got) == names
    for n, t in zip(names, q, strict=True):  # conv.bias is ~0 under batch statistics: rounding noise only
        torch.testing.assert_close(got[n], t / norm, rtol=1e-9, atol=1e-12)
    # negative control: eval mode (the old default) scores differently
    evaluated = score_weights("gcs", net, [(x, y)], train_mode=False, **every)
    assert not torch.allclose(evaluated["conv.weight"], got["conv.weight"], rtol=1e-3)
    for k, val in net.state_dict().items():
        assert torch.equal(val, state[k]), k
    assert not net.training and not net.bn.training


@pytest.mark.parametrize("method", ["gcs", "gcs-group", "gcs-grasp", "gcs-snip"])
def test_gcs_seed_reaches_the_reinitialisation(method):
    net = tiny_mlp()
    x, y = tiny_data(n=30)
    a = score_weights(method, net, [(x, y)], seed=1)
    b = score_weights(method, net, [(x, y)], seed=1)
    c = score_weights(method, net, [(x, y)], seed=2)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not torch.allclose(a["0.weight"], c["0.weight"])
    # without re-initialisation nothing is random: the seed has no effect
    d = score_weights(method, net, [(x, y)], seed=1, reinit=False)
    e = score_weights(method, net, [(x, y)], seed=2, reinit=False)
    assert all(torch.equal(d[n], e[n]) for n in d)
