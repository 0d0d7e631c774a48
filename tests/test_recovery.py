"""Accuracy recovery after pruning: BatchNorm re-estimation (known values) and the recovered file shipped."""

import json

import numpy as np
import pytest
import torch
from torch import nn

import hwprune
from hwprune.data import get_dataset, make_loader
from hwprune.export.onnx_compact import run_model
from hwprune.results import ResultsStore
from hwprune.train import TrainConfig, train
from hwprune.workflow.recovery import recalibrate_batchnorm


def conv_bn() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 6, 3), nn.BatchNorm2d(6, momentum=0.3), nn.ReLU())
    net[1].running_mean.fill_(5.0)  # stale statistics, as a dense model's are after pruning
    net[1].running_var.fill_(9.0)
    return net.eval()


def test_batchnorm_statistics_are_re_estimated_to_the_hand_computed_values():
    net = conv_bn()
    batches = [(torch.randn(8, 1, 10, 10), torch.zeros(8, dtype=torch.long)) for _ in range(5)]
    weights = {k: v.clone() for k, v in net.named_parameters()}
    assert recalibrate_batchnorm(net, batches, samples=28) == 1
    with torch.no_grad():  # the first 28 samples: 3 whole batches and 4 of the fourth
        z = torch.cat([net[0](x) for x, _ in batches])[:28]
    per_channel = z.transpose(0, 1).reshape(6, -1)
    bn = net[1]
    # each batch's statistics, averaged over batches (momentum None: a cumulative average of the batches)
    sizes = [8, 8, 8, 4]
    chunks = per_channel.split([s * 64 for s in sizes], dim=1)
    want_mean = torch.stack([c.mean(1) for c in chunks]).mean(0)
    want_var = torch.stack([c.var(1, unbiased=True) for c in chunks]).mean(0)
    assert torch.allclose(bn.running_mean, want_mean, atol=1e-5)
    assert torch.allclose(bn.running_var, want_var, atol=1e-5)
    assert not torch.allclose(want_mean, torch.full((6,), 5.0))  # negative control: stale values were wrong
    assert bn.momentum == 0.3 and not net.training and not bn.training  # mode and momentum restored
    assert all(torch.equal(weights[k], v) for k, v in net.named_parameters())  # weights untouched
    assert recalibrate_batchnorm(nn.Sequential(nn.Linear(2, 2)), batches) == 0  # nothing to re-estimate


@pytest.fixture(scope="module")
def trained_mobilenet():
    """A BN-heavy network trained briefly on digits: pruning it shifts its BN statistics."""
    from hwprune.models import get_model

    torch.manual_seed(0)
    model = get_model("mobilenet_v2", num_classes=10, in_channels=1, input_size=32)
    loader = make_loader(get_dataset("digits", "train", image_size=32, channels=1), 64, shuffle=True)
    train(model, loader, None, TrainConfig(epochs=3, lr=0.05, batch_size=64))
    return model.eval(), loader


@pytest.mark.onnx
def test_prune_with_data_re_estimates_bn_records_accuracy_and_ships_the_recovered_model(trained_mobilenet, tmp_path):
    model, loader = trained_mobilenet
    x = torch.randn(1, 1, 32, 32)
    result = hwprune.prune(model, x, flops=0.5, data=loader, bn_samples=512, out=tmp_path / "p", progress=False)
    notes = " ".join(result.export.notes)
    assert "BatchNorm re-estimated on 512 examples" in notes and "re-exported ONNX matches" in notes
    extra = json.loads(result.report.outcome.record.extra)
    assert {"top1_dense", "top1_pruned", "top1_after_bn", "top1_final"} <= extra.keys()
    assert extra["top1_dense"] > 0.5  # trained: the accuracy figures are informative
    assert extra["top1_after_bn"] == extra["top1_final"] == result.report.outcome.record.accuracy_top1
    # the shipped file is the recovered model: same outputs in onnxruntime
    with torch.no_grad():
        want = result.model(x).numpy()
    [got] = run_model(result.onnx_path, _feeds(result, x))
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    # negative control: without re-estimation the file keeps the dense statistics and differs
    plain = hwprune.prune(model, x, flops=0.5, data=loader, bn_samples=0, progress=False)
    assert "BatchNorm" not in " ".join(plain.export.notes)
    with torch.no_grad():
        assert np.abs(plain.model(x).numpy() - want).max() > 1e-3 * np.abs(want).max()
    store = tmp_path / "r.csv"
    ResultsStore(store).append(result.report.outcome.record)
    assert json.loads(ResultsStore(store).records()[-1].extra)["top1_after_bn"] == extra["top1_after_bn"]


def _feeds(result, x):
    import onnx

    return {onnx.load(str(result.onnx_path)).graph.input[0].name: x.numpy()}
