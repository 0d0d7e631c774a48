"""GATOR gating (issue 14): gates = masked model, hand-checked gradient and cost, pruning on digits,
exact conversion of non-ResNet structures, one-line config errors, gradient accumulation, the CLI."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from hwprune.data import get_dataset, make_loader
from hwprune.errors import HwpruneError
from hwprune.export.compact import compact_model, masked_model
from hwprune.export.verify import max_rel_diff
from hwprune.graph_mapper import build_channel_graph
from hwprune.graph_mapper.flops import count_flops
from hwprune.prune.gating import GatingConfig, gate, gates_to_mask, load_config
from hwprune.prune.gating.config import from_mapping
from hwprune.prune.gating.run import prepare
from hwprune.train import TrainConfig, train
from hwprune.train.objective import Objective
from tests.torchrun import run_on_two_ranks, serial


class DenseConcat(nn.Module):
    """DenseNet-style concat, a depthwise conv over it, a grouped conv, flatten into a linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.grow = nn.Conv2d(6, 4, 3, padding=1)
        self.dw = nn.Conv2d(10, 10, 3, padding=1, groups=10)
        self.pw = nn.Conv2d(10, 8, 1)
        self.grouped = nn.Conv2d(8, 6, 3, padding=1, groups=2)
        self.fc = nn.Linear(6 * 2 * 2, 5)

    def forward(self, x):
        a = torch.relu(self.bn(self.stem(x)))
        c = torch.cat([a, torch.relu(self.grow(a))], 1)
        e = self.grouped(torch.relu(self.pw(torch.relu(self.dw(c)))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(e, 2), 1))


class InvertedResidual(nn.Module):
    """A MobileNetV2 block: expand, depthwise, project, residual."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6())
        self.expand = nn.Sequential(nn.Conv2d(8, 24, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU6())
        self.depthwise = nn.Sequential(nn.Conv2d(24, 24, 3, padding=1, groups=24), nn.BatchNorm2d(24), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(24, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        s = self.stem(x)
        y = s + self.project(self.depthwise(self.expand(s)))
        return self.head(y.mean((2, 3)))


class VitMlp(nn.Module):
    """A transformer MLP block on tokens: pre-norm, fc1, GELU, fc2, residual."""

    def __init__(self, dim=8, hidden=16):
        super().__init__()
        self.embed = nn.Linear(3, dim)
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.head = nn.Linear(dim, 5)

    def forward(self, x):
        t = self.embed(x.flatten(2).transpose(1, 2))
        t = t + self.fc2(nn.functional.gelu(self.fc1(self.norm(t))))
        return self.head(t.mean(1))


def randomized(model, seed=0):
    """Distinct values everywhere (init BN is the identity and would hide a wrong row)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.3 if p.ndim > 1 else 1.0) + (1.0 if name.endswith("weight") else 0.0))
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.uniform_(0.5, 2.0)
            elif name.endswith("running_mean"):
                b.uniform_(-0.5, 0.5)
    return model.eval()


def gated_for(model, x, **config):
    return prepare(model, x, GatingConfig(**config))


def close_some(gated, seed=0):
    """Close a random proper subset of every gated group's slots."""
    rng = np.random.default_rng(seed)
    for i, n in enumerate(gated.layout.slot_counts):
        gated.close(i, rng.choice(n, size=rng.integers(1, n), replace=False))


# ----------------------------------------------------------------------------- closed gates = masked model


@pytest.mark.parametrize("make", [DenseConcat, InvertedResidual], ids=["densenet-concat", "mobilenet-block"])
def test_gates_closed_by_hand_reproduce_the_masked_model_exactly(make):
    model, x = randomized(make()), torch.randn(2, 3, 8, 8)
    gated, _ = gated_for(model, x)
    close_some(gated)
    mask = gates_to_mask(gated)
    assert mask.pruned_groups(), "the hand-closed gates must remove channels"
    masked = masked_model(model, gated.graph, mask).eval()
    with torch.no_grad():
        out = gated.eval()(x)
        assert torch.equal(out, masked(x))
        # negative control: a mask that differs in one channel gives another output
        gid = mask.pruned_groups()[0]
        other = gates_to_mask(gated)
        other.keep[gid] = other.keep[gid].copy()
        first_closed = int(np.flatnonzero(~other.keep[gid])[0])
        other.keep[gid][first_closed] = True
        assert not torch.equal(out, masked_model(model, gated.graph, other).eval()(x))


def test_blocks_share_gates_so_each_block_keeps_the_same_count():
    model, x = randomized(DenseConcat()), torch.randn(2, 3, 8, 8)
    gated, _ = gated_for(model, x)
    grouped = [i for i, g in enumerate(gated.layout.groups) if g.blocks]
    assert grouped, "the grouped conv's groups are split into blocks"
    close_some(gated)
    mask = gates_to_mask(gated)
    mask.validate(gated.graph)  # raises when blocks keep different counts
    for i in grouped:
        group = gated.layout.groups[i]
        assert len({int(mask.keep[group.id][list(b)].sum()) for b in group.blocks}) == 1


def test_round_to_keeps_aligned_counts_and_stays_exact():
    model, x = randomized(InvertedResidual()), torch.randn(2, 3, 8, 8)
    gated, _ = gated_for(model, x, round_to=4)
    sizes = [g.size for g in gated.layout.groups]
    assert (sizes, list(gated.layout.slot_counts)) == ([8, 24], [2, 6])
    close_some(gated)
    mask = gates_to_mask(gated)
    assert all(k.sum() % 4 == 0 and not k.all() for k in mask.keep.values())
    with torch.no_grad():
        assert torch.equal(gated.eval()(x), masked_model(model, gated.graph, mask).eval()(x))
    with pytest.raises(HwpruneError, match="no channel group that can carry gates"):
        gated_for(model, x, round_to=16)  # 8 channels cannot lose 16, 24 is no whole number of 16s


# ----------------------------------------------------------------------------- gradient and cost by hand


class Tiny(nn.Module):
    """conv 1->3 (3x3), ReLU, conv 3->2 (1x1), mean: one gated group (the 3 channels between the convs)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 3, 3, padding=1, bias=False)
        self.c2 = nn.Conv2d(3, 2, 1, bias=False)

    def forward(self, x):
        return self.c2(torch.relu(self.c1(x))).mean((2, 3))


@pytest.mark.parametrize(
    "factor_type,per_channel",
    [
        ("flop_factor", (3 * 1 * 9 * 16) / 3 + (2 * 3 * 1 * 16) / 3),  # MACs of c1 and c2 on a 4x4 map, per channel
        ("memory_factor", 27 / 3 + 6 / 3),  # their parameters, per channel
    ],
)
def test_straight_through_gradient_and_cost_term_match_a_hand_computation(factor_type, per_channel):
    torch.manual_seed(0)
    model, x = Tiny(), torch.randn(2, 1, 4, 4)
    cw, gm, temp, mult = 0.7, 0.3, 1.5, 1.25
    gated, objective = gated_for(
        model, x, factor_type=factor_type, criteria_weight=cw, gradient_multiplier=gm, temperature=temp,
        edge_multipliers=(mult,), gate_init_prob=0.8,
    )  # fmt: skip
    total = (3 * 9 * 16 + 6 * 16) if factor_type == "flop_factor" else 27 + 6
    with torch.no_grad():
        gated.logits.copy_(torch.tensor([0.4, -0.2, 1.0]))
    noise = torch.tensor([0.3, 0.5, -2.0])  # gates: open, open, closed
    gated._noise = lambda: noise
    gated.train()
    out = gated(x)
    cost = objective.extra_loss()
    (out.sum() + cost).backward()

    # by hand: gate = 1[z + L > 0], straight-through d gate / dz = sigmoid'((z + L) / T) / T
    z = torch.tensor([0.4, -0.2, 1.0])
    s = torch.sigmoid((z + noise) / temp)
    hard = (z + noise > 0).float()
    assert hard.tolist() == [1.0, 1.0, 0.0]
    weight = mult * per_channel / total  # the cost term's weight on one open channel
    assert cost.item() == pytest.approx(cw * weight * hard.sum().item(), rel=1e-6)
    # the task gradient reaches the gate where the channel is read (c2's columns)
    g = hard.clone().requires_grad_(True)
    w1 = model.c1.weight * hard.view(3, 1, 1, 1)
    y = nn.functional.conv2d(torch.relu(nn.functional.conv2d(x, w1, padding=1)), model.c2.weight * g.view(1, 3, 1, 1))
    (task_grad,) = torch.autograd.grad(y.mean((2, 3)).sum(), g)
    expected = (task_grad + cw * weight) * s * (1 - s) / temp * (gm / weight)  # GATOR's gradient adjustment
    assert torch.allclose(gated.logits.grad, expected, rtol=1e-5, atol=1e-9)
    assert gated.logits.grad.abs().min() > 0


def test_cost_weights_adapt_to_the_other_side_and_the_target_holds():
    torch.manual_seed(0)
    model, x = Tiny(), torch.randn(2, 1, 4, 4)
    gated, objective = gated_for(model, x, target=0.5)
    assert objective.ratio == 1.0 and not objective.holding
    gated.train()
    with torch.no_grad():
        gated.logits.fill_(0.05)  # near probability 0.5: the sampled gates flicker
    assert not all(torch.equal(gated.gates(), gated.active.float()) for _ in range(20))
    gated.close(0, [0, 1])  # one of three channels left
    objective.refresh()
    assert objective.ratio == pytest.approx(1 / 3)  # one group, linear in its open channels
    assert objective.holding and objective.extra_loss() is None
    assert all(torch.equal(gated.gates(), gated.active.float()) for _ in range(20))  # trains as it will run


def test_a_group_never_loses_its_last_gate():
    model, x = Tiny(), torch.randn(2, 1, 4, 4)
    gated, _ = gated_for(model, x)
    with torch.no_grad():
        gated.logits.copy_(torch.tensor([-1.0, -3.0, -0.5]))
    assert gated.deactivate() == 2
    assert gated.active.tolist() == [False, False, True]


def test_no_training_draw_shuts_a_whole_group():
    """One draw serves the whole batch, so a group drawn shut is zero for every sample and the BatchNorm
    after its consumer sees no variance (mobilenet_v2's diverging runs): every draw keeps a gate of each
    group open, and a group's last gate is open in every draw, as in eval."""
    torch.manual_seed(0)
    model, x = randomized(InvertedResidual()).train(), torch.randn(2, 3, 8, 8)
    gated, _ = gated_for(model, x, round_to=4)  # the 8-channel stream: 2 gates; the 24 hidden channels: 6
    gated.train()
    with torch.no_grad():
        gated.logits.fill_(-3.0)  # each gate drawn shut 95 % of the time
    gated.close(1, range(1, 6))  # the hidden group is down to its last gate
    draws = torch.stack([gated.gates().detach() > 0.5 for _ in range(200)]).float()
    for i in range(len(gated.layout.groups)):
        assert (draws[:, gated.slot_range(i)].sum(1) >= 1).all(), f"group {i} drawn shut"
    last = gated.slot_range(1).start
    assert (draws[:, last] == 1).all() and (draws[:, last + 1 : gated.slot_range(1).stop] == 0).all()
    stream = draws[:, gated.slot_range(0)]
    assert 0 < stream.mean() < 1 and (stream.sum(1) == 1).float().mean() > 0.5  # still random: mostly one of two
    # the surviving gate still gets the straight-through gradient, so it can be traded against its cost
    gated.logits.grad = None
    gated(x).square().mean().backward()
    assert gated.logits.grad[gated.slot_range(0)].abs().sum() > 0


# ----------------------------------------------------------------------------- pruning on digits


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


@pytest.fixture(scope="module")
def digits():
    train_set = get_dataset("digits", "train", image_size=8, channels=1)
    test_set = get_dataset("digits", "test", image_size=8, channels=1)
    return make_loader(train_set, 64, shuffle=True, seed=0), make_loader(test_set, 256, shuffle=False)


def test_flops_of_the_converted_model_fall_monotonically_on_digits(digits):
    train_loader, test_loader = digits
    run = TrainConfig(epochs=6, lr=0.1, batch_size=64)
    config = GatingConfig(criteria_weight=0.1, gradient_multiplier=100.0)
    pruned = gate(small_cnn(), train_loader, test_loader, config=config, train_config=run, progress=False)
    ratios = [h["macs_ratio"] for h in pruned.history]
    assert len(ratios) == 6
    assert all(b <= a for a, b in zip(ratios, ratios[1:], strict=False)), ratios
    assert ratios[-1] < 0.9 and len(set(ratios)) >= 3, ratios  # fell, over more than one epoch
    assert pruned.train.last_top1 > 0.3  # still a classifier (chance: 0.1)
    # the ratio is the converted model's: fvcore counts the compacted model's FLOPs
    x = next(iter(test_loader))[0][:1]
    dense = count_flops(pruned.gated.net, x).flops
    compacted = compact_model(build_channel_graph(pruned.gated.net, x), pruned.mask)
    assert count_flops(compacted, x).flops / dense == pytest.approx(ratios[-1], rel=0.02)
    # negative control: without the cost term nothing is pushed shut
    plain = gate(small_cnn(), train_loader, None, config=config.replace(criteria_weight=0.0), train_config=run,
                 progress=False)  # fmt: skip
    assert plain.history[-1]["macs_ratio"] == 1.0


# ----------------------------------------------------------------------------- exact conversion beyond ResNets


@pytest.mark.parametrize(
    "make,x",
    [
        (DenseConcat, torch.randn(2, 3, 8, 8)),
        (InvertedResidual, torch.randn(2, 3, 8, 8)),
        (VitMlp, torch.randn(2, 3, 4, 4)),
    ],
    ids=["densenet-concat", "mobilenet-depthwise", "vit-mlp"],
)
def test_gated_non_resnet_structures_convert_exactly(make, x):
    model = randomized(make())
    gated, objective = gated_for(model, x, criteria_weight=5.0, gradient_multiplier=5.0)
    optimizer = torch.optim.SGD([gated.logits], lr=0.5)  # the gates only: these weights would blow up at lr 0.5
    gated.train()
    for _ in range(20):  # train the gates a little so that the cost term closes some
        optimizer.zero_grad()
        (gated(x).square().mean() * 1e-3 + objective.extra_loss()).backward()
        optimizer.step()
        objective.after_step()
    mask = gates_to_mask(gated)
    assert mask.pruned_groups(), "the cost term closed no gate"
    compacted = compact_model(gated.graph, mask).eval()
    params = sum(p.numel() for p in compacted.parameters())
    assert params < sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        out = gated.eval()(x)
        assert max_rel_diff(compacted(x), out) <= 1e-5
    if make is VitMlp:  # the residual stream meets nn.LayerNorm: exact (zero-padded on compaction), so gated too
        assert not gated.layout.skipped


# ----------------------------------------------------------------------------- configuration


def test_gator_cfg_files_load_and_overrides_are_checked(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"factor_type": "flop_factor", "criteria_weight": 1.0, "gradient_multiplier": 0.2,
                                "gate_init_prob": 0.995, "static_total_cost": 122800.0}))  # fmt: skip
    config = load_config(path)
    assert config.static_total_cost == 122800.0 and config.target is None
    assert config.replace(target=0.5).target == 0.5
    with pytest.raises(HwpruneError, match="target"):
        config.replace(target=1.5)


@pytest.mark.parametrize(
    "text,words",
    [
        ('{"factor_type": "flop_factor", "criteria_wieght": 1.0}', ["unknown field", "criteria_wieght"]),
        ('{"criteria_weight": "1.0"}', ["criteria_weight", "must be a number"]),
        ('{"factor_type": "latency_factor"}', ["factor_type", "flop_factor"]),
        ('{"edge_multipliers": [1.0, "x"]}', ["edge_multipliers[1]", "must be a number"]),
        ('{"gate_init_prob": 1.0}', ["gate_init_prob", "< 1"]),
        ('["factor_type"]', ["must be a mapping"]),
        ('{"criteria_weight": 1.0,', ["not valid JSON"]),
    ],
)
def test_a_bad_gating_config_is_one_clear_error(tmp_path, capsys, text, words):
    from hwprune.prune.gating.cli import main

    path = tmp_path / "cfg.json"
    path.write_text(text)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["--model", "lenet5", "--gating-config", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("hwprune gate: error:")
    assert all(w in err for w in words), err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_per_group_lists_must_name_every_gated_group():
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(HwpruneError, match="3 values, but the model has 1 gated groups"):
        prepare(Tiny(), torch.randn(1, 1, 4, 4), from_mapping({"edge_multipliers": [1.0, 2.0, 3.0]}))
    gated, _ = gated_for(InvertedResidual(), x)
    probs = [0.9 + 0.01 * i for i in range(len(gated.layout.groups))]
    gated, _ = gated_for(InvertedResidual(), x, gate_init_prob=tuple(probs))
    for i, p in enumerate(probs):  # each group's gates start at its own pass probability
        assert torch.allclose(torch.sigmoid(gated.logits[gated.slot_range(i)]), torch.tensor(p))
    with pytest.raises(HwpruneError, match="gate_init_prob has 1 values"):
        gated_for(InvertedResidual(), x, gate_init_prob=(0.9,))


# ----------------------------------------------------------------------------- latency multipliers from a LUT


class TwoKinds(nn.Module):
    """A 3x3 conv group and a pointwise one, so that a per-class time per MAC tells them apart."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.c3 = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        y = self.c3(torch.relu(self.c2(torch.relu(self.c1(x)))))
        return self.head(torch.relu(y).mean((2, 3)))


def save_lut(lut, path):
    lut.meta.update(input_shape=[1, 3, 8, 8], threads=1)  # what a profile records; the file's schema wants it
    lut.save(path)


def test_lut_multipliers_are_gators_latency_over_flops_ratio(tmp_path):
    from hwprune.graph_mapper.cost import CostModel
    from hwprune.latency.model import op_classes
    from tests.test_budget_latency import synthetic_lut

    model, x = TwoKinds(), torch.randn(1, 3, 8, 8)
    graph = build_channel_graph(model, x, "twokinds")
    cm, kinds = CostModel(graph), op_classes(graph)
    per_mac = {"conv": 1e-6, "pointwise": 6e-6, "linear": 2e-6}  # ms per multiply-add

    def latency_of(shares):
        return 0.05 + sum(per_mac[kinds[t]] * e["macs"] * cm.fraction(t, shares) for t, e in cm.tensors.items())

    save_lut(synthetic_lut(graph, latency_of), tmp_path / "lut.json")
    gated, objective = prepare(model, x, GatingConfig(), lut=tmp_path / "lut.json")
    multipliers = objective.cost.multipliers
    assert objective.cost.multiplier_source == f"lut:{tmp_path / 'lut.json'}"
    for group, m in zip(gated.layout.groups, multipliers, strict=True):  # (% latency drop) / (% FLOPs drop)
        latency_drop = 1 - latency_of({group.id: 0.5}) / latency_of({})
        flops_drop = -cm.change({}, group.id, 0.5)[0] / cm.total_macs
        assert m == pytest.approx(latency_drop / flops_drop, rel=1e-4)
    names = [g.name for g in gated.layout.groups]
    assert multipliers[names.index("c2")] > multipliers[names.index("c1")]  # c2 feeds the slow pointwise conv
    with pytest.raises(HwpruneError, match="flop_factor"):
        prepare(model, x, GatingConfig(factor_type="memory_factor"), lut=tmp_path / "lut.json")
    with pytest.raises(HwpruneError, match="not both"):
        prepare(model, x, GatingConfig(edge_multipliers=(1.0, 1.0, 1.0)), lut=tmp_path / "lut.json")
    other = build_channel_graph(InvertedResidual(), torch.randn(1, 3, 8, 8))
    save_lut(synthetic_lut(other, lambda shares: 1.0 - 0.1 * sum(1 - v for v in shares.values())), tmp_path / "o.json")
    with pytest.raises(HwpruneError, match="profile again"):
        prepare(model, x, GatingConfig(), lut=tmp_path / "o.json")


# ----------------------------------------------------------------------------- trainer: gradient accumulation


def test_subdivision_accumulates_the_batch_gradient():
    data = get_dataset("digits", "train", image_size=8, channels=1)

    class Parts(Objective):
        def __init__(self, k):
            self.subdivision = k

    def mlp():
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))

    run = TrainConfig(epochs=1, lr=0.1, momentum=0.0, weight_decay=0.0, batch_size=64)
    one, four = mlp(), mlp()
    train(one, make_loader(data, 64, shuffle=True, seed=0), None, run)
    train(four, make_loader(data, 64, shuffle=True, seed=0), None, run, objective=Parts(4))
    for a, b in zip(one.parameters(), four.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(one[1].weight, mlp()[1].weight)  # it trained


# ----------------------------------------------------------------------------- the command


@pytest.mark.onnx
def test_gate_command_ships_a_verified_model_and_records_its_settings(tmp_path, capsys):
    from hwprune.prune.gating.cli import main
    from hwprune.results import ResultsStore

    results = tmp_path / "results.csv"
    argv = ["--model", "resnet20", "--data", "digits", "--image-size", "8", "--epochs", "1", "--batch-size", "128",
            "--criteria-weight", "0.1", "--gradient-multiplier", "5000", "--target", "0.9", "--no-latency",
            "--no-progress", "--out", str(tmp_path / "out"), "--results", str(results)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "compacted and verified" in out
    [record] = ResultsStore(results).records()
    assert record.method == "gator-flops" and record.dataset == "digits" and record.target_value == 0.9
    settings = record.extra_dict()["gating"]
    assert settings["criteria_weight"] == 0.1 and settings["multiplier_source"] == "none"
    assert record.extra_dict()["max_rel_diff"] <= 1e-4
    assert record.flops < record.flops_before
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"mask.json", "model.onnx", "gating.json"}
    assert math.isfinite(json.loads((tmp_path / "out/gating.json").read_text())["history"][-1]["cost_ratio"])


# ----------------------------------------------------------------------------- data-parallel

DDP_SCRIPT = r"""
import json, os, sys
import torch
from torch import nn
from safetensors.torch import save_file
torch.set_num_threads(1)
from hwprune.data import get_dataset
from hwprune.prune.gating import GatingConfig
from hwprune.prune.gating.run import prepare
from hwprune.train import TrainConfig, train_ddp

out, rank = sys.argv[1], int(os.environ["RANK"])
torch.manual_seed(rank)  # different initial weights per rank: DDP must broadcast rank 0's
model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                      nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
train_set, test_set = get_dataset("digits", "train"), get_dataset("digits", "test")
config = GatingConfig(criteria_weight=0.1, gradient_multiplier=3000)
gated, objective = prepare(model, train_set[0][0][None], config)
result = train_ddp(gated, train_set, test_set, TrainConfig(epochs=2, batch_size=64, lr=0.1), objective=objective)
save_file({k: v.contiguous() for k, v in gated.state_dict().items()}, f"{out}/rank{rank}.safetensors")
json.dump({"history": objective.history, "top1": result.last_top1}, open(f"{out}/result{rank}.json", "w"))
"""


@pytest.mark.slow
@serial
def test_gating_under_ddp_ranks_end_identical(tmp_path):
    from safetensors.numpy import load_file

    run_on_two_ranks(DDP_SCRIPT, tmp_path, str(tmp_path))
    r0, r1 = (load_file(tmp_path / f"rank{r}.safetensors") for r in (0, 1))
    assert r0.keys() == r1.keys() and "active" in r0 and "logits" in r0
    for name in r0:  # weights, gate logits, active gates and BatchNorm buffers alike
        np.testing.assert_array_equal(r0[name], r1[name], err_msg=name)
    assert not r0["active"].all()  # the cost term closed gates
    res0, res1 = (json.loads((tmp_path / f"result{r}.json").read_text()) for r in (0, 1))
    assert res0 == res1 and res0["history"][-1]["macs_ratio"] < 1.0
