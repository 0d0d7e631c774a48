"""FLOP and parameter counting against hand-computed values."""

from __future__ import annotations

import dataclasses
import logging
import warnings

import pytest
import torch
from torch import nn

from hwprune.graph_mapper.flops import FlopsReport, count_flops, count_params, params_per_module


def test_conv2d_known_flops():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    report = count_flops(conv, torch.randn(1, 3, 8, 8))
    macs = 8 * 3 * 9 * 64  # out_ch * in_ch * k*k * output pixels
    assert report.flops == macs
    assert report.flops_torch == macs
    assert report.counter == "fvcore"
    assert report.params == 8 * 3 * 9 + 8
    assert report.per_module_flops == {"": macs}


def test_linear_known_flops():
    lin = nn.Linear(10, 5)
    report = count_flops(lin, torch.randn(1, 10))
    assert report.flops == 50
    assert report.flops_torch == 50
    assert report.params == 55


def test_linear_batch_scales_flops():
    assert count_flops(nn.Linear(10, 5), torch.randn(4, 10)).flops == 200


def _tiny_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),  # 8*3*9 + 8 = 224 params
        nn.BatchNorm2d(8),  # 16 params
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 10),  # 2880 + 10 = 2890 params
    )


def test_tiny_net_params():
    net = _tiny_net()
    assert count_params(net) == 224 + 16 + 2890
    assert params_per_module(net) == {"0": 224, "1": 16, "4": 2890}
    report = count_flops(net, torch.randn(1, 3, 8, 8))
    assert report.params == 3130
    assert report.per_module_params == {"0": 224, "1": 16, "4": 2890}
    assert sum(report.per_module_params.values()) == report.params


def test_shared_parameters_counted_once():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4, bias=False)
            self.b = nn.Linear(4, 4, bias=False)
            self.b.weight = self.a.weight

        def forward(self, x):
            return self.b(self.a(x))

    net = Tied()
    assert count_params(net) == 16
    per = params_per_module(net)
    assert sum(per.values()) == 16
    assert per == {"a": 16, "b": 0}
    report = count_flops(net, torch.randn(1, 4))
    assert report.params == 16
    assert report.flops == 32  # two 4x4 matmuls, one row each


def test_per_module_sums_to_total_for_conv_linear_net():
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2, padding=1),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 7),
    )
    report = count_flops(net, torch.randn(2, 3, 8, 8))
    expected = {
        "0": 2 * 4 * 3 * 9 * 64,
        "2": 2 * 6 * 4 * 9 * 16,
        "4": 2 * 96 * 7,
    }
    assert report.per_module_flops == expected
    assert sum(report.per_module_flops.values()) == report.flops == sum(expected.values())
    assert report.flops_torch == report.flops


@pytest.mark.slow
def test_fvcore_and_torch_counters_agree_on_resnet18():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(weights=None)
    report = count_flops(model, torch.randn(1, 3, 64, 64))
    assert report.counter == "fvcore"
    assert report.flops > 0
    assert abs(report.flops - report.flops_torch) / report.flops < 0.01
    assert report.params == 11_689_512
    assert set(report.per_module_flops) >= {"conv1", "fc", "layer1.0.conv1"}
    assert report.per_module_flops["fc"] == 512 * 1000


def test_training_mode_restored_and_no_grad():
    net = _tiny_net()
    net.train()
    net[1].eval()  # a mixed state must come back exactly
    before = [m.training for m in net.modules()]
    running_mean = net[1].running_mean.clone()
    net.train()
    net[1].eval()
    report = count_flops(net, torch.randn(2, 3, 8, 8))
    assert [m.training for m in net.modules()] == before
    assert all(p.grad is None for p in net.parameters())
    assert torch.equal(net[1].running_mean, running_mean)
    assert report.flops > 0

    bn = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)).train()
    stats = bn[1].running_mean.clone()
    count_flops(bn, torch.randn(2, 3, 4, 4))
    assert torch.equal(bn[1].running_mean, stats)  # ran in eval mode: stats untouched
    assert bn.training and bn[1].training


def test_unsupported_ops_recorded_silently(caplog):
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return torch.sigmoid(self.fc(x)).cumsum(-1)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with caplog.at_level(logging.WARNING):
            report = count_flops(Odd(), torch.randn(1, 3))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert report.flops == 9
    assert "aten::sigmoid" in report.unsupported_ops
    assert "aten::cumsum" in report.unsupported_ops
    assert report.uncounted_ops == sorted(report.unsupported_ops)
    assert "aten::sigmoid" in report.table()
    assert "aten::sigmoid" in str(report)


def test_tuple_input():
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 2)
            self.b = nn.Linear(3, 2)

        def forward(self, x, y):
            return self.a(x) + self.b(y)

    report = count_flops(Two(), (torch.randn(1, 4), torch.randn(1, 3)))
    assert report.flops == 8 + 6
    assert report.per_module_flops == {"a": 8, "b": 6}


def test_table_markdown_and_note():
    report = count_flops(_tiny_net(), torch.randn(1, 3, 8, 8))
    text = report.table()
    assert "1 multiply-add = 1 FLOP (fvcore)" in text
    lines = text.splitlines()
    assert lines[0].startswith("| layer | FLOPs")
    assert any(line.startswith("| 0 |") for line in lines)
    assert any(line.startswith("| 4 |") for line in lines)
    assert any("**total**" in line for line in lines)
    top1 = report.table(top=1).splitlines()
    layer_rows = [line for line in top1[2:] if line.startswith("| ") and "**total**" not in line]
    assert len(layer_rows) == 1
    assert layer_rows[0].startswith("| 0 |")  # the conv has the most FLOPs


def test_report_is_frozen():
    report = count_flops(nn.Linear(2, 2), torch.randn(1, 2))
    assert isinstance(report, FlopsReport)
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.flops = 1  # type: ignore[misc]


def test_falls_back_to_torch_counter_when_fvcore_fails(monkeypatch):
    from fvcore.nn import FlopCountAnalysis

    def boom(self):
        raise RuntimeError("cannot trace")

    monkeypatch.setattr(FlopCountAnalysis, "total", boom)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 64, 4))
    report = count_flops(net, torch.randn(1, 3, 8, 8))
    assert report.counter == "torch"
    assert report.flops == report.flops_torch == 8 * 3 * 9 * 64 + 8 * 64 * 4
    assert report.per_module_flops == {"0": 8 * 3 * 9 * 64, "2": 8 * 64 * 4}
    assert "counter=torch" in report.table()
