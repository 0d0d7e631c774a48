"""Issue 17: runs are marked collapsed / untrainable / ok, a random mask at density 0.2 trains on digits,
the default sweep model has batch norm, and the CSR execution path computes what the dense one does."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from hwprune.at_init.status import chance_ceiling, log10_paths, run_status, sign_purity
from hwprune.at_init.sweep import run_sweep
from hwprune.models import get_model
from hwprune.models.init import reference_init
from hwprune.models.sparse_csr import CsrConv2d, CsrLinear, to_sparse_csr
from hwprune.prune.masks import WeightMask
from hwprune.prune.weight_masking import detect_collapse, prune_weights
from hwprune.train import TrainConfig

torch.set_num_threads(1)


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def test_path_count_is_exact_and_sees_collapse_that_no_empty_layer_shows():
    net = _mlp()
    assert log10_paths(net, WeightMask({}), (3,)) == pytest.approx(math.log10(3 * 4 * 2))
    # layer 0 feeds only unit 0, layer 2 reads only unit 1: both layers keep weights, no path is left
    first = np.zeros((4, 3), bool)
    first[0] = True
    second = np.zeros((2, 4), bool)
    second[:, 1] = True
    mask = WeightMask({"0.weight": first, "2.weight": second})
    assert detect_collapse(mask) == []
    assert log10_paths(net, mask, (3,)) == -math.inf
    second[:, 0] = True  # now unit 0 carries 3 inputs to 2 outputs
    assert log10_paths(net, WeightMask({"0.weight": first, "2.weight": second}), (3,)) == pytest.approx(math.log10(6))


def test_path_count_ignores_batch_norm_statistics_and_refuses_unknown_layers():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 2 * 2, 1))
    with torch.no_grad():
        net[1].running_mean.fill_(5.0)  # would zero every unit through the ReLU if it were applied
    assert log10_paths(net, WeightMask({}), (1, 4, 4)) == pytest.approx(math.log10(9 * 8))
    assert log10_paths(nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3)), WeightMask({}), (3,)) is None


def test_status_rules():
    ceiling = chance_ceiling(10, 360)
    assert ceiling == pytest.approx(0.1 + 3 * math.sqrt(0.09 / 360))
    assert run_status(True, 0.97, 10, 360) == "collapsed"
    assert run_status(False, ceiling, 10, 360) == "untrainable"
    assert run_status(False, ceiling + 0.01, 10, 360) == "ok"
    assert run_status(False, None, 10, 360) == "ok"


def test_reference_init_is_kaiming_normal_with_zero_biases():
    torch.manual_seed(0)
    net = reference_init(get_model("vgg11_slim", num_classes=10, in_channels=3, input_size=32))
    conv = [m for m in net.modules() if isinstance(m, nn.Conv2d)][-1]  # 32 x 32 x 3 x 3
    fan_in = conv.weight[0].numel()
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.05)
    assert all(float(m.bias.detach().abs().max()) == 0 for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def _digits_rand_run(tmp_path, init):
    [record] = run_sweep(
        "lenet5",
        "digits",
        ["rand"],
        [5],
        seeds=[0],
        epochs=15,
        train_config=TrainConfig(lr=0.05, batch_size=64),
        image_size=28,
        channels=1,
        init=init,
        results_path=tmp_path / f"{init}.csv",
        progress=False,
    )
    return record, record.extra_dict()


def test_random_mask_at_density_02_trains_well_above_chance_on_digits(tmp_path):
    record, extra = _digits_rand_run(tmp_path, "reference")
    assert record.density == pytest.approx(0.2, abs=0.01)
    assert extra["status"] == "ok" and record.accuracy_top1 > 0.8
    assert extra["train_loss"][-1] < 0.5 * extra["train_loss"][0]
    # negative control, the bug of issue 17: PyTorch's default init leaves the loss on ln(10), at chance
    record, extra = _digits_rand_run(tmp_path, "model")
    assert extra["status"] == "untrainable" and not extra["collapsed"] and extra["paths_log10"] > 6
    assert min(extra["train_loss"]) > math.log(10) - 0.05


@pytest.mark.parametrize("name", ["lenet5", "vgg11_slim"])
def test_csr_model_computes_the_masked_model(name):
    torch.manual_seed(0)
    channels, size = (1, 28) if name == "lenet5" else (3, 32)
    net = get_model(name, num_classes=10, in_channels=channels, input_size=size)
    prune_weights(net, "rand", None, 0.1, seed=0).apply(net)
    net.eval()
    sparse = to_sparse_csr(net)
    replaced = [m for m in sparse.modules() if isinstance(m, (CsrConv2d, CsrLinear))]
    assert len(replaced) == sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in net.modules())
    assert all(m.weight.layout == torch.sparse_csr for m in replaced)
    assert replaced[0].weight.values().numel() < 0.2 * replaced[0].weight.to_dense().numel()
    x = torch.randn(5, channels, size, size)
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), net(x), rtol=1e-4, atol=1e-5)


def test_csr_conv_strides_padding_dilation_and_grouped_conv_left_dense():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, stride=2, padding=2, dilation=2),
        nn.Conv2d(6, 6, 3, groups=3),
        nn.Conv2d(6, 4, (1, 3), padding=(0, 1), bias=False),
    ).eval()
    sparse = to_sparse_csr(net)
    assert [type(m) for m in sparse] == [CsrConv2d, nn.Conv2d, CsrConv2d]
    x = torch.randn(2, 3, 11, 9)
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), net(x), rtol=1e-4, atol=1e-5)


def test_sweep_rows_carry_status_paths_curves_and_both_testing_times(tmp_path):
    records = run_sweep(
        "vgg11_slim",
        "digits",
        ["rand", "synflow"],
        [10],
        seeds=[0],
        epochs=1,
        train_config=TrainConfig(batch_size=128),
        image_size=32,
        channels=3,
        synflow_rounds=5,
        sparse_eval=True,
        results_path=tmp_path / "r.csv",
        progress=False,
    )
    for r in records:
        extra = r.extra_dict()
        assert extra["status"] in ("ok", "untrainable") and extra["paths_log10"] > 0
        assert len(extra["train_loss"]) == len(extra["test_top1_curve"]) == 1
        assert extra["testing_seconds_dense"] > 0 and extra["testing_seconds_csr"] > 0
        assert extra["csr_max_abs_diff"] < 1e-4
        assert extra["status"] in r.notes


def test_default_sweep_model_has_batch_norm_at_cifar_shape(monkeypatch, tmp_path):
    import hwprune.at_init.cli as cli

    seen = {}
    monkeypatch.setattr(cli, "run_sweep", lambda *a, **kw: seen.update(model=a[0], **kw) or [])
    assert cli.main(["--results", str(tmp_path / "r.csv"), "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    assert (seen["image_size"], seen["channels"], seen["init"]) == (32, 3, "reference")
    net = get_model(seen["model"], num_classes=10, in_channels=3, input_size=32)
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert seen["sparse_eval"] is False and seen["prune_train_mode"] is False
    argv = ["--sparse-eval", "--init", "model", "--results", str(tmp_path / "r.csv"), "--out", str(tmp_path / "o")]
    assert cli.main([*argv, "--prune-train-mode", "--no-progress"]) == 0
    assert seen["sparse_eval"] is True and seen["init"] == "model" and seen["prune_train_mode"] is True


def test_prune_train_mode_reaches_snip_and_grasp_only():
    from hwprune.at_init.sweep import scorer_options

    assert scorer_options("grasp", 0, train_mode=True)["train_mode"] is True
    assert scorer_options("snip", 0)["train_mode"] is False
    assert "train_mode" not in scorer_options("synflow", 0, train_mode=True)
    assert scorer_options("gcs", 0, train_mode=False)["train_mode"] is True  # gcs_train_mode governs the GCS family


def test_sign_purity_by_hand_and_its_one_signed_control():
    net = nn.Sequential(nn.Linear(3, 3))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 2.0, -3.0], [1.0, 1.0, 1.0], [-1.0, 5.0, 7.0]]))
    every = np.ones((3, 3), bool)
    # units: 2 of 3 positive -> |2*2/3 - 1| = 1/3; all positive -> 1; 2 of 3 positive -> 1/3
    assert sign_purity(net, WeightMask({"0.weight": every})) == pytest.approx((1 / 3 + 1 + 1 / 3) / 3)
    one_signed = net[0].weight.detach().numpy() > 0  # keeps the positive weights only
    assert sign_purity(net, WeightMask({"0.weight": one_signed})) == pytest.approx(1.0)
    lone = np.zeros((3, 3), bool)
    lone[:, 0] = True  # one kept weight per unit: no sign balance to speak of
    assert sign_purity(net, WeightMask({"0.weight": lone})) is None


def test_shuffled_mask_keeps_each_tensors_count_and_moves_the_positions():
    rng = np.random.default_rng(0)
    mask = WeightMask({"a": rng.random((8, 9)) < 0.3, "b": rng.random((5, 4, 3, 3)) < 0.1}, "m", {"density": 0.2})
    again, other = mask.shuffled(1), mask.shuffled(2)
    for name, keep in mask.keep.items():
        assert again.keep[name].shape == keep.shape and again.keep[name].sum() == keep.sum()
        assert np.array_equal(again.keep[name], mask.shuffled(1).keep[name])
    assert any(not np.array_equal(again.keep[n], mask.keep[n]) for n in mask.keep)
    assert any(not np.array_equal(again.keep[n], other.keep[n]) for n in mask.keep)
    assert again.meta == {"density": 0.2, "shuffled_seed": 1}


def test_sweep_shuffle_control_keeps_layer_densities_and_discards_magnitude_order(tmp_path):
    runs = {}
    for shuffle in (False, True):
        [record] = run_sweep(
            "vgg11_slim",
            "digits",
            ["mag"],
            [10],
            seeds=[0],
            epochs=1,
            train_config=TrainConfig(batch_size=128),
            image_size=32,
            channels=3,
            shuffle_mask=shuffle,
            results_path=tmp_path / "r.csv",
            out_dir=tmp_path,
            progress=False,
        )
        runs[shuffle] = record.extra_dict()
        assert runs[shuffle]["shuffled"] is shuffle and 0 <= runs[shuffle]["sign_purity_at_init"] <= 1
    assert runs[True]["layer_kept"] == runs[False]["layer_kept"]
    torch.manual_seed(0)
    weights = dict(
        reference_init(get_model("vgg11_slim", num_classes=10, in_channels=3, input_size=32)).named_parameters()
    )

    def smallest_kept_over_largest_pruned(path) -> float:
        keep = WeightMask.load(path).keep
        kept = torch.cat([weights[n].detach().abs()[torch.as_tensor(k)] for n, k in keep.items()])
        pruned = torch.cat([weights[n].detach().abs()[~torch.as_tensor(k)] for n, k in keep.items()])
        return float(kept.min() / pruned.max())

    # magnitude keeps the globally largest weights; its shuffle keeps some smaller than some it dropped
    assert smallest_kept_over_largest_pruned(tmp_path / "vgg11_slim_digits_mag_ratio10_s0.mask.json") >= 1.0
    assert smallest_kept_over_largest_pruned(next(tmp_path.glob("*_shuffled.mask.json"))) < 1.0
