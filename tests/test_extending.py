"""docs/extending.md runs as written: each worked example adds one registry entry and uses it."""

import re
from pathlib import Path

import pytest
import torch

from hwprune.cli.registry import COMMANDS
from hwprune.errors import EquivalenceError
from hwprune.graph_mapper.ops import OPS
from hwprune.latency import BACKENDS
from hwprune.prune.importance import CHANNEL_IMPORTANCES

ROOT = Path(__file__).resolve().parents[1]


def test_extending_page_examples_run_as_written(monkeypatch, capsys):
    # the examples register for real: on copies of the registries, so other tests never see them
    monkeypatch.setattr(BACKENDS, "_items", dict(BACKENDS._items))
    monkeypatch.setattr(CHANNEL_IMPORTANCES, "_items", dict(CHANNEL_IMPORTANCES._items))
    monkeypatch.setattr(OPS, "_items", dict(OPS._items))
    monkeypatch.setattr(COMMANDS, "_items", dict(COMMANDS._items))
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs/extending.md").read_text(), flags=re.S)
    assert len(blocks) == 5
    namespace = {"__name__": "__docs__"}
    exec(compile(blocks[0], "<extending: backend>", "exec"), namespace)  # noqa: S102 (our own documentation)
    assert "torch-nograd" in BACKENDS and namespace["result"].report.outcome.backend == "torch-nograd"
    assert all(int(k.sum()) % 4 == 0 for k in namespace["result"].mask.keep.values())  # its round_to
    exec(compile(blocks[1], "<extending: importance>", "exec"), namespace)  # noqa: S102
    assert "l1_times_bn" in CHANNEL_IMPORTANCES and namespace["result"].met
    assert namespace["result"].mask.meta["method"] == "l1_times_bn"
    capsys.readouterr()
    exec(compile(blocks[2], "<extending: op handler>", "exec"), namespace)  # noqa: S102
    before = capsys.readouterr().out  # before its handler: captured by torch.export, the loop's channels frozen
    assert "0 prunable" in before and "picks single channels" in before
    graph, result = namespace["hwprune"].map(namespace["net"], namespace["x"]), namespace["result"]
    assert graph.prunable_groups and result.met and result.export.max_rel_diff <= 1e-5
    assert any(not k.all() for k in result.mask.keep.values())  # the 16 channels through the clamp were cut

    # negative control: the same handler on a layer whose bound depends on the channel's position
    class PositionalClamp(torch.nn.Module):
        def forward(self, x):
            return torch.stack([x[:, c].clamp(-0.1 * (c + 1), 0.1 * (c + 1)) for c in range(x.shape[1])], 1)

    OPS.register(PositionalClamp)(namespace["channelwise_clamp"])
    net = torch.nn.Sequential(*list(namespace["net"])[:2], PositionalClamp(), namespace["net"][3]).eval()
    with pytest.raises(EquivalenceError):
        namespace["hwprune"].prune(net, namespace["x"], params=0.6, progress=False)
    exec(compile(blocks[3], "<extending: resized layer>", "exec"), namespace)  # noqa: S102
    scaled = namespace["result"]
    kept_channels = scaled.model.get_submodule("1").channels
    assert kept_channels == scaled.model.get_submodule("1").scale.shape[0] < 16
    assert scaled.model.get_submodule("0").out_channels == kept_channels and scaled.export.max_rel_diff <= 1e-5

    # negative control: the same layer mapped by a handler without its compaction step is refused
    class StaleScale(namespace["ChannelScale"]):
        pass

    OPS.register(StaleScale)(lambda ctx, node: namespace["channel_scale"](ctx, node))
    stale = torch.nn.Sequential(namespace["net"][0], StaleScale(16), *list(namespace["net"])[2:]).eval()
    with pytest.raises(EquivalenceError):
        namespace["hwprune"].prune(stale, namespace["x"], params=0.6, progress=False)
    capsys.readouterr()
    exec(compile(blocks[4], "<extending: command>", "exec"), namespace)  # noqa: S102
    out, err = capsys.readouterr()
    assert "4 prunable groups of 5" in out and "count-groups" in COMMANDS
    assert err.count("\n") == 1 and "lenet5" in err  # the bad model name: one line with a suggestion
