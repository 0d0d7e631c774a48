"""An ONNX-only model pruned to a budget: profiled, closed-loop timed and shipped as ONNX, no PyTorch model."""

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import hwprune
from hwprune.cli import main
from hwprune.export.onnx_compact import masked_onnx, run_model
from hwprune.export.onnx_export import export_onnx
from hwprune.graph_mapper.onnx_mapper import build_onnx_channel_graph
from hwprune.prune.masks import ChannelMask
from hwprune.results import ResultsStore
from tests.test_trust import spy_measure

pytestmark = pytest.mark.onnx


class SmallNet(nn.Module):
    """Three conv-BN-ReLU stages and a classifier: enough work per channel that pruning shows in latency."""

    def __init__(self):
        super().__init__()
        layers, width = [], 3
        for out in (32, 64, 64):
            layers += [nn.Conv2d(width, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
            width = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory) -> Path:
    """The user's model, known only as an ONNX file, with informative (randomised) BN statistics."""
    torch.manual_seed(0)
    model = SmallNet().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    path = tmp_path_factory.mktemp("onnx") / "user.onnx"
    export_onnx(model, torch.randn(1, 3, 64, 64), path, "torchscript")
    return path


def params_of(path: Path) -> int:
    return sum(int(np.prod(t.dims)) for t in onnx.load(str(path)).graph.initializer)


def test_prune_onnx_to_a_latency_budget_times_and_ships_the_file(onnx_model, tmp_path, monkeypatch, capsys):
    calls = spy_measure(monkeypatch)
    out = tmp_path / "p"
    argv = [
        "prune",
        "--onnx",
        str(onnx_model),
        "--latency",
        "0.6",
        "--repeats",
        "5",
        "--sessions",
        "2",
        "--out",
        str(out),
    ]
    rc = main([*argv, "--results", str(tmp_path / "r.csv")])
    [row] = ResultsStore(tmp_path / "r.csv").records()
    extra = json.loads(row.extra)
    assert rc == {"met": 0, "missed": 1, "undecided": 3}[extra["status"]], capsys.readouterr().err
    shipped = out / "user_pruned.onnx"
    assert {"lut.json", "mask.json", shipped.name} <= {p.name for p in out.iterdir()}
    # every measurement on onnxruntime; profile and loop time in-memory compacted ONNX models, never a module
    assert calls and all(c["backend"] == "ort-cpu" for c in calls)
    assert all(type(m).__name__ == "ModelProto" for c in calls[:-1] for m in c["models"])
    assert isinstance(calls[-1]["models"][1], Path)  # the last: the shipped file itself, timed afresh
    assert calls[-1]["sha256"][shipped.name] == hashlib.sha256(shipped.read_bytes()).hexdigest()
    # the shipped file really has fewer channels, and computes what the masked source computes
    assert params_of(shipped) < params_of(onnx_model)
    mask = ChannelMask.load(out / "mask.json")
    graph = build_onnx_channel_graph(onnx_model)
    assert any(not k.all() for k in mask.keep.values())
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32)
    feeds = {graph.gm.graph.input[0].name: x}
    want = run_model(masked_onnx(graph, mask), feeds)[0]
    got = run_model(shipped, feeds)[0]
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    dense = run_model(onnx_model, feeds)[0]  # negative control: the unpruned file fails this comparison
    assert np.abs(dense - want).max() > 1e-2 * np.abs(want).max()


def test_prune_onnx_to_a_flops_budget_counts_exactly_and_the_api_agrees(onnx_model, tmp_path):
    rc = main(["prune", "--onnx", str(onnx_model), "--flops", "0.5", "--out", str(tmp_path / "f")])
    assert rc == 0
    before = build_onnx_channel_graph(onnx_model).total_macs
    after = build_onnx_channel_graph(tmp_path / "f" / "user_pruned.onnx").total_macs  # counted anew
    assert 0 < after <= 0.5 * before
    result = hwprune.prune(str(onnx_model), flops=0.5, progress=False)
    assert result.model is None and result.source == onnx_model and result.met
    assert result.mask.keep.keys() == ChannelMask.load(tmp_path / "f" / "mask.json").keep.keys()
    for gid, keep in result.mask.keep.items():  # the same solve on the same file: the same channels
        assert (keep == ChannelMask.load(tmp_path / "f" / "mask.json").keep[gid]).all()
    report = result.save_onnx(tmp_path / "api" / "small.onnx")
    assert report.max_rel_diff <= 1e-4 and params_of(tmp_path / "api" / "small.onnx") == report.params_after
    graph = hwprune.map(str(onnx_model))
    assert graph.from_onnx and len(graph.prunable_groups) == 3


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--backend", "torch-cpu"], "a backend that runs ONNX"),
        (["--importance", "taylor", "--data", "digits"], "needs a PyTorch model"),
        (["--finetune-epochs", "1", "--data", "digits"], "no module to train"),
        (["--model", "lenet5"], "not both"),
        (["--weights", "w.pt"], "carries its own weights"),
    ],
)
def test_prune_onnx_refuses_what_an_onnx_file_cannot_do(onnx_model, extra, message, tmp_path, capsys):
    rc = main(["prune", "--onnx", str(onnx_model), "--latency", "0.5", "--out", str(tmp_path / "o"), *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and message in err, err
    assert list(tmp_path.iterdir()) == []
