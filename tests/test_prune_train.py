"""Prune+train rounds: compaction between rounds, momentum carried exactly, resume, tracked importance."""

import numpy as np
import pytest
import torch
from torch import nn

from hwprune.data import get_dataset, make_loader
from hwprune.errors import HwpruneError
from hwprune.graph_mapper import build_channel_graph
from hwprune.prune.importance import CHANNEL_IMPORTANCES
from hwprune.prune.masks import ChannelMask
from hwprune.workflow import ModelInput
from hwprune.workflow.prune_train import (
    PruneTrainConfig,
    compact_with_momentum,
    prune_train,
    tracked_importance,
)


def digits(split, shuffle=False):
    return make_loader(get_dataset("digits", split, image_size=16, channels=1), 64, shuffle=shuffle, seed=0)


def resnet20():
    job = ModelInput.build("resnet20", input_size=16, num_classes=10, in_channels=1)
    return job.model, job.example


FAST = dict(importance="l1", prune_percent=50, n_rounds=2, lr=0.05, lr_prune=0.05, preserve_moment=True)


def test_two_rounds_compact_between_rounds_and_training_recovers_accuracy():
    model, x = resnet20()
    dense_params = sum(p.numel() for p in model.parameters())
    result = prune_train(model, x, digits("train", True), digits("test"), PruneTrainConfig(**FAST, final_epochs=1))
    total = result.rounds[0]["of"]
    assert [r["kept_channels"] for r in result.rounds] == [round(total * 0.75), round(total * 0.5)]
    params = [r["params"] for r in result.rounds]
    assert dense_params > params[0] > params[1] == result.params  # physically smaller after every round
    assert sum(p.numel() for p in model.parameters()) == dense_params  # the user's module is untouched
    graph = build_channel_graph(model, x, "m")
    kept = sum(int(k.sum()) for gid, k in result.mask.keep.items() if graph.group(gid).prunable)
    assert kept == result.rounds[-1]["kept_channels"]
    untrained = prune_train(
        model, x, digits("train", True), digits("test"), PruneTrainConfig(**{**FAST, "epochs_per_round": 0})
    )
    test = digits("test")
    assert accuracy(result.model, test) > accuracy(untrained.model, test) + 0.2  # training between rounds pays
    assert result.stats["final"][0]["test_top1"] == pytest.approx(accuracy(result.model, test))


def accuracy(model, loader):
    model.eval()
    with torch.no_grad():
        return sum(int((model(a).argmax(1) == b).sum()) for a, b in loader) / len(loader.dataset)


def test_momentum_of_kept_channels_is_carried_value_for_value():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
    x = torch.randn(2, 3, 10, 10)
    graph = build_channel_graph(net, x, "net")
    [group] = graph.prunable_groups
    cfg = PruneTrainConfig(**{**FAST, "preserve_moment": True})
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net.train()
    for _ in range(2):  # momentum buffers with informative values
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()
    mask = ChannelMask.full(graph)
    mask.keep[group.id] = np.array([1, 0, 1, 1, 0, 0, 1, 1], dtype=bool)
    k = torch.from_numpy(mask.keep[group.id])
    small, new_opt = compact_with_momentum(net, graph, mask, opt, 0.1, cfg)
    old = {n: opt.state[p]["momentum_buffer"] for n, p in net.named_parameters()}
    new = {n: new_opt.state[p]["momentum_buffer"] for n, p in small.named_parameters()}
    assert torch.equal(new["0.weight"], old["0.weight"][k])  # producer rows
    assert torch.equal(new["1.weight"], old["1.weight"][k]) and torch.equal(new["1.bias"], old["1.bias"][k])
    assert torch.equal(new["3.weight"], old["3.weight"][:, k])  # consumer columns
    assert torch.equal(new["3.bias"], old["3.bias"])  # untouched tensor, untouched momentum
    _, fresh = compact_with_momentum(net, graph, mask, opt, 0.1, PruneTrainConfig(**{**FAST, "preserve_moment": False}))
    assert not fresh.state  # negative control: without the option the new optimizer starts from zero


def test_a_killed_run_resumes_from_its_last_round_and_ends_where_an_uninterrupted_one_does(tmp_path):
    model, x = resnet20()
    cfg = PruneTrainConfig(**{**FAST, "n_rounds": 3, "prune_percent": 60})
    whole = prune_train(model, x, digits("train"), None, cfg)

    class Killed(Exception):
        pass

    def kill_after_first(r, _model):
        if r == 0:
            raise Killed

    with pytest.raises(Killed):
        prune_train(model, x, digits("train"), None, cfg, out=tmp_path, on_round=kill_after_first)
    rounds_seen = []
    resumed = prune_train(
        model, x, digits("train"), None, cfg, out=tmp_path, on_round=lambda r, m: rounds_seen.append(r)
    )
    assert rounds_seen == [1, 2]  # round 0 was not redone
    assert [r["kept_channels"] for r in resumed.rounds] == [r["kept_channels"] for r in whole.rounds]
    for (name, a), (_, b) in zip(whole.model.state_dict().items(), resumed.model.state_dict().items(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), name
    with pytest.raises(HwpruneError, match="other settings"):
        prune_train(model, x, digits("train"), None, PruneTrainConfig(**{**FAST, "n_rounds": 3}), out=tmp_path)


def test_tracked_importance_is_the_exponential_average_of_per_batch_scores():
    model, x = resnet20()
    graph = build_channel_graph(model, x, "m")
    batches = [b for _, b in zip(range(3), digits("train"), strict=False)]
    got = tracked_importance(model, graph, batches, "taylor", alpha=0.8)
    scorer = CHANNEL_IMPORTANCES.get("taylor")
    s = [scorer(model, graph, [b]) for b in batches]
    for gid in got:
        want = 0.8 * (0.8 * s[0][gid] + 0.2 * s[1][gid]) + 0.2 * s[2][gid]
        np.testing.assert_allclose(got[gid], want, rtol=1e-6)
    assert any(not np.allclose(s[0][g], s[2][g]) for g in got)  # the batches differ: the average is informative


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"thresholds": [10, 50]}, "cumulative percents"),
        ({"thresholds": [50, 10, 80]}, "non-decreasing"),
        ({"prune_percent": 100}, "--prune-percent"),
        ({"importance": "l11"}, "did you mean"),
        ({"alpha": 1.0}, "--alpha"),
        ({"schedule": "linear"}, "--schedule"),
        ({"flops": 0.0}, "--flops"),
        ({"flops": 0.5, "thresholds": [10, 20, 30]}, "--thresholds are channel percents"),
        ({"normalise": "max"}, "--normalise"),
        ({"round_to": 0}, "--round-to"),
        ({"round_to": 2.5}, "--round-to"),
        ({"distill": -1.0}, "--distill"),
        ({"bn_samples": -1}, "--bn-samples"),
    ],
)
def test_bad_settings_are_one_clear_error(options, message):
    with pytest.raises(HwpruneError, match=message):
        PruneTrainConfig(**{**FAST, "n_rounds": 3, **options}).validate()


def test_prune_train_command_ships_verified_onnx_and_a_results_row(tmp_path, capsys):
    import json

    from hwprune.cli import main
    from hwprune.results import ResultsStore

    argv = ["prune-train", "--model", "resnet20", "--input-size", "16", "--in-channels", "1", "--lr", "0.05"]
    argv += ["--prune-percent", "50", "--n-rounds", "2", "--lr-prune", "0.05", "--final-epochs", "1"]
    argv += ["--out", str(tmp_path / "run"), "--results", str(tmp_path / "r.csv"), "--track-stats"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| 1 | 50.0 |" in out and "ONNX of the pruned model" in out and "| final |" in out
    [row] = ResultsStore(tmp_path / "r.csv").records()
    assert row.method == "prune-train:mag_based" and row.params < row.params_before
    assert row.accuracy_top1 == json.loads(row.extra)["stats"]["final"][-1]["test_top1"]
    assert (tmp_path / "run" / "resnet20_pruned.onnx").stat().st_size > 0
    assert main([*argv[:-5], "--thresholds", "[10, 200]", "--out", str(tmp_path / "bad")]) == 2
    assert "--thresholds" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_cosine_schedule_decays_over_all_pruning_epochs_and_the_constant_one_is_the_seeds():
    model, x = resnet20()
    cfg = PruneTrainConfig(**{**FAST, "n_rounds": 2, "epochs_per_round": 2, "final_epochs": 2, "lr": 0.04})
    result = prune_train(model, x, digits("train"), None, cfg)
    lrs = [e["lr"] for e in result.stats["pruning"]]
    # four pruning epochs, one cosine from lr_prune: 0.05 * (1 + cos(pi * e / 4)) / 2
    np.testing.assert_allclose(lrs, [0.05, 0.05 * (1 + 2**-0.5) / 2, 0.025, 0.05 * (1 - 2**-0.5) / 2], rtol=1e-9)
    np.testing.assert_allclose([e["lr"] for e in result.stats["final"]], [0.04, 0.02], rtol=1e-9)
    seed = prune_train(model, x, digits("train"), None, PruneTrainConfig(**{**FAST, "schedule": "constant"}))
    assert [e["lr"] for e in seed.stats["pruning"]] == [0.05, 0.05]


def test_batchnorm_statistics_are_re_estimated_after_each_compaction():
    """With no training in the rounds, the result's BN statistics are those of the first bn_samples examples."""
    from hwprune.export.compact import compact_model
    from hwprune.workflow.recovery import recalibrate_batchnorm

    model, x = resnet20()
    with torch.no_grad():  # informative dense statistics, far from what the pruned net sees
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-3, 3)
                m.running_var.uniform_(5, 9)
    cfg = dict(FAST, n_rounds=1, epochs_per_round=0, bn_samples=128)
    result = prune_train(model, x, digits("train"), digits("test"), PruneTrainConfig(**cfg))
    want = compact_model(build_channel_graph(model, x, "m"), result.mask)
    recalibrate_batchnorm(want, digits("train"), 128)
    got, kept_dense = result.model.state_dict(), compact_model(build_channel_graph(model, x, "m"), result.mask)
    stats = [k for k in got if k.endswith(("running_mean", "running_var"))]
    assert stats
    for key in stats:
        torch.testing.assert_close(got[key], want.state_dict()[key], rtol=1e-5, atol=1e-6)
    assert result.rounds[0]["test_top1_after_bn"] == pytest.approx(accuracy(result.model, digits("test")))
    stale = prune_train(model, x, digits("train"), None, PruneTrainConfig(**{**cfg, "bn_samples": 0}))
    for key in stats:  # negative control: without re-estimation the dense statistics are kept (sliced)
        torch.testing.assert_close(stale.model.state_dict()[key], kept_dense.state_dict()[key])
        assert not torch.allclose(stale.model.state_dict()[key], got[key], atol=1e-3)


def test_a_flops_budget_is_reached_over_the_rounds():
    from hwprune.graph_mapper import build_channel_graph
    from hwprune.graph_mapper.flops import count_flops
    from hwprune.prune.channel import COUNTED_MIN_STEPS, unit_of

    model, x = resnet20()
    cfg = PruneTrainConfig(**{**FAST, "flops": 0.4, "n_rounds": 2, "epochs_per_round": 0})
    result = prune_train(model, x, digits("train"), None, cfg)
    ratios = [r["flops_ratio"] for r in result.rounds]
    assert [cfg.round_flops(r) for r in (0, 1)] == pytest.approx([0.4**0.5, 0.4])  # geometric: same share per round
    assert ratios[0] <= 0.4**0.5 + 1e-9 and ratios[0] > 0.4**0.5 - 0.03
    assert ratios[1] <= 0.4 + 1e-9 and ratios[1] > 0.37
    kept = {gid: int(keep.sum()) for gid, keep in result.mask.keep.items()}  # aligned: 16, halved in small groups
    graph = build_channel_graph(model, x, "resnet20")
    assert all(n % unit_of(graph.groups[gid], 16, COUNTED_MIN_STEPS) == 0 for gid, n in kept.items())
    counted = count_flops(result.model, x).flops / count_flops(model, x).flops  # an independent counter agrees
    assert counted == pytest.approx(ratios[1], abs=0.02)


def test_distillation_adds_the_soft_target_term_to_every_epochs_loss():
    """The term itself is checked by hand in tests/test_distill.py (the same ``Distillation`` objective)."""
    model, ex = resnet20()
    plain = prune_train(model, ex, digits("train"), None, PruneTrainConfig(**FAST))
    distilled = prune_train(model, ex, digits("train"), None, PruneTrainConfig(**FAST, distill=1.0))
    assert distilled.stats["pruning"][0]["loss"] > plain.stats["pruning"][0]["loss"]  # the extra term is in the loss


def test_a_flops_prune_train_row_is_a_budget_row_with_dense_and_pruned_top1(tmp_path):
    import hwprune
    from hwprune.results import ResultsStore
    from hwprune.results.budget_runs import budget_rows

    model, x = resnet20()
    options = dict(importance="l1", flops=0.5, n_rounds=1, lr=0.05, lr_prune=0.05)
    result = hwprune.prune_train(model, x, digits("train", True), digits("test"), results=tmp_path / "r.csv", **options)
    [row] = budget_rows(ResultsStore(tmp_path / "r.csv").records())  # what `hwprune compare` tabulates
    assert row.target_kind == "flops" and row.target == 0.5 and row.status == "met"
    assert row.top1_dense == pytest.approx(accuracy(model, digits("test")))
    assert row.top1 == result.final_top1() and row.flops_ratio == pytest.approx(0.5, abs=0.03)
