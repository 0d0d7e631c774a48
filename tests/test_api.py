"""The public API on a user's own module with trained weights: budgets met, weights kept, files verified."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hwprune
from hwprune.export.compact import masked_model
from hwprune.export.verify import max_rel_diff


class UserNet(nn.Module):
    """Not in any zoo: the kind of small CNN a user writes (digits, 1 x 16 x 16)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(64)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.relu(self.bn2(self.conv2(x)))
        return self.head(x.mean((2, 3)))


def digits_loader(batch=64, train=True):
    from hwprune.data import get_dataset, make_loader

    return make_loader(get_dataset("digits", "train" if train else "test", image_size=16, channels=1), batch, train)


@pytest.fixture(scope="module")
def trained():
    """UserNet trained on digits: informative weights and BN statistics.

    One thread, set here: a module-scoped fixture is built before the per-test one-thread fixture, so the
    weights (and every accuracy threshold below) would otherwise depend on which test module ran first.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = UserNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    try:
        for _ in range(5):
            for x, y in digits_loader():
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def accuracy(model, loader):
    model.eval()
    with torch.no_grad():
        hits = sum(int((model(x).argmax(1) == y).sum()) for x, y in loader)
    return hits / len(loader.dataset)


def group_of(graph, tensor):
    [g] = [g for g in graph.groups if any(s.tensor == tensor for s in g.producers)]
    return g


def assert_user_weights_kept(model, result):
    """Every kept channel carries the user's trained values, element for element."""
    graph, mask = result.graph, result.mask
    k1 = mask.keep.get(group_of(graph, "conv1.weight").id, np.ones(32, bool))
    k2 = mask.keep.get(group_of(graph, "conv2.weight").id, np.ones(64, bool))
    small = result.model
    assert torch.equal(small.conv1.weight, model.conv1.weight[k1])
    assert torch.equal(small.bn1.running_mean, model.bn1.running_mean[k1])
    assert torch.equal(small.bn1.weight, model.bn1.weight[k1])
    assert torch.equal(small.conv2.weight, model.conv2.weight[k2][:, k1])
    assert torch.equal(small.bn2.running_var, model.bn2.running_var[k2])
    assert torch.equal(small.head.weight, model.head.weight[:, k2])
    return k1, k2


@pytest.mark.parametrize("budget", [{"flops": 0.5}, {"params": 0.4}])
def test_prune_a_user_module_to_a_count_budget(trained, budget, tmp_path):
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    x = torch.randn(1, 1, 16, 16)
    result = hwprune.prune(trained, x, **budget, out=tmp_path, progress=False)
    [(kind, target)] = budget.items()
    assert result.met and result.report.measured_ratio <= target
    k1, k2 = assert_user_weights_kept(trained, result)
    assert not (k1.all() and k2.all())  # something was pruned
    # compacted == masked model, on the user's weights
    masked = masked_model(trained, result.graph, result.mask).eval()
    batch = next(iter(digits_loader(train=False)))[0]
    with torch.no_grad():
        assert max_rel_diff(result.model(batch), masked(batch)) < 1e-5
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in before.items())  # the user's module untouched
    assert result.onnx_path.is_file() and (tmp_path / "mask.json").is_file()
    report = result.save_onnx(tmp_path / "again.onnx")
    assert report.onnx_max_rel_diff < 1e-4 and (tmp_path / "again.onnx").is_file()


def test_prune_to_latency_with_data_driven_importance_and_finetuning(trained, tmp_path):
    x = torch.randn(1, 1, 16, 16)
    calls = []

    def my_finetune(model):
        calls.append(type(model).__name__)

    result = hwprune.prune(
        trained,
        x,
        latency=0.7,
        backend="torch-cpu",
        importance="taylor",
        data=digits_loader(),
        imp_samples=256,
        finetune=my_finetune,
        bn_samples=0,  # BN statistics kept as trained, so every value can be compared (recovery: test_recovery.py)
        repeats=5,
        progress=False,
    )
    assert calls == ["GraphModule"]  # the user's own training ran on the compacted model
    assert result.report.status in ("met", "missed", "undecided") and result.report.target_kind == "latency"
    assert result.report.outcome.shipped is not None and result.onnx_path is None  # no out=: nothing kept
    assert_user_weights_kept(trained, result)


def test_built_in_finetuning_on_the_users_loader_recovers_accuracy(trained):
    x = torch.randn(1, 1, 16, 16)
    test = digits_loader(train=False)
    result = hwprune.prune(trained, x, flops=0.3, data=digits_loader(), finetune=3, progress=False)
    pruned = accuracy(masked_model(trained, result.graph, result.mask), test)  # the same channels, not tuned
    tuned = accuracy(result.model, test)
    assert accuracy(trained, test) > 0.85 and tuned > pruned + 0.1 and tuned > 0.75
    assert result.report.outcome.record.accuracy_top1 > 0.75  # measured on the user's loader, recorded
    note = next(n for n in result.export.notes if n.startswith("top-1 on ") and "examples of your data" in n)
    assert "BatchNorm re-estimated on 512 examples" in note and "fine-tuned 3 epoch(s)" in note


def test_map_measure_profile_and_export(trained, tmp_path):
    x = torch.randn(1, 1, 16, 16)
    graph = hwprune.map(trained, x)
    assert len(graph.prunable_groups) == 2 and "UserNet" in graph.summary()
    m = hwprune.measure(trained, x, backend="torch-cpu", repeats=5)
    assert m.median_ms > 0 and m.backend == "torch-cpu"
    lut = hwprune.profile(trained, x, backend="torch-cpu", points=(0.5,), repeats=5, round_to=1, progress=False)
    assert {p.group for p in lut.points} == {g.id for g in graph.prunable_groups}
    mask = hwprune.ChannelMask.full(graph)
    g = graph.prunable_groups[0]
    mask.keep[g.id] = np.arange(g.size) % 2 == 0
    compacted, report = hwprune.export_onnx(trained, mask, x, tmp_path / "m.onnx")
    assert report.onnx_max_rel_diff < 1e-4 and report.params_after < report.params_before
    assert hwprune.measure(tmp_path / "m.onnx", x, repeats=5).median_ms > 0


def test_api_refuses_bad_calls_in_one_line(trained):
    x = torch.randn(1, 1, 16, 16)
    with pytest.raises(hwprune.HwpruneError, match="exactly one budget"):
        hwprune.prune(trained, x)
    with pytest.raises(hwprune.HwpruneError, match="one input tensor"):
        hwprune.map(trained, "not a tensor")
    with pytest.raises(hwprune.HwpruneError, match="trains on data="):
        hwprune.prune(trained, x, flops=0.5, finetune=3)


# ------------------------------------------------------------------ --weights on the CLI


def test_weights_round_trip_through_the_cli_safetensors_and_state_dict(tmp_path, capsys):
    from safetensors.torch import save_file

    from hwprune.cli import main
    from hwprune.models import get_model
    from hwprune.workflow import ModelInput

    torch.manual_seed(7)
    trained = get_model("lenet5")
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn_like(p))  # anything but the init values the CLI would build
    state = {k: v.contiguous() for k, v in trained.state_dict().items()}
    save_file(state, tmp_path / "w.safetensors")
    torch.save({"epoch": 3, "state_dict": state}, tmp_path / "ckpt.pt")  # a training checkpoint, nested
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "ddp.pt")  # saved from a DDP wrapper
    for weights in ("w.safetensors", "ckpt.pt", "ddp.pt"):
        job = ModelInput.build("lenet5", weights=str(tmp_path / weights))
        assert all(torch.equal(job.model.state_dict()[k], v) for k, v in state.items()), weights
        out = tmp_path / f"{weights}.onnx"
        args = ["export", "--model", "lenet5", "--weights", str(tmp_path / weights), "--ratio", "0.25"]
        assert main([*args, "--out", str(out)]) == 0 and out.stat().st_size > 0
    fresh = ModelInput.build("lenet5").model.state_dict()
    assert not all(torch.equal(fresh[k], v) for k, v in state.items())  # control: without --weights, init values
    capsys.readouterr()


def test_bad_weights_are_refused_in_one_line(tmp_path, capsys):
    from hwprune.cli import main
    from hwprune.models import get_model

    torch.save(get_model("resnet20").state_dict(), tmp_path / "other.pt")
    torch.save({"model": get_model("lenet5", num_classes=5).state_dict()}, tmp_path / "shape.pt")
    torch.save(UserNet(), tmp_path / "pickled.pt")  # a whole pickled module: never unpickled
    cases = {
        "other.pt": "does not fit the model",
        "shape.pt": "has shape",
        "pickled.pt": "not a weights-only file",
        "absent.pt": "not found",
    }
    for name, needle in cases.items():
        rc = main(["map", "--model", "lenet5", "--weights", str(tmp_path / name)])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and needle in err[0], (name, err)
    rc = main(["map", "--model", "resnet18", "--weights", "IMAGENET1K_V1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "local torch hub cache" in err[0] and "never downloads" in err[0]


def test_every_name_the_package_lists_is_importable():
    """`hwprune.__all__` (what `hwprune --help` lists) resolves, lazily, to real objects."""
    for name in hwprune.__all__:
        assert callable(getattr(hwprune, name)), name
