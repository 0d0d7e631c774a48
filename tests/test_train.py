"""hwprune.train on CPU: learning on digits, masks held through SGD, checkpoints, schedules, options."""

import argparse
import contextlib
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from hwprune.data import get_dataset, make_loader
from hwprune.errors import HwpruneError, MaskMismatchError
from hwprune.graph_mapper import build_channel_graph
from hwprune.prune.masks import ChannelMask, WeightMask
from hwprune.train import (
    MaskEnforcer,
    TrainConfig,
    add_train_args,
    channel_to_weight_mask,
    config_from_args,
    evaluate,
    finetune,
    load_checkpoint,
    load_mask,
    lr_at,
    read_sidecar,
    save_checkpoint,
    train,
)
from hwprune.train.runtime import resolve_device

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits():
    train_set = get_dataset("digits", "train", image_size=8, channels=1)
    test_set = get_dataset("digits", "test", image_size=8, channels=1)
    return make_loader(train_set, 64, shuffle=True, seed=0), make_loader(test_set, 256, shuffle=False)


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def convnet():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(128, 10),
    )


def random_mask(model, density=0.5, seed=0):
    rng = np.random.default_rng(seed)
    keep = {
        n: rng.random(p.shape) < density for n, p in model.named_parameters() if n.endswith("weight") and p.ndim > 1
    }
    return WeightMask(keep, model="test")


def test_mlp_learns_digits(digits):
    train_loader, test_loader = digits
    result = train(mlp(), train_loader, test_loader, TrainConfig(epochs=3, lr=0.1, batch_size=64))
    assert len(result.history) == 3
    assert result.last_top1 > 0.8  # chance is 0.1
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert 0 <= result.best_top1 <= result.best_top5 <= 1
    assert result.best_top1 >= result.last_top1
    assert result.record_fields() == {"accuracy_top1": result.last_top1, "accuracy_top5": result.last_top5}
    assert result.seconds >= result.train_seconds + result.eval_seconds > 0


def test_weight_mask_holds_through_momentum_and_weight_decay(digits):
    train_loader, test_loader = digits
    model = convnet()
    mask = random_mask(model, density=0.4)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = TrainConfig(epochs=2, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01, eval_every=2)
    result = train(model, train_loader, test_loader, config, weight_mask=mask)
    params = dict(model.named_parameters())
    for name, keep in mask.keep.items():
        w = params[name].detach().numpy()
        assert (w[~keep] == 0).all(), name
        assert not np.array_equal(w[keep], before[name].numpy()[keep]), f"{name} did not train"
    assert result.mask_violations == 0
    assert result.history[0].test_top1 is None and result.history[1].test_top1 is not None
    assert result.last_top1 > 0.5


def test_mask_applied_once_is_revived_without_enforcement(digits):
    """The control: zeroing once before plain SGD does not keep weights pruned."""
    train_loader, _ = digits
    model = convnet()
    mask = random_mask(model, density=0.3)
    mask.apply(model)
    train(model, train_loader, None, TrainConfig(epochs=1, lr=0.1, weight_decay=0.05))
    w = dict(model.named_parameters())["0.weight"].detach().numpy()
    assert (w[~mask.keep["0.weight"]] != 0).any()


def test_channel_mask_holds(digits):
    train_loader, test_loader = digits
    model = convnet()
    graph = build_channel_graph(model, torch.randn(1, 1, 8, 8))
    group = next(g for g in graph.prunable_groups if g.size == 8)
    keep = np.ones(8, dtype=bool)
    keep[[1, 4, 6]] = False
    cmask = ChannelMask({group.id: keep}, model="convnet", fingerprint=graph.fingerprint())
    wmask = channel_to_weight_mask(model, graph, cmask)
    assert wmask.keep and all(not k.all() for k in wmask.keep.values())
    result = train(model, train_loader, test_loader, TrainConfig(epochs=1, lr=0.05), channel_mask=cmask)
    params = dict(model.named_parameters())
    for name, k in wmask.keep.items():
        assert (params[name].detach().numpy()[~k] == 0).all(), name
    assert result.mask_violations == 0


def test_mask_for_another_model_is_refused(digits):
    train_loader, _ = digits
    bad = WeightMask({"nope.weight": np.ones((2, 2), dtype=bool)})
    with pytest.raises(MaskMismatchError):
        train(mlp(), train_loader, None, TrainConfig(epochs=1), weight_mask=bad)


def test_checkpoints_round_trip(digits, tmp_path):
    train_loader, test_loader = digits
    model = convnet()
    config = TrainConfig(epochs=2, lr=0.05, checkpoint_dir=str(tmp_path / "ckpt"), log_dir=str(tmp_path / "log"))
    with pytest.warns(UserWarning, match="tensorboard") if not _has_tensorboard() else contextlib.nullcontext():
        result = train(model, train_loader, test_loader, config, weight_mask=random_mask(model))
    for name in ("first", "best", "last"):
        assert (tmp_path / "ckpt" / f"{name}.safetensors").exists()
        assert (tmp_path / "ckpt" / f"{name}.json").exists()
        assert result.checkpoints[name] == str(tmp_path / "ckpt" / f"{name}.safetensors")
    assert not list((tmp_path / "ckpt").glob(".*tmp"))
    meta = read_sidecar(tmp_path / "ckpt" / "last")
    assert meta["epoch"] == 2 and meta["config"]["lr"] == 0.05
    assert meta["accuracy_top1"] == pytest.approx(result.last_top1)
    assert read_sidecar(tmp_path / "ckpt" / "first")["epoch"] == 0
    best = read_sidecar(tmp_path / "ckpt" / "best")
    assert best["epoch"] == result.best_epoch and best["accuracy_top1"] == pytest.approx(result.best_top1)

    fresh = convnet()
    torch.manual_seed(1)
    for p in fresh.parameters():
        nn.init.normal_(p)
    meta = load_checkpoint(fresh, tmp_path / "ckpt" / "last.safetensors")
    assert meta["name"] == "last"
    model.eval(), fresh.eval()
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(model(x), fresh(x))
    for (n, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), n

    lines = (tmp_path / "log" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def test_load_checkpoint_refuses_wrong_model_and_missing_file(tmp_path):
    save_checkpoint(mlp(), tmp_path / "m", {"epoch": 0})
    with pytest.raises(HwpruneError, match="does not fit"):
        load_checkpoint(convnet(), tmp_path / "m")
    with pytest.raises(HwpruneError, match="does not exist"):
        load_checkpoint(mlp(), tmp_path / "absent")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(HwpruneError, match="cannot read"):
        load_checkpoint(mlp(), tmp_path / "junk")


def test_evaluate(digits):
    _, test_loader = digits
    top1, top5, loss, seconds = evaluate(mlp(), test_loader, "cpu")
    assert 0 <= top1 <= top5 <= 1
    assert math.isfinite(loss) and seconds >= 0


def test_finetune_defaults_to_small_lr(digits):
    train_loader, _ = digits
    result = finetune(mlp(), train_loader, None, epochs=1)
    assert result.history[0].lr == pytest.approx(0.01)


def test_cosine_schedule():
    c = TrainConfig(epochs=10, lr=0.1, schedule="cosine")
    assert lr_at(c, 0) == pytest.approx(0.1)
    assert lr_at(c, 5) == pytest.approx(0.05)
    assert lr_at(c, 9) == pytest.approx(0.05 * (1 + math.cos(math.pi * 0.9)))
    w = TrainConfig(epochs=10, lr=0.1, warmup_epochs=2)
    assert [lr_at(w, e) for e in (0, 1, 2)] == pytest.approx([0.05, 0.1, 0.1])
    assert lr_at(w, 6) == pytest.approx(0.05)


def test_step_schedule():
    s = TrainConfig(epochs=160, lr=0.1, schedule="step", milestones=(80, 120))  # prune+train's [80, 40, 40]
    assert [lr_at(s, e) for e in (0, 79, 80, 119, 120, 159)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    preset = TrainConfig(epochs=100, lr=0.1, schedule="preset")  # milestones at 50 % and 75 %
    assert preset.schedule == "step"
    assert [lr_at(preset, e) for e in (49, 50, 74, 75)] == pytest.approx([0.1, 0.01, 0.01, 0.001])


def test_config_refuses_bad_values():
    with pytest.raises(HwpruneError, match="schedule"):
        TrainConfig(schedule="linear")
    with pytest.raises(HwpruneError, match="device"):
        TrainConfig(device="tpu")
    with pytest.raises(HwpruneError, match="no field"):
        TrainConfig().replace(learning_rate=1)


def test_cli_args_build_config():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=7)  # a parser that already has --seed keeps it
    add_train_args(parser)
    args = parser.parse_args(
        "--epochs 3 --batch-size 32 --lr 0.05 --momentum 0.8 --weight-decay 1e-4 --schedule preset "
        "--milestones 1,2 --device cpu --mask m.json --save-mask s.json --checkpoint-dir c --log-dir l".split()
    )
    config = config_from_args(args)
    assert (config.epochs, config.batch_size, config.lr, config.momentum) == (3, 32, 0.05, 0.8)
    assert (config.weight_decay, config.schedule, config.milestones) == (1e-4, "step", (1, 2))
    assert (config.checkpoint_dir, config.log_dir, config.seed) == ("c", "l", 7)
    assert (args.mask, args.save_mask) == ("m.json", "s.json")
    with pytest.raises(SystemExit):
        parser.parse_args(["--milestones", "a,b"])


def test_load_mask_either_kind(tmp_path):
    WeightMask({"1.weight": np.ones((32, 64), dtype=bool)}).save(tmp_path / "w.json")
    ChannelMask({0: np.array([True, False])}).save(tmp_path / "c.json")
    assert isinstance(load_mask(tmp_path / "w.json"), WeightMask)
    assert isinstance(load_mask(tmp_path / "c.json"), ChannelMask)
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(HwpruneError):
        load_mask(tmp_path / "x.json")


def test_enforcer_merges_masks_and_counts_violations():
    model = mlp()
    a = WeightMask({"1.weight": np.random.default_rng(0).random((32, 64)) < 0.5})
    enforcer = MaskEnforcer(model, a)
    assert enforcer.violations() > 0
    enforcer.apply()
    assert enforcer.violations() == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_trains_with_mask(digits):
    train_loader, test_loader = digits
    model = convnet()
    mask = random_mask(model, density=0.4)
    result = train(model, train_loader, test_loader, TrainConfig(epochs=2, lr=0.05, device="cuda"), weight_mask=mask)
    assert next(model.parameters()).is_cuda
    params = dict(model.named_parameters())
    for name, keep in mask.keep.items():
        assert (params[name].detach().cpu().numpy()[~keep] == 0).all(), name
    assert result.last_top1 > 0.5


def test_xla_device_needs_pjrt_device(monkeypatch):
    monkeypatch.delenv("PJRT_DEVICE", raising=False)
    with pytest.raises(HwpruneError, match="PJRT_DEVICE=CPU"):
        resolve_device("xla")


def test_train_ddp_outside_torchrun_says_how_to_launch(monkeypatch):
    from hwprune.train import train_ddp

    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(HwpruneError, match="torchrun"):
        train_ddp(mlp(), get_dataset("digits", "train"), None, TrainConfig(epochs=1))


def test_cli_entry_trains_with_mask(tmp_path, capsys):
    from hwprune.models import get_model
    from hwprune.train.__main__ import main

    mask = random_mask(get_model("lenet5", input_size=16))
    mask.save(tmp_path / "mask.json")
    code = main(
        [
            "--model", "lenet5", "--dataset", "digits", "--image-size", "16", "--epochs", "1",
            "--batch-size", "64", "--lr", "0.05", "--mask", str(tmp_path / "mask.json"),
            "--save-mask", str(tmp_path / "saved.json"), "--result", str(tmp_path / "r.json"),
        ]
    )  # fmt: skip
    assert code == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["last_top1"] is not None and result["mask_violations"] == 0
    saved = WeightMask.load(tmp_path / "saved.json")
    assert saved.keep.keys() == mask.keep.keys()
    for name in mask.keep:
        np.testing.assert_array_equal(saved.keep[name], mask.keep[name])
    assert "lenet5 on digits: top-1" in capsys.readouterr().out
    random_mask(mlp()).save(tmp_path / "other.json")
    assert (
        main(["--model", "lenet5", "--epochs", "1", "--image-size", "16", "--mask", str(tmp_path / "other.json")]) == 2
    )
    assert "does not have" in capsys.readouterr().err


def _has_tensorboard():
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _has_tensorboard(), reason="tensorboard is not installed")
def test_tensorboard_events_mirror_metrics_jsonl(digits, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train_loader, test_loader = digits
    train(convnet(), train_loader, test_loader, TrainConfig(epochs=2, lr=0.05, log_dir=str(tmp_path)))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    tags = events.Tags()["scalars"]
    numeric = {k for k, v in rows[0].items() if k != "epoch" and isinstance(v, (int, float))}
    assert numeric and numeric <= set(tags)
    for tag in numeric:
        logged = {e.step: e.value for e in events.Scalars(tag)}
        assert logged == pytest.approx({r["epoch"]: r[tag] for r in rows}, rel=1e-6)
